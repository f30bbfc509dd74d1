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
    # Then a second load reads the cache, even with the objects gone from S3
    for key in storage.object_store().list(s3_bucket, "models/"):
        storage.object_store()._client.delete_object(Bucket=s3_bucket, Key=key)  # type: ignore[attr-defined]
    again = load_clip(url, cache_dir=tmp_path / "cache")
    assert again.model.config.projection_dim == bundle.model.config.projection_dim


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


def test_given_hub_id_without_hub_access_when_loaded_then_not_found_error() -> None:
    # A subprocess, because the offline switch is read when huggingface_hub is imported.
    code = (
        "from medsearch.model.loading import load_clip\n"
        "from medsearch.errors import NotFoundError\n"
        "try:\n"
        "    load_clip('openai/clip-vit-base-patch32')\n"
        "except NotFoundError as exc:\n"
        "    print('NotFoundError:', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert "NotFoundError: openai/clip-vit-base-patch32 is neither a local folder" in result.stdout
