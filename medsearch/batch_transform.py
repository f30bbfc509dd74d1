"""Batch transform: JSON Lines of manifest records in, one JSON line of vector (or error) out.

The logic behind ``batch_vectorize/inference.py`` (SageMaker batch transform, ``SplitType=Line``,
``BatchStrategy=MultiRecord``). A request body holds one or more manifest lines, each
``{"image_id", "image": "s3://…"}`` or ``{"image_id", "image_b64": "…"}`` (other keys are ignored,
so a run's manifest can be fed as is). The answer has exactly one line per input line, in the same
order: ``{"image_id", "vector", "model", "fingerprint", "dim"}``, or ``{"image_id", "error"}`` for
a line whose image cannot be read or decoded, so one bad image never fails the batch. Good images
are encoded in batches; vectors are unit length (the encoder normalises). ``fingerprint`` names
the encoder's weights; the loader records it in the index, so the search service can refuse a
model with other weights.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from medsearch import storage
from medsearch.constants import JSONLINES, ONNX_SUBDIR
from medsearch.data.images import DEFAULT_MAX_PIXELS, decode_image, load_image
from medsearch.data.manifest import resolve_image, validate_image_id
from medsearch.errors import (
    ConfigError,
    ImageDecodeError,
    MedsearchError,
    UnsupportedMediaTypeError,
)
from medsearch.vectors import Encoder, encoder_fingerprint

log = logging.getLogger(__name__)

JSONLINES_TYPES = frozenset({JSONLINES, "application/x-jsonlines", "application/jsonl"})
ENCODERS = ("auto", "onnx", "torch")


@dataclass(frozen=True)
class TransformConfig:
    """How the transform runs: encoder choice, batch size, where relative images live."""

    encoder: str = "auto"
    batch_size: int = 32
    image_base: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TransformConfig:
        """Read ``MEDSEARCH_ENCODER``, ``MEDSEARCH_BATCH_SIZE``, ``MEDSEARCH_IMAGE_BASE`` and
        ``MEDSEARCH_MAX_PIXELS`` (the model's environment in the transform job)."""
        encoder = environ.get("MEDSEARCH_ENCODER", "auto").strip().lower()
        if encoder not in ENCODERS:
            raise ConfigError(f"MEDSEARCH_ENCODER={encoder!r}: use one of {', '.join(ENCODERS)}")
        return cls(
            encoder=encoder,
            batch_size=_positive(environ, "MEDSEARCH_BATCH_SIZE", 32),
            image_base=environ.get("MEDSEARCH_IMAGE_BASE") or None,
            max_pixels=_positive(environ, "MEDSEARCH_MAX_PIXELS", DEFAULT_MAX_PIXELS),
        )


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={raw!r}: must be a positive integer")
    return value


@dataclass
class TransformModel:
    """A loaded encoder and the model name and weight fingerprint written into every line."""

    encoder: Encoder
    model_id: str
    config: TransformConfig
    fingerprint: str | None = None


@dataclass(frozen=True)
class InputLine:
    """One parsed input line: an id and an image source, or the reason it cannot be used."""

    image_id: str | None
    image: str | None = None
    image_b64: str | None = None
    error: str | None = None


def load_transform_model(
    model_dir: str | os.PathLike[str], config: TransformConfig
) -> TransformModel:
    """Load the encoder of a training job's model folder (CLIP at the root, ONNX in ``onnx/``).

    ``auto`` picks torch on a GPU and the ONNX encoder on CPU (faster there, no torch needed),
    falling back to whichever the folder holds. The model name is the ONNX export's model id when
    there is one, so vectors carry the same name the search API reports.
    """
    from medsearch.model.onnx_encoder import (
        MANIFEST_FILE,
        find_export,
        load_onnx_encoder,
        read_onnx_manifest,
    )

    folder = Path(model_dir)
    try:
        export: Path | None = find_export(folder)
    except MedsearchError:
        export = None
    has_torch_model = (folder / "config.json").is_file()
    choice = config.encoder
    if choice == "auto":
        choice = "torch" if has_torch_model and (export is None or _cuda_available()) else "onnx"
    if choice == "onnx":
        if export is None:
            raise ConfigError(f"{folder} holds no ONNX export ({ONNX_SUBDIR}/{MANIFEST_FILE})")
        encoder: Encoder = load_onnx_encoder(export)
    else:
        if not has_torch_model:
            raise ConfigError(f"{folder} holds no CLIP model (config.json)")
        from medsearch.model.encoder import load_encoder

        encoder = load_encoder(str(folder))
    model_id = read_onnx_manifest(export).model_id if export is not None else encoder.model_id
    log.info("batch transform encoder: %s (%s, dim %d)", model_id, choice, encoder.dim)
    return TransformModel(encoder, model_id, config, encoder_fingerprint(encoder))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def check_content_type(content_type: str | None) -> None:
    """Accept JSON Lines (parameters such as ``; charset=utf-8`` are ignored)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in JSONLINES_TYPES:
        raise UnsupportedMediaTypeError(
            f"content type {content_type!r} is not supported: send application/jsonlines"
        )


def parse_lines(body: bytes | str) -> list[InputLine]:
    """Parse a request body of JSON Lines; a line that cannot be used becomes an error line."""
    text = body.decode("utf-8-sig", errors="replace") if isinstance(body, bytes) else body
    lines: list[InputLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            lines.append(_parse_line(raw, number))
    return lines


def _parse_line(raw: str, number: int) -> InputLine:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        return InputLine(None, error=f"line {number}: not valid JSON ({exc.msg})")
    if not isinstance(record, dict):
        return InputLine(None, error=f"line {number}: a record must be a JSON object")
    image_id = record.get("image_id")
    try:
        validate_image_id(image_id)
    except MedsearchError as exc:
        return InputLine(image_id if isinstance(image_id, str) else None, error=str(exc))
    inline = record.get("image_b64")
    location = record.get("image")
    if isinstance(inline, str) and inline:
        return InputLine(image_id, image_b64=inline)
    if isinstance(location, str) and location.strip():
        return InputLine(image_id, image=location.strip())
    return InputLine(image_id, error="the record has neither 'image' nor 'image_b64'")


def embed_lines(lines: Sequence[InputLine], model: TransformModel) -> list[dict[str, Any]]:
    """Return one output row per input line, in order: a vector row or an error row."""
    rows: list[dict[str, Any] | None] = [None] * len(lines)
    config = model.config
    for start in range(0, len(lines), config.batch_size):
        pending: list[tuple[int, Image.Image]] = []
        for index in range(start, min(start + config.batch_size, len(lines))):
            line = lines[index]
            if line.error is not None:
                rows[index] = {"image_id": line.image_id, "error": line.error}
                continue
            try:
                pending.append((index, _load(line, config)))
            except MedsearchError as exc:
                log.warning("batch transform: %s skipped: %s", line.image_id, exc)
                rows[index] = {"image_id": line.image_id, "error": str(exc)}
        if pending:
            vectors = model.encoder.encode_images([image for _, image in pending])
            for (index, _), vector in zip(pending, vectors, strict=True):
                rows[index] = {
                    "image_id": lines[index].image_id,
                    "vector": vector.tolist(),
                    "model": model.model_id,
                    "fingerprint": model.fingerprint,
                    "dim": int(vector.shape[0]),
                }
    return [row for row in rows if row is not None]


def _load(line: InputLine, config: TransformConfig) -> Image.Image:
    """Decode a line's image from inline base64 or its (s3:// or local) location."""
    if line.image_b64 is not None:
        try:
            data = base64.b64decode(line.image_b64, validate=True)
        except (binascii.Error, ValueError):
            # A bad record, not a bad setting: the line gets an error row like an undecodable image.
            raise ImageDecodeError(f"{line.image_id}: image_b64 is not valid base64") from None
        return decode_image(data, name=line.image_id, max_pixels=config.max_pixels)
    assert line.image is not None
    location = line.image
    if not storage.is_s3(location) and not os.path.isabs(location):
        if config.image_base is None:
            raise ConfigError(
                f"relative image path {location!r}: use an s3:// URI or set MEDSEARCH_IMAGE_BASE"
            )
        location = resolve_image(location, config.image_base)
    return load_image(location, name=line.image_id, max_pixels=config.max_pixels)


def to_jsonlines(rows: Sequence[Mapping[str, Any]]) -> str:
    """Serialise output rows as JSON Lines, each ending in a newline, so responses concatenate
    into valid JSON Lines whether or not the transform job adds separators (blank lines that
    ``AssembleWith=Line`` may add are skipped by readers)."""
    return "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
