"""A genuine ``CLIPModel`` folder laid out like a Hugging Face hub download of a pretrained CLIP.

The folder holds what ``openai/clip-vit-base-patch32`` holds: ``config.json`` (model type
``clip``), ``model.safetensors``, ``preprocessor_config.json`` (``CLIPImageProcessor`` with
OpenAI's mean and std) and the files of a real CLIP byte-level BPE tokenizer (``vocab.json``,
``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``). The
weights are random and the tokenizer is trained on the given captions, so no hub access is needed,
yet every code path that takes a pretrained base (``train --base FOLDER``, ``load_clip``,
``CLIPModel.from_pretrained``) runs as it would on a downloaded model.

Two shapes: ``small`` (trains in seconds on CPU) and ``vit-b-32`` (the tower shapes of
``openai/clip-vit-base-patch32``, for benchmarks: 12 text layers 512 wide, 77 positions, a ViT-B/32
at 224 px, projection 512). The token table has one row per token of the trained tokenizer, not
the hub's 49,408.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from medsearch.model.tiny import train_tokenizer

# OpenAI's CLIP normalisation, as in the hub's preprocessor_config.json.
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
# CLIP's context length: the hub tokenizer's model_max_length and the text position table.
CONTEXT_LENGTH = 77
# Files of a hub download of openai/clip-vit-base-patch32 that a CLIPModel folder needs.
HUB_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

# Tower sizes per shape; vit-b-32 copies openai/clip-vit-base-patch32's config.json.
SHAPES: dict[str, dict[str, Any]] = {
    "small": {
        "text": {"hidden_size": 64, "layers": 2, "heads": 4},
        "vision": {"hidden_size": 64, "layers": 2, "heads": 4, "patch_size": 8, "image_size": 32},
        "projection_dim": 32,
        # BPE tokens to train at most; the captions may give fewer.
        "vocab_size": 1024,
    },
    "vit-b-32": {
        "text": {"hidden_size": 512, "layers": 12, "heads": 8},
        "vision": {
            "hidden_size": 768,
            "layers": 12,
            "heads": 12,
            "patch_size": 32,
            "image_size": 224,
        },
        "projection_dim": 512,
        # The hub's vocabulary size as the most to train; the captions give fewer, so the token
        # table (one row per token, as load_clip requires) is the one shape smaller than the hub's.
        "vocab_size": 49408,
    },
}


def clip_config(tokenizer: CLIPTokenizer, shape: str) -> CLIPConfig:
    """Return the ``CLIPConfig`` of ``shape`` for ``tokenizer`` (its vocabulary and special ids)."""
    sizes = SHAPES[shape]
    text, vision = sizes["text"], sizes["vision"]
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": text["hidden_size"],
        "intermediate_size": 4 * text["hidden_size"],
        "num_hidden_layers": text["layers"],
        "num_attention_heads": text["heads"],
        "max_position_embeddings": CONTEXT_LENGTH,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": sizes["projection_dim"],
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "hidden_size": vision["hidden_size"],
        "intermediate_size": 4 * vision["hidden_size"],
        "num_hidden_layers": vision["layers"],
        "num_attention_heads": vision["heads"],
        "patch_size": vision["patch_size"],
        "image_size": vision["image_size"],
        "num_channels": 3,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": sizes["projection_dim"],
    }
    config = CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=sizes["projection_dim"],
        logit_scale_init_value=2.6592,
    )
    config.architectures = ["CLIPModel"]
    return config


def preprocessor_config(image_size: int) -> dict[str, Any]:
    """Return the hub's ``preprocessor_config.json`` of a CLIP at ``image_size`` pixels."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": OPENAI_MEAN,
        "image_std": OPENAI_STD,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }


def build_clip_folder(
    out: Path, captions: list[str], *, shape: str = "small", seed: int = 0
) -> Path:
    """Write a random-init ``CLIPModel`` of ``shape`` with a tokenizer trained on ``captions``
    into ``out``, in the hub's layout; the same arguments give the same files. Returns ``out``."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: use one of {sorted(SHAPES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trained = train_tokenizer(
        captions, vocab_size=SHAPES[shape]["vocab_size"], max_length=CONTEXT_LENGTH
    )
    # Saved and read back as the slow-named CLIPTokenizer, so the folder's tokenizer files are
    # exactly what save_pretrained writes for a hub CLIP.
    trained.save_pretrained(out)
    tokenizer = CLIPTokenizer.from_pretrained(out)
    _write_vocab_files(out)
    _write_special_tokens_map(out, tokenizer)
    config = clip_config(tokenizer, shape)
    # Module init draws from the global RNG: fork it, so building leaves the caller's untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(out)
    image_size = SHAPES[shape]["vision"]["image_size"]
    (out / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config(image_size), indent=2) + "\n"
    )
    return out


def _write_vocab_files(out: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` from ``tokenizer.json``, as the hub has them beside
    it (newer transformers save only ``tokenizer.json``)."""
    model = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8"
    )


def _write_special_tokens_map(out: Path, tokenizer: CLIPTokenizer) -> None:
    """Write ``special_tokens_map.json`` as the hub has it (newer transformers no longer do)."""
    path = out / "special_tokens_map.json"
    if path.is_file():
        return
    token = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    tokens = {
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "unk_token": tokenizer.unk_token,
    }
    mapping = {name: {"content": value, **token} for name, value in tokens.items() if value}
    path.write_text(json.dumps(mapping, indent=2) + "\n")
