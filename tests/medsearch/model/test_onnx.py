"""ONNX export and the torch-free ONNX encoder: parity with torch, preprocessing, loading.

The int8 ranking test uses a briefly trained tiny model: a random-init one maps the synthetic
images to nearly the same vector (median pairwise cosine ~0.99, and ~0.9996 after only a few
dozen steps), so a top-10 comparison on it would measure ties, not the quantisation.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsearch import cli, storage
from medsearch.data.manifest import read_manifest
from medsearch.errors import ConfigError, NotFoundError, StorageError
from medsearch.index.base import Document
from medsearch.index.embedded import build_index
from medsearch.model.encoder import TorchEncoder, load_encoder
from medsearch.model.loading import load_clip
from medsearch.model.onnx_encoder import (
    MANIFEST_FILE,
    PREPROCESS_FILE,
    TOKENIZER_FILE,
    OnnxEncoder,
    PreprocessConfig,
    find_export,
    load_onnx_encoder,
    preprocess_image,
)
from medsearch.model.onnx_export import export_onnx, preprocess_config
from medsearch.search import SearchService
from medsearch.vectors import Encoder

TOWERS = ("text.onnx", "vision.onnx", "text.int8.onnx", "vision.int8.onnx")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model exported through the CLI, with int8 towers."""
    out = tmp_path_factory.mktemp("onnx") / "export"
    argv = ["export-onnx", "--model", str(tiny_model_dir), "--out", str(out), "--int8"]
    assert cli.main([*argv, "--model-id", "tiny-test"]) == 0
    return out


@pytest.fixture(scope="module")
def torch_encoder(tiny_model_dir: Path) -> TorchEncoder:
    return load_encoder(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path) -> Path:
    """A tiny CLIP trained for 100 steps on the synthetic corpus: its vectors spread apart."""
    from medsearch.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained-tiny")
    config = TrainConfig(
        data=str(synth_corpus),
        out=out,
        base="tiny",
        epochs=20,
        batch_size=16,
        augment=False,
        eval_each_epoch=False,
    )
    return train(config).out


@pytest.fixture(scope="module")
def corpus(synth_corpus: Path) -> tuple[list[str], list[Image.Image]]:
    """Captions and images of the whole synthetic corpus."""
    records = read_manifest(synth_corpus)
    captions = [r.caption for r in records if r.caption]
    images = [Image.open(r.image).convert("RGB") for r in records]
    return captions, images


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def _top10_overlap(queries_a: np.ndarray, docs_a: np.ndarray, queries_b, docs_b) -> float:
    top_a = np.argsort(-(queries_a @ docs_a.T), axis=1)[:, :10]
    top_b = np.argsort(-(queries_b @ docs_b.T), axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_b, strict=True)]))


def test_given_cli_export_with_int8_then_folder_holds_everything_serving_needs(
    onnx_dir: Path, torch_encoder: TorchEncoder
) -> None:
    # Given the export-onnx command run with --int8 (fixture)
    # Then both towers, their int8 copies, tokenizer, preprocessing and manifest are there
    for name in (*TOWERS, TOKENIZER_FILE, PREPROCESS_FILE, MANIFEST_FILE):
        assert (onnx_dir / name).is_file(), name
    manifest = json.loads((onnx_dir / MANIFEST_FILE).read_text())
    assert manifest["model_id"] == "tiny-test"
    assert manifest["dim"] == torch_encoder.dim
    assert manifest["opset"] == 18 and manifest["int8"] is True
    preprocess = json.loads((onnx_dir / PREPROCESS_FILE).read_text())
    assert preprocess["max_length"] == torch_encoder.bundle.max_text_length
    assert preprocess["resize"] == "shortest_edge" and preprocess["resample"] == "bicubic"
    # And no staging folder is left beside the export
    assert [p.name for p in onnx_dir.parent.iterdir()] == ["export"]


def test_given_an_export_then_it_carries_the_torch_model_fingerprint_and_serves_its_index(
    onnx_dir: Path,
    torch_encoder: TorchEncoder,
    corpus: tuple[list[str], list[Image.Image]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an index of vectors the torch model made (its fingerprint recorded)
    captions, images = corpus
    vectors = torch_encoder.encode_images(images[:8])
    documents = [Document(f"img-{i}", captions[i], vector) for i, vector in enumerate(vectors)]
    index = build_index(
        tmp_path / "index",
        documents,
        model_id=torch_encoder.model_id,
        fingerprint=torch_encoder.fingerprint,
    )
    # Then the export's manifest, fp32 and int8, names the same weights under its own model id
    manifest = json.loads((onnx_dir / MANIFEST_FILE).read_text())
    assert manifest["fingerprint"] == torch_encoder.fingerprint
    int8 = OnnxEncoder(onnx_dir, int8=True)
    assert int8.fingerprint == OnnxEncoder(onnx_dir).fingerprint == torch_encoder.fingerprint
    assert int8.model_id != torch_encoder.model_id
    # And the service takes int8 ONNX queries for the torch vectors, without a warning
    with caplog.at_level(logging.WARNING, logger="medsearch.search"):
        service = SearchService(index, int8)
    assert "fingerprint" not in caplog.text
    assert service.search(captions[0], mode="vector", k=3).results


def test_given_an_export_from_before_fingerprints_then_served_with_a_warning(
    onnx_dir: Path, torch_encoder: TorchEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an export whose manifest has no fingerprint
    old = tmp_path / "old-export"
    shutil.copytree(onnx_dir, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["fingerprint"]
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    encoder = OnnxEncoder(old)
    assert encoder.fingerprint is None
    # When it serves an index that records the torch model's weights
    vector = torch_encoder.encode_texts(["mri"])[0]
    index = build_index(
        tmp_path / "index",
        [Document("a", "mri", vector)],
        model_id="tiny",
        fingerprint=torch_encoder.fingerprint,
    )
    # Then it is accepted (same dimension), with a warning that the weights cannot be checked
    with caplog.at_level(logging.WARNING, logger="medsearch.search"):
        SearchService(index, encoder)
    assert "no weight fingerprint" in caplog.text


def test_given_fp32_export_then_vectors_match_torch_on_the_corpus(
    onnx_dir: Path, torch_encoder: TorchEncoder, corpus
) -> None:
    captions, images = corpus
    onnx = OnnxEncoder(onnx_dir)
    assert isinstance(onnx, Encoder) and onnx.dim == torch_encoder.dim
    text_cos = _cosines(onnx.encode_texts(captions), torch_encoder.encode_texts(captions))
    image_cos = _cosines(onnx.encode_images(images), torch_encoder.encode_images(images))
    assert text_cos.min() >= 0.999
    assert image_cos.min() >= 0.999


@pytest.mark.slow
def test_given_trained_model_int8_export_then_cosine_and_top10_overlap_stay_close_to_torch(
    trained_model_dir: Path, tmp_path: Path, corpus
) -> None:
    # Given a trained tiny model (vectors spread apart) exported with int8 towers
    export_onnx(str(trained_model_dir), tmp_path / "onnx", int8=True)
    reference = load_encoder(str(trained_model_dir), device="cpu")
    captions, images = corpus
    texts_t, images_t = reference.encode_texts(captions), reference.encode_images(images)
    # Then fp32 matches torch, and int8 stays within cosine 0.99 of it on every vector
    fp32 = OnnxEncoder(tmp_path / "onnx")
    assert _cosines(fp32.encode_texts(captions), texts_t).min() >= 0.999
    assert _cosines(fp32.encode_images(images), images_t).min() >= 0.999
    int8 = OnnxEncoder(tmp_path / "onnx", int8=True)
    texts_q, images_q = int8.encode_texts(captions), int8.encode_images(images)
    assert _cosines(texts_q, texts_t).min() >= 0.99
    assert _cosines(images_q, images_t).min() >= 0.99
    # And with every caption as a query over every image, int8 keeps >= 90 % of torch's top 10
    assert _top10_overlap(texts_t, images_t, texts_q, images_q) >= 0.9


def test_given_batch_of_one_and_texts_past_max_length_then_dynamic_axes_hold(
    onnx_dir: Path, torch_encoder: TorchEncoder
) -> None:
    onnx = OnnxEncoder(onnx_dir)
    texts = ["ct", "mri of the left knee", " ".join(["nodule"] * 300)]
    for batch_size in (1, 2, 64):
        got = onnx.encode_texts(texts, batch_size=batch_size)
        assert got.shape == (3, onnx.dim)
        assert _cosines(got, torch_encoder.encode_texts(texts)).min() >= 0.999
    single = onnx.encode_images([Image.new("RGB", (300, 120), (200, 30, 30))], batch_size=1)
    assert single.shape == (1, onnx.dim)
    assert onnx.encode_texts([]).shape == (0, onnx.dim)


def test_given_tokenizer_json_then_ids_equal_the_hf_tokenizer(
    onnx_dir: Path, torch_encoder: TorchEncoder
) -> None:
    from tokenizers import Tokenizer

    texts = ["Axial CT: 3 nodules (left lung)!", "ÉCHOGRAPHIE rénale", "", "x " * 200]
    tokenizer = Tokenizer.from_file(str(onnx_dir / TOKENIZER_FILE))
    hf = torch_encoder.bundle.tokenizer(
        texts, padding=True, truncation=True, max_length=torch_encoder.bundle.max_text_length
    )
    encoded = tokenizer.encode_batch(texts)
    assert [e.ids for e in encoded] == hf["input_ids"]
    assert [e.attention_mask for e in encoded] == hf["attention_mask"]


def _processor_cases(tiny_model_dir: Path) -> list[tuple[str, object]]:
    from transformers import CLIPImageProcessorPil

    return [
        ("tiny", load_clip(str(tiny_model_dir)).image_processor),
        ("openai-224", CLIPImageProcessorPil()),
        # Crop larger than the resized image: transformers zero-pads before cropping.
        (
            "pad",
            CLIPImageProcessorPil(
                size={"shortest_edge": 20}, crop_size={"height": 32, "width": 28}
            ),
        ),
        ("exact", CLIPImageProcessorPil(size={"height": 40, "width": 56}, do_center_crop=False)),
    ]


def test_given_images_of_any_size_and_mode_then_preprocessing_equals_hf_processor(
    tiny_model_dir: Path,
) -> None:
    rng = np.random.default_rng(3)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(64, 64), (97, 61), (13, 250), (301, 302), (7, 9)]
    ]
    images += [images[1].convert("L"), images[2].convert("P")]
    bundle_like = type("B", (), {"max_text_length": 16})
    for name, processor in _processor_cases(tiny_model_dir):
        bundle_like.image_processor = processor
        config = preprocess_config(bundle_like)  # type: ignore[arg-type]
        # Round-trips through preprocess.json
        config = PreprocessConfig.from_json(json.loads(json.dumps(config.to_json())))
        for image in images:
            expected = processor(images=[image.convert("RGB")], return_tensors="np")
            got = preprocess_image(image, config)
            np.testing.assert_allclose(
                got, expected["pixel_values"][0], atol=1e-5, err_msg=f"{name} {image.size}"
            )


def test_given_torch_unimportable_when_onnx_encoder_used_then_it_encodes(
    onnx_dir: Path, tmp_path: Path
) -> None:
    # Given a fresh interpreter in which importing torch or transformers fails
    out = tmp_path / "vectors.npy"
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'transformers'}:\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from medsearch.model.onnx_encoder import load_onnx_encoder\n"
        f"enc = load_onnx_encoder({str(onnx_dir)!r}, int8=True)\n"
        "t = enc.encode_texts(['left lung nodule on ct'])\n"
        "i = enc.encode_images([Image.new('RGB', (80, 64), (90, 90, 90))])\n"
        f"np.save({str(out)!r}, np.concatenate([t, i]))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    # When the ONNX encoder is loaded and used there
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    # Then it works, and gives the same vectors as in this (torch-importing) process
    assert result.returncode == 0, result.stderr
    here = OnnxEncoder(onnx_dir, int8=True)
    expected = np.concatenate(
        [
            here.encode_texts(["left lung nodule on ct"]),
            here.encode_images([Image.new("RGB", (80, 64), (90, 90, 90))]),
        ]
    )
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_given_training_model_folder_then_its_onnx_subfolder_is_found(
    onnx_dir: Path, tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(onnx_dir, tmp_path / "model" / "onnx")
    assert find_export(tmp_path / "model") == tmp_path / "model" / "onnx"
    assert load_onnx_encoder(tmp_path / "model").model_id == "tiny-test"


def test_given_s3_prefix_when_loaded_then_downloaded_once_and_encoding(
    onnx_dir: Path, s3_bucket: str, tmp_path: Path
) -> None:
    storage.upload_dir(onnx_dir, f"s3://{s3_bucket}/models/run-1/onnx")
    first = load_onnx_encoder(f"s3://{s3_bucket}/models/run-1/onnx/", cache_dir=tmp_path)
    assert first.encode_texts(["ct"]).shape == (1, first.dim)
    # Only the files of the chosen precision are fetched
    assert sorted(p.name for p in first.folder.iterdir()) == sorted(
        [".complete", "text.onnx", "vision.onnx", TOKENIZER_FILE, PREPROCESS_FILE, MANIFEST_FILE]
    )
    # The training job's model prefix (export in its onnx/ subfolder) works too
    int8 = load_onnx_encoder(f"s3://{s3_bucket}/models/run-1", int8=True, cache_dir=tmp_path)
    assert {"text.int8.onnx", "vision.int8.onnx"} <= {p.name for p in int8.folder.iterdir()}
    assert not (int8.folder / "text.onnx").exists()
    # A second load uses the cached copy: nothing is fetched even after the objects are gone.
    storage.set_object_store(_EmptyStore())
    second = load_onnx_encoder(f"s3://{s3_bucket}/models/run-1/onnx", cache_dir=tmp_path)
    assert second.folder == first.folder
    with pytest.raises(NotFoundError, match="no ONNX export"):
        storage.set_object_store(_MissingStore())
        load_onnx_encoder(f"s3://{s3_bucket}/models/other", cache_dir=tmp_path)


class _MissingStore:
    def get(self, bucket: str, key: str) -> bytes:
        raise StorageError(f"cannot read s3://{bucket}/{key}: NoSuchKey")

    def put(self, bucket: str, key: str, data: bytes) -> None:
        raise AssertionError("no object should be written")

    def list(self, bucket: str, prefix: str) -> Iterator[str]:
        return iter(())


class _EmptyStore:
    def get(self, bucket: str, key: str) -> bytes:
        raise AssertionError("no object should be read")

    def put(self, bucket: str, key: str, data: bytes) -> None:
        raise AssertionError("no object should be written")

    def list(self, bucket: str, prefix: str) -> Iterator[str]:
        raise AssertionError("no prefix should be listed")


def test_given_folders_without_an_export_then_clear_errors(
    tiny_model_dir: Path, tmp_path: Path, onnx_dir: Path
) -> None:
    with pytest.raises(ConfigError, match="no ONNX export"):
        load_onnx_encoder(tiny_model_dir)
    with pytest.raises(NotFoundError, match="does not exist"):
        load_onnx_encoder(tmp_path / "missing")
    fp32_only = tmp_path / "fp32"
    fp32_only.mkdir()
    for name in ("text.onnx", "vision.onnx", TOKENIZER_FILE, PREPROCESS_FILE, MANIFEST_FILE):
        (fp32_only / name).write_bytes((onnx_dir / name).read_bytes())
    with pytest.raises(ConfigError, match="--int8"):
        OnnxEncoder(fp32_only, int8=True)


def test_given_torchscript_exporter_into_existing_folder_then_replaced_and_matching_torch(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Given an output folder that already holds an old file
    out = tmp_path / "ts"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    # When the legacy exporter writes there
    manifest = export_onnx(str(tiny_model_dir), out, exporter="torchscript")
    # Then the folder is replaced as a whole and the towers agree with torch
    assert manifest.exporter == "torchscript" and not (out / "stale.txt").exists()
    texts = ["chest ct", "knee mri with effusion"]
    torch_vectors = load_encoder(str(tiny_model_dir), device="cpu").encode_texts(texts)
    assert _cosines(OnnxEncoder(out).encode_texts(texts), torch_vectors).min() >= 0.999


def test_given_unknown_exporter_then_config_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exporter"):
        export_onnx(str(tiny_model_dir), tmp_path / "x", exporter="magic")
    assert not (tmp_path / "x").exists()


def test_given_dynamo_export_failing_then_torchscript_takes_over(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medsearch.model import onnx_export

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("graph break")

    monkeypatch.setattr(onnx_export, "_export_dynamo", refuse)
    manifest = export_onnx(str(tiny_model_dir), tmp_path / "out")
    assert manifest.exporter == "torchscript"
    assert OnnxEncoder(tmp_path / "out").encode_texts(["ct"]).shape == (1, manifest.dim)
