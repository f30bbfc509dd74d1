"""Load and save CLIP models: a Hugging Face id, a local folder, or an ``s3://`` prefix.

A saved folder holds the model (``save_pretrained``, safetensors), the tokenizer and the image
processor. Two model types load: ``clip`` (any Hugging Face CLIP, and the tiny model with the ViT
tower), which loads with ``CLIPModel.from_pretrained`` anywhere, and ``vision-text-dual-encoder``
(the tiny model's default conv tower beside a CLIP text tower), which needs
:mod:`medsearch.model.convnet` imported to register its vision tower. Both offer
``get_text_features``/``get_image_features``, the towers by the same names and ``logit_scale``,
which is all the rest of medsearch uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPModel,
    CLIPProcessor,
    VisionTextDualEncoderModel,
)

from medsearch import storage
from medsearch.errors import ConfigError, NotFoundError, StorageError
from medsearch.model import convnet  # noqa: F401  (registers the tiny model's conv tower)

log = logging.getLogger(__name__)

# The model class of each model type that loads (config.json's model_type); hub ids load as CLIP.
MODEL_CLASSES: dict[str, type[CLIPModel | VisionTextDualEncoderModel]] = {
    "clip": CLIPModel,
    "vision-text-dual-encoder": VisionTextDualEncoderModel,
}

# A Hugging Face repository id: "name" or "owner/name", nothing path-like.
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@dataclass
class ClipBundle:
    """A CLIP model with the tokenizer and image processor that belong to it."""

    model: CLIPModel | VisionTextDualEncoderModel
    tokenizer: Any
    image_processor: Any
    source: str

    @property
    def max_text_length(self) -> int:
        """Longest token sequence the text tower accepts (tokenizer and position table agree)."""
        config: Any = self.model.config  # transformers types sub-configs loosely
        positions = int(config.text_config.max_position_embeddings)
        limit = getattr(self.tokenizer, "model_max_length", positions) or positions
        return min(positions, int(limit))

    @property
    def dim(self) -> int:
        """The shared embedding dimension of both towers."""
        config: Any = self.model.config
        return int(config.projection_dim)


def default_cache_dir() -> Path:
    """Return the folder that ``s3://`` models are downloaded into once."""
    return Path.home() / ".cache" / "medsearch" / "models"


def load_clip(source: str, *, cache_dir: Path | None = None) -> ClipBundle:
    """Load a CLIP bundle from a Hugging Face id, a local folder or an ``s3://`` prefix."""
    source = str(source).strip()
    if not source:
        raise ConfigError("empty model source: give a folder, an s3:// prefix or a Hugging Face id")
    if storage.is_s3(source):
        cache = cache_dir or default_cache_dir()
        key = hashlib.sha256(source.rstrip("/").encode()).hexdigest()[:16]
        folder = storage.download_prefix(source, cache / key)
        return _load_folder(folder, source)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{source} is a file, not a model folder")
        return _load_folder(path, source)
    if source.startswith((".", "/", "~")) or not _HF_ID.fullmatch(source):
        raise NotFoundError(f"model folder {source} does not exist")
    return _load_hub(source)


def _load_folder(folder: Path, source: str) -> ClipBundle:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{source} is not a model folder: it has no config.json")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: unreadable config.json ({exc})") from None
    if model_type not in MODEL_CLASSES:
        raise ConfigError(f"{source} holds a {model_type!r} model, not a CLIP model")
    try:
        return _from_pretrained(str(folder), source, MODEL_CLASSES[model_type])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{source}: cannot load the CLIP model ({_first_line(exc)})") from None


def _load_hub(model_id: str) -> ClipBundle:
    try:
        return _from_pretrained(model_id, model_id)
    except OSError as exc:
        # transformers raises OSError both for unknown repositories and for no network access.
        raise NotFoundError(
            f"{model_id} is neither a local folder nor loadable from the Hugging Face hub"
            f" ({_first_line(exc)})"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{model_id} is not a usable CLIP model ({_first_line(exc)})") from None


def _from_pretrained(
    location: str,
    source: str,
    model_class: type[CLIPModel | VisionTextDualEncoderModel] = CLIPModel,
) -> ClipBundle:
    model = model_class.from_pretrained(location)
    tokenizer = AutoTokenizer.from_pretrained(location)
    image_processor = AutoImageProcessor.from_pretrained(location)
    log.info("loaded CLIP from %s (dim %d)", source, model.config.projection_dim)
    return ClipBundle(model, tokenizer, image_processor, source)


def save_clip(bundle: ClipBundle, out: Path) -> Path:
    """Write model, tokenizer and processor files into ``out``, leaving its other files alone.

    Everything is written aside first and each file is then renamed into place, so a crash never
    leaves a half-written weight file, and a training run's history beside the model survives.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StorageError(f"cannot save the model: {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".saving."))
    try:
        bundle.model.save_pretrained(staging)
        # A CLIPProcessor writes the tokenizer files and the image processor config in one go,
        # so AutoProcessor, AutoTokenizer and AutoImageProcessor all load the folder.
        processor = CLIPProcessor(
            image_processor=bundle.image_processor, tokenizer=bundle.tokenizer
        )
        processor.save_pretrained(staging)
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = out / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("saved CLIP to %s", out)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
