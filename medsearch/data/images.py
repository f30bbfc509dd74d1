"""Image decoding: JPEG, PNG (and whatever else Pillow reads) and DICOM, always to 8-bit RGB.

One decoder for every pipeline (train, evaluate, vectorize) and for uploads, so a model sees the
same pixels in training and in serving:

- EXIF orientation is applied; palette, grayscale, CMYK and 16-bit images become RGB. 16-bit and
  float grayscale images are stretched min-max (medical 16-bit PNGs rarely use the full range, so
  dividing by 65535 would leave them nearly black).
- Transparent images are composited on black: medical images have a black background (air), so
  transparent padding then looks like background, not like a bright frame the model would read as
  anatomy or a collimator edge.
- DICOM goes through pydicom: modality rescale (slope/intercept), then the first window
  centre/width when present (the DICOM linear VOI function), else min-max; MONOCHROME1 is
  inverted so bone is bright as in MONOCHROME2. Multi-frame files give their first frame.
- The decompression-bomb limit (``max_pixels``, default 50 MP) is checked from the header before
  any pixel is decoded. Empty, truncated and non-image files raise :class:`ImageDecodeError`
  naming the record.
- ``draft_size`` (training only; off by default): a JPEG at least twice that size in both
  dimensions is decoded at 1/2, 1/4 or 1/8 scale in the DCT, the largest that keeps it at least
  that size. An 800x600 JPEG decodes to 400x300 in 0.8 ms instead of 2.6 ms in full, and a
  model that resizes to 224 px loses little; other formats ignore it.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medsearch import storage
from medsearch.data.manifest import BadRecord, Record
from medsearch.errors import ImageDecodeError, ImageTooLargeError, StorageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
ACCEPTED_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "application/dicom"})

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_MAGIC_OFFSET = 128  # a 128-byte preamble, then "DICM"


def sniff_media_type(data: bytes) -> str | None:
    """Return the media type from the magic bytes (JPEG, PNG, DICOM), or ``None`` if unknown."""
    if data.startswith(_JPEG_MAGIC):
        return "image/jpeg"
    if data.startswith(_PNG_MAGIC):
        return "image/png"
    if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "application/dicom"
    return None


def decode_image(
    data: bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode image bytes to RGB; raise ``ImageDecodeError`` naming ``name`` when unusable.

    ``draft_size`` (width, height) lets a large JPEG decode at a reduced scale (module docstring).
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)", record=name)
    if sniff_media_type(data) == "application/dicom":
        return _decode_dicom(data, name, max_pixels)
    return _decode_pillow(data, name, max_pixels, draft_size)


def load_image(
    location: str,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Read (local path or ``s3://``) and decode an image; errors name ``name`` or the location."""
    data = storage.read_bytes(location)
    return decode_image(data, name=name or location, max_pixels=max_pixels, draft_size=draft_size)


def load_record_images(
    records: Iterable[Record],
    *,
    strict: bool,
    bad: list[BadRecord],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> list[tuple[Record, Image.Image]]:
    """Decode the records' images, skipping unreadable ones into ``bad`` (or raising if strict).

    Every pipeline goes through here, so a bad record is reported the same way everywhere.
    """
    loaded: list[tuple[Record, Image.Image]] = []
    for record in records:
        try:
            image = load_image(
                record.image, name=record.image_id, max_pixels=max_pixels, draft_size=draft_size
            )
        except ImageDecodeError as exc:
            if strict:
                raise
            reason = str(exc).removeprefix(f"{record.image_id}: ")
        except StorageError as exc:
            if strict:
                raise StorageError(f"{record.image_id}: {exc}") from exc
            reason = str(exc)
        else:
            loaded.append((record, image))
            continue
        log.warning("skipping %s: %s", record.image_id, reason)
        bad.append(BadRecord(record.image_id, reason))
    return loaded


# --- Pillow --------------------------------------------------------------------------------------


def _check_size(width: int, height: int, frames: int, name: str | None, max_pixels: int) -> None:
    pixels = width * height * frames
    if pixels > max_pixels:
        shape = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
        raise ImageTooLargeError(
            f"image is {shape} = {pixels:,} pixels, over the limit of {max_pixels:,} "
            "(possible decompression bomb)",
            record=name,
        )


def _decode_pillow(
    data: bytes, name: str | None, max_pixels: int, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    # Our own limit is checked from the header; Pillow's global bomb check is only a backstop,
    # so its warning is silenced and its error mapped to ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image: Image.Image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"image too large: {exc}", record=name) from None
        except UnidentifiedImageError:
            raise ImageDecodeError(
                "not a recognised image (expected JPEG, PNG or DICOM)", record=name
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageDecodeError(f"cannot read image header: {exc}", record=name) from None
        _check_size(image.width, image.height, 1, name, max_pixels)
        try:
            if draft_size is not None and image.format == "JPEG":
                # Before load(): the scale is chosen while the data is still undecoded.
                image.draft("RGB", draft_size)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError(f"corrupt or truncated image: {exc}", record=name) from None


def _stretch(array: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric array to uint8 (a constant image becomes black)."""
    values = array.astype(np.float64)
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB (see the module docstring for the choices)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy() if image.readonly else image
    if mode in {"I", "F"} or mode.startswith("I;"):
        return Image.fromarray(_stretch(np.asarray(image))).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# --- DICOM -------------------------------------------------------------------------------------


def _first(value: Any) -> float | None:
    """Return the first number of a (possibly multi-valued) DICOM element, or ``None``."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _decode_dicom(data: bytes, name: str | None, max_pixels: int) -> Image.Image:
    import pydicom  # only where DICOM is actually met
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise ImageDecodeError(f"unreadable DICOM file: {exc}", record=name) from None
    if "PixelData" not in dataset:
        raise ImageDecodeError("DICOM file has no pixel data", record=name)
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if rows < 1 or columns < 1:
        raise ImageDecodeError("DICOM file has no image size (Rows/Columns)", record=name)
    _check_size(columns, rows, frames, name, max_pixels)
    try:
        pixels = np.asarray(dataset.pixel_array)
    except Exception as exc:  # pydicom raises many types for truncated or unsupported data
        raise ImageDecodeError(f"cannot decode DICOM pixel data: {exc}", record=name) from None
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if samples == 3:
        rgb = pixels if pixels.dtype == np.uint8 else _stretch(pixels)
        return Image.fromarray(np.ascontiguousarray(rgb))
    if pixels.ndim != 2:
        raise ImageDecodeError(f"unexpected DICOM pixel shape {pixels.shape}", record=name)
    values = pixels.astype(np.float64)
    slope = _first(dataset.get("RescaleSlope"))
    intercept = _first(dataset.get("RescaleIntercept"))
    values = values * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    centre = _first(dataset.get("WindowCenter"))
    width = _first(dataset.get("WindowWidth"))
    if centre is not None and width is not None and width >= 1:
        # DICOM PS3.3 C.11.2.1.2.1, the linear VOI function.
        scaled = ((values - (centre - 0.5)) / max(width - 1.0, 1.0) + 0.5).clip(0.0, 1.0)
        gray = np.round(scaled * 255.0).astype(np.uint8)
    else:
        gray = _stretch(values)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray).convert("RGB")
