"""The tiny CLIP: a small CLIP built from scratch, for offline use, demos and tests.

No hub access is needed: the towers are randomly initialised, and the tokenizer is a byte-level
BPE trained on the training captions with the ``tokenizers`` library, using CLIP's own
normalisation and pre-tokenisation so it loads back as a regular
:class:`~transformers.CLIPTokenizer`. Sizes are tuned so the model learns the synthetic corpus in
minutes on two CPU cores.

Two vision towers: ``conv`` (the default), a small convolutional tower
(:mod:`medsearch.model.convnet`) in a :class:`~transformers.VisionTextDualEncoderModel` beside
CLIP's text tower, and ``vit``, CLIP's own vision transformer in a plain
:class:`~transformers.CLIPModel`. Both train, save, load and export the same way. The conv tower is
the default because it learns findings and their side; the ViT learns them only with far more
steps than a demo can spend (see :mod:`medsearch.model.convnet` for the figures).

One text layer, not three: queries are short and worded unlike captions, and the deeper text
tower, trained from scratch on a few thousand captions, generalises worse to them. Measured on the
demo corpus and its query set with the conv tower: vector R@10 0.656 with one layer, 0.615 with
three (hybrid at alpha 0.5: 0.749 and 0.721).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTokenizer,
    VisionTextDualEncoderConfig,
)

from medsearch.errors import ConfigError
from medsearch.model.convnet import ConvTowerConfig
from medsearch.model.loading import MODEL_CLASSES, ClipBundle

log = logging.getLogger(__name__)

TINY = "tiny"
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# CLIPTokenizer's own pre-tokeniser pattern: words, single digits, runs of punctuation.
_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"""
    r"""|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


VISION_TOWERS = ("conv", "vit")


@dataclass(frozen=True)
class TinyClipSpec:
    """Sizes of the tiny CLIP (small enough to train on CPU, large enough to learn attributes)."""

    image_size: int = 64
    vision: str = "conv"
    # conv tower: stage widths and the grid its last feature map is pooled to
    conv_widths: tuple[int, ...] = (32, 64, 128, 128)
    conv_grid: int = 4
    # vit tower
    patch_size: int = 16
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 1
    text_heads: int = 4
    max_text_length: int = 48
    projection_dim: int = 128
    vocab_size: int = 2048


def train_tokenizer(
    captions: Iterable[str], *, vocab_size: int = 2048, max_length: int = 48
) -> CLIPTokenizer:
    """Train a CLIP-style byte-level BPE tokenizer (lower-cased, bos/eos, pad = eos) on captions."""
    texts = [c for c in captions if c and c.strip()]
    if not texts:
        raise ConfigError("the tiny model needs captions to train its tokenizer; none were given")
    backend = Tokenizer(BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        # bos = 0 and eos = 1: CLIP's text pooling reads the first eos, except for the legacy id 2.
        # The end-of-word forms of every byte are listed up front: the trainer would otherwise
        # create them in hash-map order, and their ids break ties between equally frequent
        # merges, so the same captions could give a different tokenizer on every run.
        special_tokens=[
            BOS,
            EOS,
            *(c + "</w>" for c in sorted(pre_tokenizers.ByteLevel.alphabet())),
        ],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    state = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    # Pairs, not "a b" strings: the annotation says str, the BPE model behind it wants tuples.
    tokenizer = CLIPTokenizer(
        vocab=state["vocab"],
        merges=merges,  # type: ignore[arg-type]
        model_max_length=max_length,
    )
    log.info("trained a %d-token BPE tokenizer on %d captions", len(state["vocab"]), len(texts))
    return tokenizer


def tiny_config(
    tokenizer: CLIPTokenizer, spec: TinyClipSpec
) -> CLIPConfig | VisionTextDualEncoderConfig:
    """Return the config of a tiny model matching ``tokenizer``, with the spec's vision tower."""
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.text_width,
        "intermediate_size": 4 * spec.text_width,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "max_position_embeddings": spec.max_text_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "projection_dim": spec.projection_dim,
    }
    if spec.vision == "conv":
        conv = ConvTowerConfig(
            widths=spec.conv_widths, grid=spec.conv_grid, image_size=spec.image_size
        )
        return VisionTextDualEncoderConfig.from_vision_text_configs(
            conv, CLIPTextConfig(**text), projection_dim=spec.projection_dim
        )
    vision = {
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "hidden_size": spec.vision_width,
        "intermediate_size": 4 * spec.vision_width,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "projection_dim": spec.projection_dim,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec.projection_dim)


def _check_spec(spec: TinyClipSpec) -> None:
    if spec.vision not in VISION_TOWERS:
        raise ConfigError(f"unknown vision tower {spec.vision!r}: use one of {VISION_TOWERS}")
    if spec.vision == "vit" and spec.image_size % spec.patch_size:
        raise ConfigError(f"image size {spec.image_size} is not a multiple of {spec.patch_size}")
    # Each conv stage but the last halves the resolution; the grid must fit what is left.
    if spec.vision == "conv":
        reduction = 2 ** (len(spec.conv_widths) - 1)
        if spec.image_size % reduction or spec.image_size // reduction < spec.conv_grid:
            raise ConfigError(
                f"image size {spec.image_size} must be a multiple of {reduction} and at least "
                f"{reduction * spec.conv_grid} for {len(spec.conv_widths)} conv stages and a "
                f"{spec.conv_grid}x{spec.conv_grid} grid"
            )


def tiny_image_processor(spec: TinyClipSpec) -> CLIPImageProcessorPil:
    """Return CLIP's image processor at the tiny model's resolution."""
    size = spec.image_size
    # The PIL backend: same output as the torchvision one, which is not installed here.
    return CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )


def build_tiny_clip(
    captions: Iterable[str], *, spec: TinyClipSpec | None = None, seed: int = 0
) -> ClipBundle:
    """Build a randomly initialised tiny CLIP with a tokenizer trained on ``captions``."""
    spec = spec or TinyClipSpec()
    _check_spec(spec)
    tokenizer = train_tokenizer(
        captions, vocab_size=spec.vocab_size, max_length=spec.max_text_length
    )
    config = tiny_config(tokenizer, spec)
    # A local generator would not reach the modules' own init calls; fork the global RNG instead.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model_class: Any = MODEL_CLASSES[config.model_type]  # the class that takes this config
        model = model_class(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "built a tiny CLIP (%s vision tower): %.2fM parameters, %dpx images",
        spec.vision,
        n_params / 1e6,
        spec.image_size,
    )
    return ClipBundle(model, tokenizer, tiny_image_processor(spec), TINY)
