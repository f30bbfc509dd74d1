"""The pretrained-base path end to end through ``main([...])``: a hub-layout CLIP folder is
fine-tuned, evaluated, vectorized, exported to ONNX, indexed and searched.

The base (``clip_folder``) is a genuine ``CLIPModel`` folder laid out like a download of
openai/clip-vit-base-patch32, only small and random-init, so every step takes the code path of a
pretrained base (``--base FOLDER``), not the tiny model's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoTokenizer, CLIPConfig, CLIPModel, CLIPTokenizer

from medsearch.cli import main
from medsearch.data.manifest import read_manifest
from medsearch.model.encoder import load_encoder
from medsearch.model.loading import load_clip
from medsearch.model.onnx_encoder import OnnxEncoder
from medsearch.vectorize import read_vectors
from tests.support.clip_folder import (
    CONTEXT_LENGTH,
    HUB_FILES,
    OPENAI_MEAN,
    OPENAI_STD,
    build_clip_folder,
    clip_config,
)

QUERY = "left lung nodule"
# What save_pretrained writes for any loadable CLIP folder (weights, config, fast tokenizer).
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Run:
    """What one ``main([...])`` call did: exit status and its output."""

    code: int
    out: str
    err: str


def run_cli(*argv: object) -> Run:
    """Run the CLI outside capsys (module fixtures): its exit status and both outputs."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Run(code, out.getvalue(), err.getvalue())


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def base_digests(clip_folder: Path) -> dict[str, str]:
    """The base folder's files before anything ran on it."""
    return _digests(clip_folder)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pretrained-path")


@pytest.fixture(scope="module")
def trained(work: Path, clip_folder: Path, synth_corpus: Path, base_digests: dict) -> Path:
    """`train --base <hub folder> --epochs 1` on 32 samples in batches of 8 (four steps)."""
    out = work / "model"
    run = run_cli(
        "train", "--base", clip_folder, "--data", synth_corpus, "--out", out,
        "--epochs", 1, "--batch-size", 8, "--max-samples", 32, "--threads", 1,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert f"model saved to {out}" in run.out
    return out


@pytest.fixture(scope="module")
def vectors(work: Path, trained: Path, synth_corpus: Path) -> Path:
    out = work / "vectors"
    run = run_cli("vectorize", "--model", trained, "--data", synth_corpus, "--out", out)
    assert run.code == 0, run.err
    return out


@pytest.fixture(scope="module")
def index(work: Path, vectors: Path, synth_corpus: Path) -> Path:
    out = work / "index"
    run = run_cli("index", "--data", synth_corpus, "--vectors", vectors, "--index", out)
    assert run.code == 0, run.err
    return out


def search(index: Path, model: Path, mode: str, k: int = 5) -> dict[str, Any]:
    """`search --json` over the index: the API's response."""
    run = run_cli(
        "search", "--index", index, "--model", model, "--mode", mode, "-k", k, "--json", QUERY
    )
    assert run.code == 0, run.err
    return json.loads(run.out)


# --- the base folder itself --------------------------------------------------------------------


def test_given_hub_layout_folder_then_transformers_and_load_clip_read_it_as_a_pretrained_clip(
    clip_folder: Path,
) -> None:
    # Given the small hub-layout folder; Then it holds every file of a hub download
    assert sorted(HUB_FILES) == sorted(p.name for p in clip_folder.iterdir())
    config = json.loads((clip_folder / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    # And the plain transformers classes load it
    model = CLIPModel.from_pretrained(clip_folder)
    tokenizer = AutoTokenizer.from_pretrained(clip_folder)
    processor = AutoImageProcessor.from_pretrained(clip_folder)
    assert isinstance(tokenizer, CLIPTokenizer) and tokenizer.model_max_length == CONTEXT_LENGTH
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert processor.crop_size["height"] == model.config.vision_config.image_size == 32
    assert list(processor.image_mean) == OPENAI_MEAN and list(processor.image_std) == OPENAI_STD
    # And the slow files alone (vocab.json + merges.txt) give the same tokens as tokenizer.json
    slow = CLIPTokenizer(
        vocab=str(clip_folder / "vocab.json"), merges=str(clip_folder / "merges.txt")
    )
    assert slow(QUERY)["input_ids"] == tokenizer(QUERY)["input_ids"]
    # And medsearch loads it as a CLIP bundle whose towers take a real forward pass
    bundle = load_clip(str(clip_folder))
    assert isinstance(bundle.model, CLIPModel)
    assert bundle.max_text_length == CONTEXT_LENGTH and bundle.dim == 32
    pixels = processor(images=[Image.new("RGB", (40, 50), "gray")], return_tensors="pt")
    with torch.no_grad():
        image = bundle.model.get_image_features(**pixels)
    assert tuple(torch.as_tensor(getattr(image, "pooler_output", image)).shape) == (1, 32)


def test_given_same_captions_and_seed_then_build_is_byte_identical_and_another_seed_differs(
    clip_folder: Path, synth_corpus: Path, tmp_path: Path
) -> None:
    captions = [r.caption for r in read_manifest(synth_corpus) if r.caption]
    again = build_clip_folder(tmp_path / "again", captions, seed=0)
    other = build_clip_folder(tmp_path / "other", captions, seed=1)
    assert _digests(again) == _digests(clip_folder)
    assert _digests(other)["model.safetensors"] != _digests(clip_folder)["model.safetensors"]
    assert _digests(other)["tokenizer.json"] == _digests(clip_folder)["tokenizer.json"]


def test_given_vit_b_32_shape_then_every_weight_but_the_token_table_has_the_hub_models_shape(
    clip_folder: Path,
) -> None:
    # Given the benchmark shape's config (built on the meta device: no memory, no init)
    tokenizer = CLIPTokenizer.from_pretrained(clip_folder)
    with torch.device("meta"):
        model = CLIPModel(clip_config(tokenizer, "vit-b-32"))
        # transformers' CLIPConfig defaults are openai/clip-vit-base-patch32's shapes
        reference = CLIPModel(CLIPConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    table = "text_model.embeddings.token_embedding.weight"
    assert shapes[table] == (len(tokenizer), 512) and expected[table] == (49408, 512)
    assert {k: v for k, v in shapes.items() if k != table} == {
        k: v for k, v in expected.items() if k != table
    }
    assert model.config.text_config.max_position_embeddings == CONTEXT_LENGTH
    assert model.config.vision_config.hidden_act == "quick_gelu"


# --- train -------------------------------------------------------------------------------------


def test_given_hub_base_when_trained_then_folder_reloads_with_the_base_tokenizer_and_processing(
    trained: Path, clip_folder: Path, base_digests: dict[str, str]
) -> None:
    # Then the trained folder holds a model, its config and the tokenizer, and reloads as CLIP
    for name in MODEL_FILES:
        assert (trained / name).is_file(), name
    model = CLIPModel.from_pretrained(trained)
    assert model.config.model_type == "clip"
    bundle = load_clip(str(trained))
    assert bundle.dim == 32 and bundle.max_text_length == CONTEXT_LENGTH
    # And it keeps the base's tokenizer (same vocabulary, same tokens) and image processing
    base_tokenizer = AutoTokenizer.from_pretrained(clip_folder)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert len(tokenizer) == len(base_tokenizer) == model.config.text_config.vocab_size
    assert tokenizer.get_vocab() == base_tokenizer.get_vocab()
    assert tokenizer(QUERY)["input_ids"] == base_tokenizer(QUERY)["input_ids"]
    processor = AutoImageProcessor.from_pretrained(trained)
    assert processor.crop_size["height"] == 32 and list(processor.image_mean) == OPENAI_MEAN
    # And the run took the pretrained base's defaults, not the tiny model's
    config = json.loads((trained / "train_config.json").read_text())
    assert config["base"] == str(clip_folder) and config["lr"] == pytest.approx(5e-5)
    # And the base folder was only read
    assert _digests(clip_folder) == base_digests


def test_given_trained_model_then_its_weights_moved_away_from_the_base(
    trained: Path, clip_folder: Path
) -> None:
    base = load_file(clip_folder / "model.safetensors")
    tuned = load_file(trained / "model.safetensors")
    assert base.keys() == tuned.keys()
    assert all(base[k].shape == tuned[k].shape for k in base)
    moved = [k for k in base if not torch.equal(base[k], tuned[k])]
    # Both towers and the projections were updated by the four steps
    for prefix in ("text_model.", "vision_model.", "text_projection", "visual_projection"):
        assert any(k.startswith(prefix) for k in moved), prefix


def test_given_hub_base_when_trained_then_folder_loads_in_transformers_4_and_5(
    trained: Path,
) -> None:
    # transformers 4 (older SageMaker containers) reads the image processor from
    # preprocessor_config.json only; both read the fast tokenizer from tokenizer.json
    needed = ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"]
    assert [name for name in needed if not (trained / name).is_file()] == []
    processor = json.loads((trained / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "CLIPImageProcessor"


# --- evaluate / vectorize / export-onnx --------------------------------------------------------


def test_given_trained_model_when_evaluated_then_report_covers_the_test_split(
    work: Path, trained: Path, synth_corpus: Path
) -> None:
    out = work / "eval.json"
    run = run_cli("evaluate", "--model", trained, "--data", synth_corpus, "--out", out)
    assert run.code == 0, run.err
    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["model"] == str(trained)
    assert report["n"] == len(read_manifest(synth_corpus, split="test"))
    for direction in ("text_to_image", "image_to_text"):
        row = report[direction]
        assert 0.0 <= row["r@1"] <= row["r@5"] <= row["r@10"] <= 1.0
    assert 0.0 <= report["queries"]["r@10"] <= 1.0


def test_given_trained_model_when_vectorized_then_every_record_has_a_unit_vector(
    vectors: Path, trained: Path, synth_corpus: Path
) -> None:
    ids, matrix, meta = read_vectors(vectors)
    records = read_manifest(synth_corpus)
    assert sorted(ids) == sorted(r.image_id for r in records)
    assert matrix.shape == (len(records), 32) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert meta["model"] == str(trained) and meta["dim"] == 32
    # And the vectors are the torch encoder's own
    encoder = load_encoder(str(trained), device="cpu")
    by_id = {r.image_id: r for r in records}
    first = [Image.open(by_id[i].image).convert("RGB") for i in ids[:8]]
    np.testing.assert_allclose(encoder.encode_images(first), matrix[:8], atol=1e-5)


def test_given_trained_model_when_exported_then_fp32_onnx_vectors_match_torch(
    work: Path, trained: Path, synth_corpus: Path
) -> None:
    out = work / "onnx"
    run = run_cli("export-onnx", "--model", trained, "--out", out)
    assert run.code == 0, run.err
    records = read_manifest(synth_corpus)
    captions = [r.caption for r in records if r.caption]
    images = [Image.open(r.image).convert("RGB") for r in records]
    onnx, reference = OnnxEncoder(out), load_encoder(str(trained), device="cpu")
    assert onnx.dim == reference.dim == 32
    text_cos = np.sum(onnx.encode_texts(captions) * reference.encode_texts(captions), axis=1)
    image_cos = np.sum(onnx.encode_images(images) * reference.encode_images(images), axis=1)
    assert text_cos.min() >= 0.999
    assert image_cos.min() >= 0.999


# --- index / search ----------------------------------------------------------------------------


def test_given_index_of_trained_vectors_when_searched_then_each_mode_returns_corpus_hits(
    index: Path, trained: Path, synth_corpus: Path
) -> None:
    corpus = {r.image_id: r for r in read_manifest(synth_corpus)}
    text = search(index, trained, "text")
    vector = search(index, trained, "vector")
    hybrid = search(index, trained, "hybrid")
    for response, mode in ((text, "text"), (vector, "vector"), (hybrid, "hybrid")):
        assert response["mode"] == mode
        hits = response["results"]
        assert len(hits) == 5 and {h["image_id"] for h in hits} <= corpus.keys()
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
    # Text hits match a query word; vector hits carry a cosine; hybrid blends both
    words = QUERY.split()
    for hit in text["results"]:
        caption = (corpus[hit["image_id"]].caption or "").lower()
        assert any(word in caption for word in words), caption
    assert all(h["bm25_score"] is not None for h in text["results"])
    assert all(-1.0 <= h["vector_score"] <= 1.0 for h in vector["results"])
    # Every image has a vector, captionless ones too: the whole ranking holds the corpus
    ranking = search(index, trained, "vector", k=100)["results"]
    assert {h["image_id"] for h in ranking} == corpus.keys()
    # and the total counts the matches above the index's calibrated floor, not the corpus
    confident = sum(not h["low_confidence"] for h in ranking)
    if vector["total_relation"] == "eq":
        assert vector["total"] == confident
    else:
        assert vector["total"] >= confident
    assert hybrid["alpha"] == 0.5
    assert any(h["bm25_score"] is not None for h in hybrid["results"])
    assert all(h["vector_score"] is not None for h in hybrid["results"])
