"""The ONNX encoder: CLIP's two towers on onnxruntime, with no torch import.

This is what the search API Lambda runs. A folder written by ``medsearch export-onnx`` holds
``text.onnx`` and ``vision.onnx`` (optionally ``*.int8.onnx``), the tokenizer (``tokenizer.json``,
truncation and padding already configured), the image preprocessing (``preprocess.json``) and a
small manifest (``onnx_manifest.json``: model id, dimension, opset, and the weight fingerprint of
the torch model it was exported from, so its vectors and the torch model's are known to belong
together; the int8 towers carry the same one). Preprocessing reproduces
Hugging Face's ``CLIPImageProcessor`` (PIL backend) step by step: shortest edge resized with the
same rounding and resampling filter, center crop (zero padding when the image is smaller), rescale,
normalise. Vectors are made unit length by :func:`medsearch.vectors.normalize`, as everywhere else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsearch import storage
from medsearch.constants import ONNX_SUBDIR
from medsearch.errors import ConfigError, InvalidInputError, NotFoundError, StorageError
from medsearch.model.names import shown_model_name
from medsearch.vectors import normalize

log = logging.getLogger(__name__)

TEXT_MODEL = "text.onnx"
VISION_MODEL = "vision.onnx"
TEXT_MODEL_INT8 = "text.int8.onnx"
VISION_MODEL_INT8 = "vision.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
PREPROCESS_FILE = "preprocess.json"
MANIFEST_FILE = "onnx_manifest.json"

# Input and output names of the exported graphs (the export and this module must agree).
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUT = "text_embeds"
VISION_INPUT = "pixel_values"
VISION_OUTPUT = "image_embeds"

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """Text length and the image pipeline of the model (the fields of ``preprocess.json``).

    ``resize``: ``"shortest_edge"`` scales the short side to ``shortest_edge`` keeping the aspect
    ratio (long side truncated, as transformers does); ``"exact"`` resizes to ``height`` x
    ``width``; ``"none"`` skips resizing.
    """

    max_length: int
    resize: str
    shortest_edge: int | None
    height: int | None
    width: int | None
    resample: str
    center_crop: bool
    crop_height: int
    crop_width: int
    rescale_factor: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    def to_json(self) -> dict[str, Any]:
        """Return the ``preprocess.json`` content."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PreprocessConfig:
        """Parse ``preprocess.json``; unknown or missing fields are a clear error."""
        try:
            config = cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"{PREPROCESS_FILE}: {exc}") from None
        if config.resize not in {"shortest_edge", "exact", "none"}:
            raise ConfigError(f"{PREPROCESS_FILE}: unknown resize rule {config.resize!r}")
        if config.resample not in _RESAMPLE:
            raise ConfigError(f"{PREPROCESS_FILE}: unknown resampling filter {config.resample!r}")
        mean = tuple(config.mean) if config.mean is not None else None
        std = tuple(config.std) if config.std is not None else None
        return cls(**{**asdict(config), "mean": mean, "std": std})


@dataclass(frozen=True)
class OnnxManifest:
    """What an export folder holds: the model id and dimension, opset and exporter used, and the
    source model's weight fingerprint (None in an export from before fingerprints)."""

    model_id: str
    dim: int
    opset: int
    exporter: str
    int8: bool
    fingerprint: str | None = None
    # The model's name as clients see it (None in an export from before names).
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the ``onnx_manifest.json`` content."""
        return asdict(self)


def read_onnx_manifest(folder: Path) -> OnnxManifest:
    """Read an export folder's ``onnx_manifest.json``."""
    path = Path(folder) / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
        return OnnxManifest(
            model_id=str(raw["model_id"]),
            dim=int(raw["dim"]),
            opset=int(raw["opset"]),
            exporter=str(raw.get("exporter", "")),
            int8=bool(raw.get("int8", False)),
            fingerprint=str(raw["fingerprint"]) if raw.get("fingerprint") else None,
            name=str(raw["name"]) if raw.get("name") else None,
        )
    except FileNotFoundError:
        raise ConfigError(f"{folder} is not an ONNX export: it has no {MANIFEST_FILE}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable ONNX manifest ({exc})") from None


def preprocess_image(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """Turn one image into a float32 ``[3, H, W]`` array exactly as CLIP's image processor does."""
    rgb = image.convert("RGB")
    if config.resize == "shortest_edge" and config.shortest_edge:
        width, height = rgb.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = config.shortest_edge, int(config.shortest_edge * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        rgb = rgb.resize(size, resample=_RESAMPLE[config.resample])
    elif config.resize == "exact" and config.height and config.width:
        rgb = rgb.resize((config.width, config.height), resample=_RESAMPLE[config.resample])
    pixels = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    if config.center_crop:
        pixels = _center_crop(pixels, config.crop_height, config.crop_width)
    array = pixels.astype(np.float32)
    if config.rescale_factor is not None:
        array = array * np.float32(config.rescale_factor)
    if config.mean is not None and config.std is not None:
        mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(config.std, dtype=np.float32)[:, None, None]
        array = (array - mean) / std
    return array.astype(np.float32, copy=False)


def _center_crop(pixels: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """Center-crop a ``[C, H, W]`` array, zero-padding first where it is smaller (as HF does)."""
    _, height, width = pixels.shape
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    if top >= 0 and left >= 0:
        return pixels[:, top : top + crop_height, left : left + crop_width]
    new_height, new_width = max(crop_height, height), max(crop_width, width)
    padded = np.zeros((pixels.shape[0], new_height, new_width), dtype=pixels.dtype)
    top_pad, left_pad = math.ceil((new_height - height) / 2), math.ceil((new_width - width) / 2)
    padded[:, top_pad : top_pad + height, left_pad : left_pad + width] = pixels
    # As in transformers: the crop window moves with the padding and stays on the canvas.
    top, left = max(top + top_pad, 0), max(left + left_pad, 0)
    return padded[:, top : top + crop_height, left : left + crop_width]


class OnnxEncoder:
    """Encodes texts and images with an exported CLIP on onnxruntime (float32 or int8 towers)."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        int8: bool = False,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.manifest = read_onnx_manifest(self.folder)
        self.int8 = int8
        try:
            raw = json.loads((self.folder / PREPROCESS_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.folder}: unreadable {PREPROCESS_FILE} ({exc})") from None
        self.preprocess = PreprocessConfig.from_json(raw)
        try:
            self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
            raise ConfigError(f"{self.folder}: unreadable {TOKENIZER_FILE} ({exc})") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        chosen = list(providers) if providers else ["CPUExecutionProvider"]
        text_file, vision_file = (
            (TEXT_MODEL_INT8, VISION_MODEL_INT8) if int8 else (TEXT_MODEL, VISION_MODEL)
        )
        self._text = self._session(ort, text_file, options, chosen)
        self._vision = self._session(ort, vision_file, options, chosen)
        log.info(
            "loaded ONNX encoder %s from %s (%s)",
            self.manifest.model_id,
            self.folder,
            "int8" if int8 else "fp32",
        )

    def _session(self, ort: Any, name: str, options: Any, providers: list[str]) -> Any:
        path = self.folder / name
        if not path.is_file():
            hint = " (export with --int8)" if ".int8." in name else ""
            raise ConfigError(f"{self.folder} has no {name}{hint}")
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)

    @property
    def model_id(self) -> str:
        """The id of the model the towers were exported from."""
        return self.manifest.model_id

    @property
    def name(self) -> str:
        """The model's name as clients see it: the one exported with it, else its id shown."""
        return self.manifest.name or shown_model_name(self.manifest.model_id) or "clip"

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return self.manifest.dim

    @property
    def fingerprint(self) -> str | None:
        """The weight fingerprint of the torch model the towers were exported from (None for an
        export from before fingerprints). An int8 tower approximates the same weights, so it
        carries the same fingerprint: its queries are meant for the torch model's vectors."""
        return self.manifest.fingerprint

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Encode texts (truncated to the model's maximum length) to ``[n, dim]`` unit vectors."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = [str(t) for t in texts[start : start + batch_size]]
            encodings = self.tokenizer.encode_batch(batch)
            ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {TEXT_INPUTS[0]: ids, TEXT_INPUTS[1]: mask}
            chunks.append(self._text.run([TEXT_OUTPUT], feeds)[0])
        return self._finish(chunks)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode PIL images (converted to RGB) to ``[n, dim]`` unit vectors."""
        chunks = []
        for start in range(0, len(images), batch_size):
            pixels = np.stack(
                [preprocess_image(im, self.preprocess) for im in images[start : start + batch_size]]
            )
            feeds = {VISION_INPUT: np.ascontiguousarray(pixels, dtype=np.float32)}
            chunks.append(self._vision.run([VISION_OUTPUT], feeds)[0])
        return self._finish(chunks)

    def encode_pixels(self, pixel_values: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Encode already preprocessed ``[n, 3, H, W]`` pixels to unit vectors."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise InvalidInputError(f"expected [n, 3, H, W] pixels, got {pixel_values.shape}")
        chunks = []
        for start in range(0, pixel_values.shape[0], batch_size):
            batch = np.ascontiguousarray(pixel_values[start : start + batch_size], dtype=np.float32)
            chunks.append(self._vision.run([VISION_OUTPUT], {VISION_INPUT: batch})[0])
        return self._finish(chunks)

    def _finish(self, chunks: list[np.ndarray]) -> np.ndarray:
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize(np.concatenate(chunks))


def find_export(folder: str | os.PathLike[str]) -> Path:
    """Return the ONNX export in ``folder``: the folder itself or its ``onnx/`` subfolder.

    A training job's model folder keeps the export in ``onnx/``, so either location can be named.
    """
    path = Path(folder)
    for candidate in (path, path / ONNX_SUBDIR):
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    if not path.exists():
        raise NotFoundError(f"ONNX model folder {path} does not exist")
    raise ConfigError(f"{path} holds no ONNX export ({MANIFEST_FILE}): run medsearch export-onnx")


def download_export(url: str, cache_dir: Path, *, int8: bool = False) -> Path:
    """Fetch from an ``s3://`` export (the prefix or its ``onnx/`` subfolder) only the files an
    encoder of the chosen precision needs, once; return the local folder.

    A full export holds both precisions (hundreds of MB for a ViT-B/32), more than a Lambda's
    default /tmp should take; the folder is staged and renamed, so a half download is redone.
    """
    base = url.rstrip("/")
    key = hashlib.sha256(f"{base}|{'int8' if int8 else 'fp32'}".encode()).hexdigest()[:16]
    dest = cache_dir / key
    if (dest / ".complete").exists():
        return dest
    towers = (TEXT_MODEL_INT8, VISION_MODEL_INT8) if int8 else (TEXT_MODEL, VISION_MODEL)
    for root in (base, f"{base}/{ONNX_SUBDIR}"):
        try:
            storage.read_bytes(f"{root}/{MANIFEST_FILE}")
        except StorageError:
            continue
        names = (MANIFEST_FILE, TOKENIZER_FILE, PREPROCESS_FILE, *towers)
        storage.download_prefix(root, dest, names=names)
        log.info("downloaded the %s ONNX encoder from %s", "int8" if int8 else "fp32", root)
        return dest
    raise NotFoundError(f"no ONNX export ({MANIFEST_FILE}) under {url} or {base}/{ONNX_SUBDIR}")


def load_onnx_encoder(
    source: str | os.PathLike[str],
    *,
    int8: bool = False,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> OnnxEncoder:
    """Load an ONNX export from a folder or an ``s3://`` prefix (fetched once into a cache).

    The default cache is under the system temporary folder, the one writable place on Lambda.
    """
    location = str(source)
    if storage.is_s3(location):
        cache = cache_dir or Path(tempfile.gettempdir()) / "medsearch-onnx"
        folder = download_export(location, cache, int8=int8)
    else:
        folder = find_export(Path(location).expanduser())
    return OnnxEncoder(folder, int8=int8, threads=threads)
