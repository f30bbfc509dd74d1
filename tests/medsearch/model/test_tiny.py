"""The tiny CLIP: a CLIP-style tokenizer trained on captions and a small random-init model."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPModel, VisionTextDualEncoderModel

from medsearch.errors import ConfigError
from medsearch.model.tiny import TinyClipSpec, build_tiny_clip, train_tokenizer

CAPTIONS = [
    "CT of the chest shows a 3 cm nodule in the left lower lobe.",
    "Right knee MRI: small joint effusion.",
    "Plain radiograph of the hand with a fracture of the fifth metacarpal.",
] * 5


def test_given_captions_when_tokenizer_trained_then_clip_style_ids() -> None:
    tokenizer = train_tokenizer(CAPTIONS, vocab_size=400, max_length=16)
    ids = tokenizer(["CT OF THE CHEST"])["input_ids"][0]
    # bos first, eos last, lower-cased like CLIP (upper and lower case give the same ids)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids == tokenizer(["ct of the chest"])["input_ids"][0]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    # eos must not be 2: CLIP's text pooling treats id 2 as the legacy argmax convention
    assert tokenizer.eos_token_id != 2
    long = tokenizer([" ".join(CAPTIONS)], truncation=True, max_length=16)["input_ids"][0]
    assert len(long) == 16 and long[-1] == tokenizer.eos_token_id


def test_given_same_captions_when_tokenizer_trained_repeatedly_then_identical() -> None:
    # The BPE trainer breaks ties by ids it would otherwise assign in hash-map order.
    vocabularies = [train_tokenizer(CAPTIONS, vocab_size=400).get_vocab() for _ in range(4)]
    assert all(v == vocabularies[0] for v in vocabularies)


def test_given_no_captions_when_tokenizer_trained_then_config_error() -> None:
    with pytest.raises(ConfigError, match="needs captions"):
        train_tokenizer(["", "  "])


def test_given_seed_when_tiny_built_twice_then_same_weights_and_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_clip(CAPTIONS, seed=7)
    after = torch.rand(1)
    b = build_tiny_clip(CAPTIONS, seed=7)
    c = build_tiny_clip(CAPTIONS, seed=8)
    assert torch.equal(after, expected_next)
    for (name, pa), pb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.visual_projection.weight, c.model.visual_projection.weight)


def test_given_spec_when_built_then_config_matches_tokenizer_and_spec() -> None:
    spec = TinyClipSpec(image_size=32, patch_size=8, max_text_length=20, projection_dim=64)
    bundle = build_tiny_clip(CAPTIONS, spec=spec)
    config = bundle.model.config
    assert config.text_config.vocab_size == len(bundle.tokenizer)
    assert config.text_config.eos_token_id == bundle.tokenizer.eos_token_id
    assert config.vision_config.image_size == 32 and bundle.dim == 64
    assert bundle.max_text_length == 20
    assert bundle.image_processor.crop_size == {"height": 32, "width": 32}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TinyClipSpec(vision="vit", image_size=60, patch_size=8), "not a multiple of 8"),
        (TinyClipSpec(image_size=60), "multiple of 8"),
        (TinyClipSpec(image_size=32, conv_grid=8), "at least 64"),
        (TinyClipSpec(vision="resnet"), "unknown vision tower"),
    ],
)
def test_given_unusable_spec_when_built_then_config_error(spec: TinyClipSpec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_tiny_clip(CAPTIONS, spec=spec)


def test_given_towers_when_built_then_conv_is_a_dual_encoder_and_vit_a_clip() -> None:
    conv = build_tiny_clip(CAPTIONS)
    assert isinstance(conv.model, VisionTextDualEncoderModel)
    assert conv.model.config.vision_config.model_type == "medsearch_conv"
    # the flattened 4x4 grid of the last stage's 128 channels feeds the projection
    assert conv.model.visual_projection.in_features == 128 * 4 * 4
    assert conv.model.config.text_config.num_hidden_layers == 1
    vit = build_tiny_clip(CAPTIONS, spec=TinyClipSpec(vision="vit"))
    assert isinstance(vit.model, CLIPModel)
    pixels = torch.zeros(2, 3, 64, 64)
    for bundle in (conv, vit):
        with torch.inference_mode():
            features = bundle.model.get_image_features(pixel_values=pixels)
        assert features.pooler_output.shape == (2, bundle.dim)
