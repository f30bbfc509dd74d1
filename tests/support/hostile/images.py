"""Image files a decoder, an upload or an ingestion may meet, built here, each with its outcome.

:data:`CASES` are files' bytes, each with a name, a builder and what
:func:`medsearch.data.images.decode_image` must do with them: decode to a given size, or raise a
given error class whose message holds a given fragment; :func:`upload_status` says what
``POST /search/image`` answers for the same bytes. :data:`FILE_CASES` are locations that are no
file to read whole (``/dev/zero``, a FIFO, a directory, a file over the size ceiling), for the
readers. The fuzzers under ``tests/fuzz/`` seed from these cases; a crash a fuzzer finds becomes
one here.

Built at test time, not committed: a few KB in all, and each builder says how its file is hostile.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medsearch.data.images import ACCEPTED_MEDIA_TYPES, sniff_media_type
from medsearch.errors import ImageDecodeError, ImageTooLargeError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageCase:
    """One file and its expected outcome: ``size`` (width, height) when it decodes, else
    ``error`` (the class ``decode_image`` raises) and ``message`` (a fragment of its text)."""

    name: str
    build: Callable[[], bytes] = field(repr=False)
    size: tuple[int, int] | None = None
    error: type[ImageDecodeError] | None = None
    message: str = ""

    @property
    def data(self) -> bytes:
        """The case's bytes (built once per process)."""
        return _built(self.build)


@functools.cache
def _built(build: Callable[[], bytes]) -> bytes:
    return build()


def upload_status(case: ImageCase) -> int:
    """The HTTP status of ``POST /search/image`` with the case's bytes as the file."""
    if not case.data:
        return 422
    if sniff_media_type(case.data) not in ACCEPTED_MEDIA_TYPES:
        return 415
    return 200 if case.error is None else 422


# --- builders ------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """``image`` saved by Pillow in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(tag: bytes, body: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    crc = zlib.crc32(tag + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)


def png_raw(
    width: int,
    height: int,
    *,
    rows: bytes | None = None,
    depth: int = 8,
    colour: int = 0,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A PNG written chunk by chunk: any header, ``extra`` chunks (a palette, a transparency)
    before the data, and ``rows`` as the (unchecked) pixel data.

    Without ``rows``, the data is a zero row per line, compressed: a few hundred bytes for a
    100000x1 strip or a decompression bomb, a few hundred KB for a real 50 MP image.
    """
    if rows is None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
        row = b"\x00" + b"\x00" * ((width * channels * depth + 7) // 8)
        compressor = zlib.compressobj(6)
        # Row by row, so a bomb's pixels never exist here either.
        parts = [compressor.compress(row) for _ in range(height)]
        rows = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + b"".join(png_chunk(tag, body) for tag, body in extra)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def dicom_rle(rows: int, columns: int) -> bytes:
    """A DICOM file in RLE Lossless of ``rows`` x ``columns`` 16-bit zeros: 100 MB of pixels in
    1.6 MB at 50 MP (pydicom decodes RLE itself, so an upload may carry one)."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless, SecondaryCaptureImageStorage

    # One PackBits segment per byte plane: runs of 128 zeros (0x81 = repeat the next byte 128x).
    count = rows * columns
    segment = b"\x81\x00" * (count // 128)
    if count % 128:
        segment += bytes([257 - count % 128, 0]) if count % 128 > 1 else b"\x00\x00"
    segment += b"\x00" * (len(segment) % 2)
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.5"
    meta.TransferSyntaxUID = RLELossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def ramp(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth gradient (so lossy codecs keep their size and a bad crop shows)."""
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    gray = ((x + y) / 2).astype(np.uint8)
    return Image.fromarray(np.stack([gray, 255 - gray, gray // 2], axis=-1)).convert(mode)


def dicom(
    rows: int = 4,
    columns: int = 4,
    *,
    frames: int | None = None,
    pixels: bytes | None = None,
    with_pixels: bool = True,
) -> bytes:
    """A valid DICOM file (explicit VR little endian, unsigned 16-bit, MONOCHROME2)."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"  # fixed: the bytes are the same every run
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if with_pixels:
        if pixels is None:
            count = rows * columns * (frames or 1)
            pixels = (np.arange(count, dtype=np.uint32) % 4096).astype("<u2").tobytes()
        ds.PixelData = pixels
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _element(data: bytes, tag: tuple[int, int], vr: bytes) -> int:
    """The offset of an explicit-VR element header (tag, VR) in ``data``."""
    needle = struct.pack("<HH", *tag) + vr
    offset = data.find(needle, 132)
    if offset < 0:
        raise AssertionError(f"element {tag} {vr!r} not in the file")
    return offset


def dicom_patched(patch: Callable[[bytes], bytes], **kwargs: object) -> Callable[[], bytes]:
    """A builder of :func:`dicom`'s file with ``patch`` applied to its bytes."""

    def build() -> bytes:
        return patch(dicom(**kwargs))  # type: ignore[arg-type]

    build.__qualname__ = f"dicom_patched({patch.__name__})"
    return build


def _rows_bad_vr(data: bytes) -> bytes:
    at = _element(data, (0x0028, 0x0010), b"US")
    return data[: at + 4] + b"ZZ" + data[at + 6 :]


def _rows_two_values(data: bytes) -> bytes:
    at = _element(data, (0x0028, 0x0010), b"US")
    return data[: at + 6] + struct.pack("<HHH", 4, 4, 4) + data[at + 10 :]


def _rows_odd_length(data: bytes) -> bytes:
    at = _element(data, (0x0028, 0x0010), b"US")
    return data[: at + 6] + struct.pack("<H", 3) + b"\x04\x00\x00" + data[at + 10 :]


def _frames_not_a_number(data: bytes) -> bytes:
    at = _element(data, (0x0028, 0x0008), b"IS")
    length = struct.unpack("<H", data[at + 6 : at + 8])[0]
    return data[: at + 6] + struct.pack("<H", 4) + b"abcd" + data[at + 8 + length :]


def _frames_negative(data: bytes) -> bytes:
    at = _element(data, (0x0028, 0x0008), b"IS")
    length = struct.unpack("<H", data[at + 6 : at + 8])[0]
    return data[: at + 6] + struct.pack("<H", 2) + b"-3" + data[at + 8 + length :]


def _meta_cut_in_a_length(data: bytes) -> bytes:
    # Inside the 4-byte length of FileMetaInformationVersion (OB): pydicom's struct.unpack fails.
    at = _element(data, (0x0002, 0x0001), b"OB")
    return data[: at + 10]


def _meta_unknown_vr(data: bytes) -> bytes:
    at = _element(data, (0x0002, 0x0010), b"UI")
    return data[: at + 4] + b"U\xff" + data[at + 6 :]


def _meta_length_huge(data: bytes) -> bytes:
    at = _element(data, (0x0002, 0x0001), b"OB")
    return data[: at + 8] + struct.pack("<I", 0xFFFFFFF0) + data[at + 12 :]


def _meta_group_length_wrong(data: bytes) -> bytes:
    at = _element(data, (0x0002, 0x0000), b"UL")
    return data[: at + 8] + struct.pack("<I", 3) + data[at + 12 :]


def _pixels_cut(data: bytes) -> bytes:
    return data[:-5]


def _eps() -> bytes:
    # Pillow's EPS plugin would run Ghostscript on it: the decoder must not open the format.
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"


# --- the cases -----------------------------------------------------------------------------------

MB = 1 << 20

CASES: tuple[ImageCase, ...] = (
    # Formats that decode.
    ImageCase("png-rgb", lambda: encode(ramp(30, 20), "PNG"), size=(30, 20)),
    ImageCase("jpeg-rgb", lambda: encode(ramp(40, 24), "JPEG", quality=90), size=(40, 24)),
    ImageCase("png-16bit", lambda: encode(ramp(16, 16, "I;16"), "PNG"), size=(16, 16)),
    ImageCase("png-rgba", lambda: encode(ramp(12, 10, "RGBA"), "PNG"), size=(12, 10)),
    ImageCase("png-palette", lambda: encode(ramp(9, 7, "P"), "PNG"), size=(9, 7)),
    ImageCase("gif", lambda: encode(ramp(11, 5, "P"), "GIF"), size=(11, 5)),
    ImageCase("tiff", lambda: encode(ramp(8, 6), "TIFF"), size=(8, 6)),
    ImageCase("webp", lambda: encode(ramp(10, 10), "WEBP", lossless=True), size=(10, 10)),
    ImageCase("bmp", lambda: encode(ramp(5, 3), "BMP"), size=(5, 3)),
    ImageCase("dicom", dicom, size=(4, 4)),
    ImageCase("dicom-multiframe", lambda: dicom(3, 5, frames=2), size=(5, 3)),
    ImageCase("png-19-to-1", lambda: encode(ramp(190, 10), "PNG"), size=(190, 10)),
    # Extreme aspect ratios: a few hundred bytes, centre-cropped to 20:1 before any encoder.
    ImageCase("png-100000x1", lambda: png_raw(100_000, 1), size=(20, 1)),
    ImageCase("png-200000x1", lambda: png_raw(200_000, 1), size=(20, 1)),
    ImageCase("png-1x100000", lambda: png_raw(1, 100_000), size=(1, 20)),
    ImageCase("png-30000x3", lambda: png_raw(30_000, 3), size=(60, 3)),
    ImageCase("dicom-1x50000", lambda: dicom(1, 50_000), size=(20, 1)),
    # Decompression bombs: refused from the header.
    ImageCase(
        "png-bomb-64mp",
        lambda: png_raw(8000, 8000, rows=zlib.compress(b"\x00" * 64)),
        error=ImageTooLargeError,
        message="decompression bomb",
    ),
    ImageCase(
        "png-bomb-10gp",
        lambda: png_raw(100_000, 100_000, rows=zlib.compress(b"\x00" * 64)),
        error=ImageTooLargeError,
        message="decompression bomb",
    ),
    ImageCase(
        "dicom-bomb-frames",
        lambda: dicom(4, 4, frames=4_000_000, pixels=b"\0\0" * 16),
        error=ImageTooLargeError,
        message="decompression bomb",
    ),
    # Not images, or not whole ones.
    ImageCase("empty", lambda: b"", error=ImageDecodeError, message="empty file"),
    ImageCase("text", lambda: b"hello, world\n", error=ImageDecodeError, message="not a recog"),
    ImageCase("eps", _eps, error=ImageDecodeError, message="not a recognised image"),
    ImageCase("png-signature-only", lambda: PNG_SIGNATURE, error=ImageDecodeError),
    ImageCase(
        "png-truncated",
        lambda: encode(ramp(64, 64), "PNG")[:300],
        error=ImageDecodeError,
        message="corrupt or truncated",
    ),
    ImageCase(
        "jpeg-truncated",
        lambda: encode(ramp(64, 64), "JPEG")[:-200],
        error=ImageDecodeError,
        message="corrupt or truncated",
    ),
    ImageCase(
        "png-bad-depth",
        lambda: png_raw(4, 4, depth=7),
        error=ImageDecodeError,
        message="not a recognised image",
    ),
    ImageCase("jpeg-magic-only", lambda: b"\xff\xd8\xff" + b"\x00" * 16, error=ImageDecodeError),
    # Malformed DICOM: every one a decode error, never pydicom's own exception.
    ImageCase(
        "dicom-no-pixels",
        lambda: dicom(with_pixels=False),
        error=ImageDecodeError,
        message="no pixel data",
    ),
    ImageCase(
        "dicom-pixels-cut",
        dicom_patched(_pixels_cut),
        error=ImageDecodeError,
        message="DICOM",
    ),
    ImageCase(
        "dicom-rows-bad-vr",
        dicom_patched(_rows_bad_vr),
        error=ImageDecodeError,
        message="unreadable DICOM",
    ),
    ImageCase(
        "dicom-rows-two-values",
        dicom_patched(_rows_two_values),
        error=ImageDecodeError,
        message="unreadable DICOM",
    ),
    ImageCase(
        "dicom-rows-odd-length",
        dicom_patched(_rows_odd_length),
        error=ImageDecodeError,
        message="unreadable DICOM",
    ),
    ImageCase(
        "dicom-frames-abcd",
        dicom_patched(_frames_not_a_number, frames=1),
        error=ImageDecodeError,
        message="unreadable DICOM",
    ),
    ImageCase(
        "dicom-frames-negative",
        dicom_patched(_frames_negative, frames=1),
        error=ImageDecodeError,
        message="unreadable DICOM",
    ),
    ImageCase(
        "dicom-meta-cut-in-length",
        dicom_patched(_meta_cut_in_a_length),
        error=ImageDecodeError,
        message="unreadable DICOM",
    ),
    ImageCase(
        "dicom-meta-unknown-vr",
        dicom_patched(_meta_unknown_vr),
        error=ImageDecodeError,
        message="unreadable DICOM",
    ),
    ImageCase("dicom-meta-length-huge", dicom_patched(_meta_length_huge), error=ImageDecodeError),
    ImageCase(
        "dicom-meta-group-length-wrong", dicom_patched(_meta_group_length_wrong), size=(4, 4)
    ),
    ImageCase(
        "dicom-preamble-only",
        lambda: b"\x00" * 128 + b"DICM",
        error=ImageDecodeError,
        message="DICOM",
    ),
)


# The largest images an upload of at most 10 MB can hold: just under the 50 MP limit, in the
# modes that cost the decoder most memory a pixel. Slow to build (a second or so each), so apart
# from CASES: the memory-bound test decodes them in fresh processes.
SIDE_50MP = 7071  # 7071 x 7071 = 49,999,041 pixels


def _big(image_mode: str, fmt: str, **params: object) -> Callable[[], bytes]:
    def build() -> bytes:
        return encode(Image.new(image_mode, (SIDE_50MP, SIDE_50MP)), fmt, **params)

    return build


LARGE_CASES: tuple[ImageCase, ...] = (
    ImageCase(
        "png-50mp-rgba16",
        lambda: png_raw(SIDE_50MP, SIDE_50MP, depth=16, colour=6),
        size=(SIDE_50MP, SIDE_50MP),
    ),
    ImageCase(
        "png-50mp-gray-alpha16",
        lambda: png_raw(SIDE_50MP, SIDE_50MP, depth=16, colour=4),
        size=(SIDE_50MP, SIDE_50MP),
    ),
    ImageCase(
        "png-50mp-palette-transparent",
        lambda: png_raw(
            SIDE_50MP,
            SIDE_50MP,
            colour=3,
            extra=((b"PLTE", b"\x00\x00\x00\xff\xff\xff"), (b"tRNS", b"\x00")),
        ),
        size=(SIDE_50MP, SIDE_50MP),
    ),
    ImageCase(
        "png-50mp-rgb16",
        lambda: png_raw(SIDE_50MP, SIDE_50MP, depth=16, colour=2),
        size=(SIDE_50MP, SIDE_50MP),
    ),
    ImageCase(
        "png-50mp-gray16",
        lambda: png_raw(SIDE_50MP, SIDE_50MP, depth=16, colour=0),
        size=(SIDE_50MP, SIDE_50MP),
    ),
    ImageCase("png-50mp-strip", lambda: png_raw(100_000, 499, colour=2), size=(9980, 499)),
    ImageCase("jpeg-50mp-cmyk", _big("CMYK", "JPEG", quality=10), size=(SIDE_50MP, SIDE_50MP)),
    ImageCase(
        "dicom-50mp-rle", lambda: dicom_rle(SIDE_50MP, SIDE_50MP), size=(SIDE_50MP, SIDE_50MP)
    ),
    # Not an upload type, but vectorize decodes it: 32-bit float pixels, deflated.
    ImageCase(
        "tiff-50mp-float",
        _big("F", "TIFF", compression="tiff_adobe_deflate"),
        size=(SIDE_50MP, SIDE_50MP),
    ),
)


@dataclass(frozen=True)
class FileCase:
    """A location an ingestion may be pointed at that is no image file to read whole: ``make``
    creates it under a folder and returns its path; reading it is a ``StorageError`` whose
    message holds ``message``, and in a run it is one bad record."""

    name: str
    make: Callable[[Path], str] = field(repr=False)
    message: str


def _fifo(folder: Path) -> str:
    # Opened for reading without the guard, a FIFO blocks until a writer comes: forever.
    path = folder / "fifo.png"
    os.mkfifo(path)
    return str(path)


def _directory(folder: Path) -> str:
    (folder / "dir.png").mkdir()
    return str(folder / "dir.png")


def _link_to_dev_zero(folder: Path) -> str:
    (folder / "zero.png").symlink_to("/dev/zero")
    return str(folder / "zero.png")


def _over_ceiling(folder: Path) -> str:
    # Sparse: a size over the image ceiling that takes no disk space.
    from medsearch.data.images import DEFAULT_MAX_IMAGE_BYTES

    path = folder / "huge.png"
    with path.open("wb") as handle:
        handle.write(PNG_SIGNATURE)
        handle.truncate(DEFAULT_MAX_IMAGE_BYTES + 1)
    return str(path)


FILE_CASES: tuple[FileCase, ...] = (
    # Read whole without the guard, /dev/zero fills memory until a MemoryError.
    FileCase("dev-zero", lambda folder: "/dev/zero", message="not a regular file"),
    FileCase("link-to-dev-zero", _link_to_dev_zero, message="not a regular file"),
    FileCase("fifo", _fifo, message="not a regular file (a FIFO)"),
    FileCase("directory", _directory, message="not a regular file (a directory)"),
    FileCase("over-ceiling", _over_ceiling, message="over the limit"),
    FileCase("missing", lambda folder: str(folder / "missing.png"), message="No such file"),
)


def cases() -> Iterator[ImageCase]:
    """Every case, in a stable order (names are unique)."""
    yield from CASES


def by_name(name: str) -> ImageCase:
    """The case called ``name``."""
    return next(case for case in CASES if case.name == name)
