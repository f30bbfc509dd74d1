"""The tiny CLIP: a CLIP-style tokenizer trained on captions and a small random-init model."""

from __future__ import annotations

import pytest
import torch

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


def test_given_image_size_not_multiple_of_patch_when_built_then_config_error() -> None:
    with pytest.raises(ConfigError, match="multiple"):
        build_tiny_clip(CAPTIONS, spec=TinyClipSpec(image_size=60, patch_size=8))
