"""Image decoding: JPEG, PNG, TIFF, BMP, GIF, WebP and DICOM, always to 8-bit RGB.

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
  naming the record; so does anything else a file makes a decoder raise (pydicom and Pillow's
  plugins raise ``struct.error``, ``NotImplementedError``, ``IndexError``... on malformed headers),
  so a hostile file is one bad record, never an aborted run or an HTTP 500.
- Only the formats above are opened (:data:`PILLOW_FORMATS`): Pillow's other plugins (EPS runs
  Ghostscript, PSD, FITS...) are no medical input and only widen what a hostile upload can reach.
- **Bounded aspect ratio.** The long side is centre-cropped to :data:`MAX_ASPECT` times the short
  side. Every encoder resizes the short side to its input size keeping the ratio, so a 177-byte
  100000x1 PNG would otherwise become a 6,400,000x64 image (4.6 GB) before the centre crop. Every
  pipeline and every encoder (torch, ONNX, the training processor) decodes here, so this is the one
  place that bounds them all. The crop keeps only the centre anyway: beyond the ratio nothing of an
  encoder's input changes but a sub-pixel offset, and no medical image comes near 20:1.
- Memory: the min-max stretch, the DICOM window and the composite on black work on strips of
  rows into the RGB output, so their float64 and RGBA temporaries stay a few MB whatever the
  image size: the peak is the decoded image (up to 4 bytes a pixel) and the output (3). A 50 MP
  16-bit RGBA PNG, the worst a 10 MB upload holds, peaks 400 MB over the process's size (950 MB
  when composited whole); ``tests/medsearch/data/test_images_memory.py`` holds the bound.
- Files are read through :func:`medsearch.storage.read_bytes`, which reads regular files only
  (not ``/dev/zero``, not a FIFO) and no further than ``max_bytes`` (default
  :data:`DEFAULT_MAX_IMAGE_BYTES`, 320 MB); a file it refuses is a bad record like any other.
- ``draft_size`` (training only; off by default): a JPEG at least twice that size in both
  dimensions is decoded at 1/2, 1/4 or 1/8 scale in the DCT, the largest that keeps it at least
  that size. An 800x600 JPEG decodes to 400x300 in 0.8 ms instead of 2.6 ms in full, and a
  model that resizes to 224 px loses little; other formats ignore it.
"""

from __future__ import annotations

import io
import logging
import math
import re
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
# The largest image file read from a path or an object (see the module docstring): a 50 MP image
# stored uncompressed as 16-bit RGB is 300 MB, every real medical file is far below.
DEFAULT_MAX_IMAGE_BYTES = 320 << 20
ACCEPTED_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "application/dicom"})
# The Pillow plugins a record may open (the JPEG one also opens multi-picture MPO files).
PILLOW_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "GIF", "WEBP")

# Long side at most 20x the short side (see the module docstring). Wide enough that no medical image
# meets it (panoramic dental films are about 2:1, whole-spine and long-leg films 3-4:1, ECG strips
# under 10:1), small enough to bound every encoder's resize buffer to 20 x its input size squared.
MAX_ASPECT = 20.0

# Rows of pixels per block in the float64 stretch and window: about 8 MB of float64 at a time.
_BLOCK_PIXELS = 1 << 20

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
        image = _decode_dicom(data, name, max_pixels)
    else:
        image = _decode_pillow(data, name, max_pixels, draft_size)
    return bound_aspect(image)


def bound_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side to ``max_aspect`` times the short side (no-op within it)."""
    width, height = image.size
    short = min(width, height)
    limit = max(1, math.floor(short * max_aspect))
    if max(width, height) <= limit:
        return image
    if width > height:
        left = (width - limit) // 2
        return image.crop((left, 0, left + limit, height))
    top = (height - limit) // 2
    return image.crop((0, top, width, top + limit))


def load_image(
    location: str,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Image.Image:
    """Read (local path or ``s3://``) and decode an image; errors name ``name`` or the location.

    A file over ``max_bytes``, or no regular file at all, is a ``StorageError`` before decoding.
    """
    data = storage.read_bytes(location, max_bytes=max_bytes)
    return decode_image(data, name=name or location, max_pixels=max_pixels, draft_size=draft_size)


def load_record_images(
    records: Iterable[Record],
    *,
    strict: bool,
    bad: list[BadRecord],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> list[tuple[Record, Image.Image]]:
    """Decode the records' images, skipping unreadable ones into ``bad`` (or raising if strict).

    Every pipeline goes through here, so a bad record is reported the same way everywhere.
    """
    loaded: list[tuple[Record, Image.Image]] = []
    for record in records:
        try:
            image = load_image(
                record.image,
                name=record.image_id,
                max_pixels=max_pixels,
                draft_size=draft_size,
                max_bytes=max_bytes,
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
            image: Image.Image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        except Image.DecompressionBombError as exc:
            # Pillow's message quotes its own limit, not ours: say the size and our limit.
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1)):,} pixels, over" if found else "over"
            raise ImageTooLargeError(
                f"image is {size} the limit of {max_pixels:,} (possible decompression bomb)",
                record=name,
            ) from None
        except UnidentifiedImageError:
            raise ImageDecodeError(
                "not a recognised image (expected JPEG, PNG, TIFF, BMP, GIF, WebP or DICOM)",
                record=name,
            ) from None
        except Exception as exc:  # plugins raise many types on malformed headers (module doc)
            raise ImageDecodeError(
                f"cannot read image header: {_reason(exc)}", record=name
            ) from None
        _check_size(image.width, image.height, 1, name, max_pixels)
        try:
            if draft_size is not None and image.format == "JPEG":
                # Before load(): the scale is chosen while the data is still undecoded.
                image.draft("RGB", draft_size)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"image too large: {_reason(exc)}", record=name) from None
        except Exception as exc:  # as above: any decoder failure is this record's error
            raise ImageDecodeError(
                f"corrupt or truncated image: {_reason(exc)}", record=name
            ) from None


def _reason(exc: BaseException) -> str:
    """An exception as one short line for a record's error (some carry no message at all)."""
    text = " ".join(str(exc).split())[:300]
    return text or type(exc).__name__


def _blocks(array: np.ndarray) -> Iterable[slice]:
    """Slices of the first axis holding about :data:`_BLOCK_PIXELS` values each."""
    row = max(1, math.prod(array.shape[1:]))
    step = max(1, _BLOCK_PIXELS // row)
    return (slice(start, start + step) for start in range(0, max(array.shape[0], 1), step))


def _stretch(array: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric array to uint8 (a constant image becomes black).

    Block by block, so the float64 arithmetic never holds a copy of the whole image.
    """
    if array.ndim == 0 or array.size == 0:
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = float(np.min(array)), float(np.max(array))
    out = np.zeros(array.shape, dtype=np.uint8)
    if not _stretchable(low, high):
        return out
    for block in _blocks(array):
        out[block] = _scale(array[block], low, high)
    return out


def _stretchable(low: float, high: float) -> bool:
    """Whether a range can be stretched (not constant, not NaN, not infinite)."""
    return high > low and math.isfinite(high - low)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` to ``0..255`` in float64, rounded (one block of an image)."""
    scaled = (values.astype(np.float64) - low) / (high - low) * 255.0
    return np.round(scaled).astype(np.uint8)


def _stretch_to_rgb(image: Image.Image) -> Image.Image:
    """:func:`_stretch` for a 16/32-bit integer or float Pillow image, straight to RGB.

    The range comes from Pillow (``getextrema``) and the pixels go through numpy a strip at a
    time: ``np.asarray`` of the whole image would copy it (200 MB for 50 MP of float32).
    """
    extrema: Any = image.getextrema()  # (min, max) for a one-band image
    low, high = float(extrema[0]), float(extrema[1])
    out = Image.new("RGB", image.size)
    if not _stretchable(low, high):
        return out
    width, height = image.size
    rows = max(1, _BLOCK_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        strip = np.asarray(image.crop((0, top, width, min(height, top + rows))))
        out.paste(Image.fromarray(_scale(strip, low, high)).convert("RGB"), (0, top))
    return out


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB (see the module docstring for the choices)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy() if image.readonly else image
    if mode in {"I", "F"} or mode.startswith("I;"):
        return _stretch_to_rgb(image)
    transparent = mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (
        mode == "P" and "transparency" in image.info
    )
    if not transparent:
        return image.convert("RGB")
    # Composited strip by strip into the output: whole, the RGBA copy, the black background and
    # the composite would each be 4 bytes a pixel (950 MB for 50 MP, beside the decoded image).
    width, height = image.size
    out = Image.new("RGB", image.size)
    rows = max(1, _BLOCK_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows))).convert("RGBA")
        background = Image.new("RGBA", strip.size, (0, 0, 0, 255))
        out.paste(Image.alpha_composite(background, strip).convert("RGB"), (0, top))
    return out


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

    # pydicom parses lazily: a malformed element raises (NotImplementedError for an unknown VR,
    # BytesLengthException, struct.error, ValueError, TypeError for a multi-valued Rows...) when
    # it is first read, so the header and the pixels are read in the same guard as the file.
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        has_pixels = "PixelData" in dataset
        if has_pixels:
            rows = _count(dataset.get("Rows", 0))
            columns = _count(dataset.get("Columns", 0))
            frames = _count(dataset.get("NumberOfFrames", 1)) or 1
            samples = _count(dataset.get("SamplesPerPixel", 1)) or 1
            photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
            slope = _first(dataset.get("RescaleSlope"))
            intercept = _first(dataset.get("RescaleIntercept"))
            centre = _first(dataset.get("WindowCenter"))
            width = _first(dataset.get("WindowWidth"))
    except ImageDecodeError:
        raise
    except Exception as exc:  # see above: any parse failure is this record's error
        raise ImageDecodeError(f"unreadable DICOM file: {_reason(exc)}", record=name) from None
    if not has_pixels:
        raise ImageDecodeError("DICOM file has no pixel data", record=name)
    if rows < 1 or columns < 1:
        raise ImageDecodeError("DICOM file has no image size (Rows/Columns)", record=name)
    _check_size(columns, rows, frames, name, max_pixels)
    try:
        pixels = np.asarray(dataset.pixel_array)
    except Exception as exc:  # pydicom raises many types for truncated or unsupported data
        raise ImageDecodeError(
            f"cannot decode DICOM pixel data: {_reason(exc)}", record=name
        ) from None
    if frames > 1 and pixels.ndim > 2:
        pixels = pixels[0]
    if samples == 3 and pixels.ndim == 3 and pixels.shape[-1] == 3:
        rgb = pixels if pixels.dtype == np.uint8 else _stretch(pixels)
        return Image.fromarray(np.ascontiguousarray(rgb))
    if pixels.ndim != 2 or not np.issubdtype(pixels.dtype, np.number):
        raise ImageDecodeError(f"unexpected DICOM pixel shape {pixels.shape}", record=name)
    if centre is not None and width is not None and width >= 1:
        gray = _window(pixels, slope, intercept, centre, width)
    else:
        gray = _stretch(_rescale(pixels, slope, intercept))
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray).convert("RGB")


def _count(value: Any) -> int:
    """A DICOM size element (Rows, Columns, NumberOfFrames...) as an int; malformed raises."""
    if value is None or value == "":
        return 0
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        raise ValueError(f"expected one value, got {len(value)}")
    number = int(value)
    if number < 0:
        raise ValueError(f"negative size {number}")
    return number


def _rescale(pixels: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    """The modality rescale (slope/intercept); the stored values where there is none."""
    if slope is None and intercept is None:
        return pixels
    out = np.empty(pixels.shape, dtype=np.float64)
    for block in _blocks(pixels):
        out[block] = pixels[block].astype(np.float64) * (1.0 if slope is None else slope) + (
            0.0 if intercept is None else intercept
        )
    return out


def _window(
    pixels: np.ndarray, slope: float | None, intercept: float | None, centre: float, width: float
) -> np.ndarray:
    """Rescale, then DICOM PS3.3 C.11.2.1.2.1, the linear VOI function, block by block."""
    gray = np.empty(pixels.shape, dtype=np.uint8)
    for block in _blocks(pixels):
        values = pixels[block].astype(np.float64)
        values = values * (1.0 if slope is None else slope) + (
            0.0 if intercept is None else intercept
        )
        scaled = ((values - (centre - 0.5)) / max(width - 1.0, 1.0) + 0.5).clip(0.0, 1.0)
        gray[block] = np.round(scaled * 255.0).astype(np.uint8)
    return gray
