"""Loading and saving CLIP models: folders, s3:// prefixes, and clear errors for bad sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
    VisionTextDualEncoderModel,
)

from medsearch import storage
from medsearch.errors import ConfigError, NotFoundError
from medsearch.model.encoder import TorchEncoder
from medsearch.model.loading import load_clip, save_clip
from medsearch.model.tiny import TinyClipSpec, build_tiny_clip

TEXTS = ["CT of the chest with a left lung nodule", "Normal knee radiograph"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)) for _ in range(3)]


def test_given_saved_tiny_vit_model_when_loaded_with_plain_transformers_then_it_works(
    tmp_path: Path,
) -> None:
    # Given the ViT tower's folder written by save_clip; When loaded without medsearch's own code
    save_clip(build_tiny_clip(TEXTS * 3, spec=TinyClipSpec(vision="vit")), tmp_path)
    model = CLIPModel.from_pretrained(tmp_path)
    _assert_standard_forward(model, tmp_path)


def test_given_saved_tiny_conv_model_when_loaded_with_auto_classes_then_it_works(
    tiny_model_dir: Path,
) -> None:
    # The conv tower needs only its registration (importing medsearch.model.convnet).
    import medsearch.model.convnet  # noqa: F401

    model = AutoModel.from_pretrained(tiny_model_dir)
    assert isinstance(model, VisionTextDualEncoderModel)
    _assert_standard_forward(model, tiny_model_dir)


def _assert_standard_forward(model: torch.nn.Module, folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(text=TEXTS, images=_images()[:2], return_tensors="pt", padding=True)
    # Then the standard CLIP forward pass runs on the processor's output
    with torch.inference_mode():
        output = model(**inputs)
    assert output.logits_per_text.shape == (2, 2)
    assert tokenizer("CT")["input_ids"][0] == tokenizer.bos_token_id
    assert inputs["pixel_values"].shape[-1] == model.config.vision_config.image_size


def test_given_trained_batch_norm_statistics_when_saved_and_loaded_then_kept(
    tmp_path: Path,
) -> None:
    # Given a conv tower whose batch-norm statistics moved in training (train-mode passes)
    bundle = build_tiny_clip(TEXTS * 3, seed=1)
    bundle.model.train()
    with torch.no_grad():
        for _ in range(3):
            bundle.model.get_image_features(pixel_values=torch.randn(8, 3, 64, 64) * 2 + 1)
    bundle.model.eval()
    pixels = torch.randn(2, 3, 64, 64)
    expected = bundle.model.get_image_features(pixel_values=pixels).pooler_output
    # When saved and loaded back
    save_clip(bundle, tmp_path)
    loaded = load_clip(str(tmp_path)).model.eval()
    # Then the statistics, and so the vectors, are the trained ones, not re-initialised
    stats = loaded.vision_model.stages[0][1].running_mean
    assert torch.equal(stats, bundle.model.vision_model.stages[0][1].running_mean)
    assert not torch.equal(stats, torch.zeros_like(stats))
    actual = loaded.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(actual, expected)


def test_given_bundle_when_saved_and_loaded_then_vectors_are_identical(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    bundle = load_clip(str(tiny_model_dir))
    before = TorchEncoder(bundle, device="cpu")
    save_clip(bundle, tmp_path / "copy")
    after = TorchEncoder(load_clip(str(tmp_path / "copy")), device="cpu")
    np.testing.assert_array_equal(before.encode_texts(TEXTS), after.encode_texts(TEXTS))
    np.testing.assert_array_equal(before.encode_images(_images()), after.encode_images(_images()))


def test_given_folder_with_other_files_when_saved_into_then_they_are_kept(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "history.jsonl").write_text("{}\n")
    save_clip(load_clip(str(tiny_model_dir)), tmp_path)
    assert (tmp_path / "history.jsonl").read_text() == "{}\n"
    assert (tmp_path / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".saving")]


def test_given_s3_prefix_when_loaded_then_downloaded_once_and_reused(
    tiny_model_dir: Path, s3_bucket: str, tmp_path: Path
) -> None:
    # Given the model uploaded under an s3:// prefix
    url = f"s3://{s3_bucket}/models/tiny"
    assert storage.upload_dir(tiny_model_dir, url) > 0
    # When loaded through the cache
    bundle = load_clip(url, cache_dir=tmp_path / "cache")
    expected = TorchEncoder(load_clip(str(tiny_model_dir)), device="cpu").encode_texts(TEXTS)
    np.testing.assert_array_equal(TorchEncoder(bundle, device="cpu").encode_texts(TEXTS), expected)
    assert bundle.source == url

    # Then a second load of the unchanged prefix reads the same cached folder
    def cached() -> list[Path]:
        return sorted(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))

    folders = cached()
    again = load_clip(url, cache_dir=tmp_path / "cache")
    assert again.model.config.projection_dim == bundle.model.config.projection_dim
    assert cached() == folders


def test_given_empty_s3_prefix_when_loaded_then_storage_error(
    s3_bucket: str, tmp_path: Path
) -> None:
    from medsearch.errors import StorageError

    with pytest.raises(StorageError, match="nothing found"):
        load_clip(f"s3://{s3_bucket}/no/model", cache_dir=tmp_path)


def test_given_folder_without_config_when_loaded_then_config_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError, match="not a model folder"):
        load_clip(str(tmp_path))


def test_given_folder_of_other_model_type_when_loaded_then_config_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="not a CLIP model"):
        load_clip(str(tmp_path))


def test_given_clip_config_without_weights_when_loaded_then_config_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ConfigError, match="cannot load"):
        load_clip(str(tmp_path))


def test_given_file_or_missing_path_when_loaded_then_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file"):
        load_clip(str(tmp_path / "model.bin"))
    with pytest.raises(NotFoundError, match="does not exist"):
        load_clip(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="empty model source"):
        load_clip("  ")


@pytest.mark.parametrize("offline", ["1", None])
def test_given_hub_id_without_hub_access_when_loaded_then_one_clear_error_at_once(
    tmp_path: Path, offline: str | None
) -> None:
    # A subprocess, because the offline switch is read when huggingface_hub is imported. This
    # machine has no route to the hub: unset, the switch leaves the probe to find that out.
    code = (
        "import logging\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from medsearch.model.loading import load_clip\n"
        "from medsearch.errors import NotFoundError\n"
        "try:\n"
        "    load_clip('openai/clip-vit-base-patch32')\n"
        "except NotFoundError as exc:\n"
        "    print('NotFoundError:', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")  # nothing cached
    if offline:
        env["HF_HUB_OFFLINE"] = offline
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert "NotFoundError: openai/clip-vit-base-patch32 is not a local folder" in result.stdout
    assert "cannot be reached" in result.stdout
    # No per-file retries (transformers retries each file 5 times with back-off) and no warnings
    assert "Retrying" not in result.stderr and "WARNING" not in result.stderr


def _hub_cache(cache: Path, model_id: str, folder: Path) -> None:
    """Lay ``folder`` out as the hub cache holds a downloaded snapshot of ``model_id``."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))


def test_given_cached_hub_models_when_loaded_then_clip_loads_offline_and_others_refused(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    _hub_cache(cache, "someone/small-clip", tiny_model_dir)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _hub_cache(cache, "someone/bert", bert)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert load_clip("someone/small-clip").source == "someone/small-clip"
    with pytest.raises(ConfigError, match="holds a 'bert' model, not a CLIP model"):
        load_clip("someone/bert")


def _copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_given_folder_without_tokenizer_files_when_loaded_then_refused(tmp_path: Path) -> None:
    # For a CLIPModel, transformers 5 builds a two-token tokenizer mapping every caption to
    # unknown tokens
    bundle = build_tiny_clip(TEXTS * 10, seed=0, spec=TinyClipSpec(vision="vit"))
    folder = save_clip(bundle, tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="its tokenizer has 2 tokens but the model's vocabulary"):
        load_clip(str(folder))


def test_given_tokenizer_larger_than_the_vocabulary_when_loaded_then_refused(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # Its ids past the embedding table would fail only at the first caption that uses them
    from medsearch.model.tiny import train_tokenizer

    folder = _copy_model(tiny_model_dir, tmp_path / "m")
    size = len(AutoTokenizer.from_pretrained(str(folder)))
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    texts = [" ".join("".join(rng.choice(letters, 6)) for _ in range(8)) for _ in range(3000)]
    larger = train_tokenizer(texts, vocab_size=size + 500)
    assert len(larger) > size
    larger.save_pretrained(str(folder))
    with pytest.raises(ConfigError, match=f"but the model's vocabulary has {size:,}"):
        load_clip(str(folder))


def test_given_processor_size_unlike_vision_tower_when_loaded_then_refused(
    tmp_path: Path,
) -> None:
    bundle = build_tiny_clip(TEXTS * 10, seed=0, spec=TinyClipSpec(vision="vit"))
    folder = save_clip(bundle, tmp_path / "m")
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / name
        config = json.loads(path.read_text())
        target = config.get("image_processor", config)
        target["crop_size"] = {"height": 224, "width": 224}
        target["size"] = {"shortest_edge": 224}
        path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="makes 224x224 images but the vision tower takes 64x64"):
        load_clip(str(folder))


def test_given_truncated_weights_when_loaded_then_one_line_config_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    folder = _copy_model(tiny_model_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ConfigError, match="cannot load the CLIP model") as caught:
        load_clip(str(folder))
    assert len(str(caught.value).splitlines()) == 1


def test_given_saved_model_then_legacy_preprocessor_config_for_transformers_4(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # transformers 4 reads the image processor from preprocessor_config.json only, by a class
    # name it knows
    config = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == "CLIPImageProcessor"
    assert config["crop_size"] == {"height": 64, "width": 64}
