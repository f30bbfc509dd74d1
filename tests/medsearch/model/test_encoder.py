"""The torch encoder: unit float32 vectors, batch-size independent, truncating long texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsearch.errors import ConfigError
from medsearch.model.encoder import load_encoder, pooled, select_device, weights_fingerprint
from medsearch.vectors import Encoder, normalize


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path):
    return load_encoder(str(tiny_model_dir), device="cpu")


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    modes = ["RGB", "L", "RGBA"]
    return [
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).convert(modes[i % 3])
        for i in range(n)
    ]


def test_given_encoder_then_it_implements_the_protocol(encoder, tiny_model_dir: Path) -> None:
    assert isinstance(encoder, Encoder)
    assert encoder.model_id == str(tiny_model_dir)
    assert encoder.dim == encoder.bundle.model.config.projection_dim


def test_given_texts_when_encoded_then_unit_float32_rows_independent_of_batching(encoder) -> None:
    texts = ["chest CT", "left knee MRI with effusion", "hand x-ray", "abdomen ultrasound"] * 3
    whole = encoder.encode_texts(texts, batch_size=64)
    single = encoder.encode_texts(texts, batch_size=1)
    assert whole.dtype == np.float32 and whole.shape == (12, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(whole, single, atol=1e-5)


def test_given_images_of_any_mode_when_encoded_then_unit_rows_independent_of_batching(
    encoder,
) -> None:
    images = _images(5)
    whole = encoder.encode_images(images, batch_size=32)
    pairs = encoder.encode_images(images, batch_size=2)
    assert whole.dtype == np.float32 and whole.shape == (5, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(whole, pairs, atol=1e-5)


def test_given_text_longer_than_model_when_encoded_then_truncated_not_failing(encoder) -> None:
    long = " ".join(["nodule"] * 500)
    truncated = encoder.encode_texts([long])
    limit = encoder.bundle.max_text_length
    # The truncated text is the same as its first tokens: longer input changes nothing.
    assert truncated.shape == (1, encoder.dim)
    np.testing.assert_allclose(truncated, encoder.encode_texts([" ".join(["nodule"] * 600)]))
    assert limit == encoder.bundle.model.config.text_config.max_position_embeddings


def test_given_empty_input_when_encoded_then_empty_matrix(encoder) -> None:
    assert encoder.encode_texts([]).shape == (0, encoder.dim)
    assert encoder.encode_images([]).shape == (0, encoder.dim)


def test_given_training_mode_model_when_encoding_then_mode_restored(encoder) -> None:
    encoder.model.train()
    encoder.encode_texts(["chest"])
    assert encoder.model.training
    encoder.model.eval()


def test_given_frozen_tower_in_eval_mode_when_encoding_then_every_mode_restored(encoder) -> None:
    # Given a model in training whose vision tower is frozen (eval mode: batch norm stays put)
    encoder.model.train()
    encoder.model.vision_model.eval()
    before = [m.training for m in encoder.model.modules()]
    seen: list[bool] = []
    hook = encoder.model.vision_model.register_forward_pre_hook(
        lambda module, args: seen.append(any(m.training for m in encoder.model.modules()))
    )
    # When images are encoded (a validation pass)
    try:
        encoder.encode_images([Image.new("RGB", (40, 30))])
    finally:
        hook.remove()
    # Then everything ran in eval mode, and each submodule is back in its own mode after
    assert seen == [False]
    assert [m.training for m in encoder.model.modules()] == before
    assert encoder.model.training and not encoder.model.vision_model.training
    encoder.model.eval()


def test_given_unavailable_device_when_selected_then_config_error() -> None:
    with pytest.raises(ConfigError):
        select_device("nonsense")
    assert select_device("cpu").type == "cpu"


def test_given_models_when_fingerprinted_then_the_same_weights_match_and_others_differ(
    encoder, tiny_model_dir: Path, synth_corpus: Path, tmp_path: Path
) -> None:
    import shutil

    import torch

    from medsearch.data.manifest import read_manifest
    from medsearch.model.loading import load_clip
    from medsearch.model.tiny import build_tiny_clip

    # Given the tiny model loaded again from a copy of its folder (another model id)
    shutil.copytree(tiny_model_dir, tmp_path / "copy")
    copy = load_encoder(str(tmp_path / "copy"), device="cpu")
    # Then the weights have one short fingerprint, whatever the folder
    assert copy.fingerprint == encoder.fingerprint
    assert encoder.fingerprint.startswith("sha256:") and len(encoder.fingerprint) == 7 + 16
    # And the same values held in another precision keep it
    widened = load_clip(str(tiny_model_dir)).model.double()
    assert weights_fingerprint(widened) == encoder.fingerprint
    # While another model of the same dimension, or one weight changed, gives another one
    captions = [r.caption for r in read_manifest(synth_corpus) if r.caption]
    other = build_tiny_clip(captions, seed=1).model
    assert other.config.projection_dim == encoder.dim
    assert weights_fingerprint(other) != encoder.fingerprint
    nudged = load_clip(str(tiny_model_dir)).model
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-3
    assert weights_fingerprint(nudged) != encoder.fingerprint


@pytest.mark.parametrize("folder", ["tiny_model_dir", "clip_folder"])
def test_given_images_when_encoded_then_the_models_own_processor_pixels_are_used(
    folder: str, request: pytest.FixtureRequest
) -> None:
    # Given a model whose processor is transformers' own (the tiny model's, a hub-layout CLIP's)
    encoder = load_encoder(str(request.getfixturevalue(folder)), device="cpu")
    images = [im.convert("RGB") for im in _images(5)] + [Image.new("RGB", (300, 17), "gray")]
    # When the encoder embeds them, Then the vectors are those of the processor's pixels exactly
    pixels = encoder.bundle.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        features = encoder.model.eval().get_image_features(pixel_values=pixels)
    expected = normalize(pooled(features).float().numpy())
    np.testing.assert_array_equal(encoder.encode_images(images), expected)
