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

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
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
from medsearch.model.cache import MODEL_FILES, fetch_model
from medsearch.model.names import recorded_model_name, shown_model_name

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
    # The name a training run recorded beside the weights (medsearch.model.names), if any.
    recorded_name: str | None = None

    @property
    def name(self) -> str:
        """The model's name as clients see it: the recorded one, else its source shown."""
        return self.recorded_name or shown_model_name(self.source) or "clip"

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
        folder = fetch_model(source, cache)
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
        bundle = _from_pretrained(str(folder), source, MODEL_CLASSES[model_type])
        bundle.recorded_name = recorded_model_name(folder)
        return bundle
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise ConfigError(f"{source}: cannot load the CLIP model ({_first_line(exc)})") from None


_HUB_PROBE_TIMEOUT_S = 10.0


def _load_hub(model_id: str) -> ClipBundle:
    """Load a hub model from the local hub cache, else download only the files loading needs.

    The cache is tried first without network, and the hub is then asked once for the listing
    (which also tells a missing repository from a missing network at once): without it,
    transformers retries each file for about 25 s before failing.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    # The files a model folder's loading reads (the s3 cache fetches the same), weights aside.
    patterns = [*sorted(MODEL_FILES), "*.safetensors", "model.safetensors.index.json"]
    try:
        cached = Path(snapshot_download(model_id, allow_patterns=patterns, local_files_only=True))
    except OSError:
        cached = None  # not cached (LocalEntryNotFoundError is an OSError)
    if cached is not None and (cached / "config.json").is_file():
        return _load_folder(cached, model_id)
    try:
        info = HfApi().model_info(model_id, timeout=_HUB_PROBE_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise NotFoundError(
            f"{model_id} is neither a local folder nor a model on the Hugging Face hub"
        ) from None
    except HfHubHTTPError as exc:
        raise NotFoundError(
            f"{model_id}: the Hugging Face hub refused it ({_first_line(exc)})"
        ) from None
    except Exception as exc:  # the HTTP client's network errors, or offline mode
        raise NotFoundError(
            f"{model_id} is not a local folder, not in the Hugging Face cache, and the hub cannot"
            f" be reached ({_first_line(exc)}); give a model folder or an s3:// prefix"
        ) from None
    model_type = (info.config or {}).get("model_type")
    if model_type is not None and model_type not in MODEL_CLASSES:
        raise ConfigError(f"{model_id} holds a {model_type!r} model, not a CLIP model")
    names = {s.rfilename for s in info.siblings or []}
    if not any(name.endswith(".safetensors") for name in names):
        patterns += ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
    try:
        folder = snapshot_download(model_id, allow_patterns=patterns, revision=info.sha)
    except Exception as exc:  # network failures mid-download arrive as many types
        raise StorageError(
            f"{model_id}: download from the hub failed ({_first_line(exc)})"
        ) from None
    return _load_folder(Path(folder), model_id)


def _from_pretrained(
    location: str,
    source: str,
    model_class: type[CLIPModel | VisionTextDualEncoderModel] = CLIPModel,
) -> ClipBundle:
    model = model_class.from_pretrained(location)
    tokenizer = AutoTokenizer.from_pretrained(location)
    image_processor = AutoImageProcessor.from_pretrained(location)
    bundle = ClipBundle(model, tokenizer, image_processor, source)
    check_bundle(bundle)
    log.info("loaded CLIP from %s (dim %d)", source, model.config.projection_dim)
    return bundle


# A caption every CLIP tokenizer round-trips (lower case, no digits or punctuation).
_PROBE_TEXT = "axial ct of the chest with a right lower lobe nodule"


def check_bundle(bundle: ClipBundle) -> None:
    """Refuse a tokenizer or image processor that does not fit the model, naming the mismatch.

    A folder without tokenizer files still loads: transformers 5 builds a two-token tokenizer
    that maps every caption to unknown tokens, and training on it "works". An image processor
    whose crop differs from the vision tower's input size fails only at the first image.
    """
    source = bundle.source
    config: Any = bundle.model.config
    vocab = int(config.text_config.vocab_size)
    size = len(bundle.tokenizer)
    if size > vocab or size < vocab // 2:
        raise ConfigError(
            f"{source}: its tokenizer has {size:,} tokens but the model's vocabulary has {vocab:,}"
            " (tokenizer files missing or from another model?)"
        )
    ids = bundle.tokenizer(_PROBE_TEXT)["input_ids"]
    decoded = bundle.tokenizer.decode(ids, skip_special_tokens=True)
    if " ".join(decoded.lower().split()) != _PROBE_TEXT:
        raise ConfigError(
            f"{source}: its tokenizer does not round-trip text ({_PROBE_TEXT!r} came back as"
            f" {decoded!r}); the tokenizer files are broken or from another model"
        )
    expected = getattr(config.vision_config, "image_size", None)
    crop = _processor_size(bundle.image_processor)
    if expected is not None and crop is not None and crop != (int(expected), int(expected)):
        raise ConfigError(
            f"{source}: its image processor makes {crop[0]}x{crop[1]} images but the vision tower"
            f" takes {expected}x{expected}"
        )


def _processor_size(processor: Any) -> tuple[int, int] | None:
    """Return the (height, width) the processor's output has, where its config fixes it."""
    crop = getattr(processor, "crop_size", None)
    size = crop if crop and getattr(processor, "do_center_crop", False) else processor.size
    if not size:
        return None
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    return None  # a shortest edge alone leaves the other side to the image


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
        # preprocessor_config.json as well: transformers 4 (older SageMaker containers) reads
        # the image processor only from there.
        bundle.image_processor.save_pretrained(staging)
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
