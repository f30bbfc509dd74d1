"""Image decoding: every format and every bad-input case, with files generated in the test."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsearch import storage
from medsearch.data import images
from medsearch.data.images import (
    ACCEPTED_MEDIA_TYPES,
    DEFAULT_MAX_PIXELS,
    decode_image,
    load_image,
    load_record_images,
    sniff_media_type,
)
from medsearch.data.manifest import BadRecord, Record
from medsearch.errors import ImageDecodeError, ImageTooLargeError, StorageError


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width×height`` but whose pixel data is junk: a bomb header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    centre: object = None,
    width: object = None,
    slope: float | None = None,
    intercept: float | None = None,
) -> bytes:
    """A DICOM file written with pydicom (explicit VR little endian, unsigned 16-bit)."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if centre is not None:
        ds.WindowCenter = centre
        ds.WindowWidth = width
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype("<u2").tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


RAMP = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)


# --- formats -------------------------------------------------------------------------------------


def test_given_rgb_jpeg_when_decoded_then_rgb_of_same_size() -> None:
    data = encode(Image.new("RGB", (30, 20), (200, 10, 10)), "JPEG")
    image = decode_image(data)
    assert (image.mode, image.size) == ("RGB", (30, 20))
    assert image.getpixel((5, 5))[0] > 150


def test_given_grayscale_png_when_decoded_then_rgb_with_equal_channels() -> None:
    image = decode_image(encode(Image.new("L", (8, 8), 77), "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (77, 77, 77)


def test_given_16bit_png_when_decoded_then_stretched_min_max_to_8bit() -> None:
    # Given a 16-bit grayscale PNG using only a 12-bit range (typical of medical exports)
    source = Image.fromarray(np.array([[0, 2048], [4095, 4095]], dtype=np.uint16))
    data = encode(source, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    # When decoded
    image = decode_image(data)
    # Then the range fills 0..255 rather than staying near black
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((0, 1)) == (255, 255, 255)
    assert 120 < image.getpixel((1, 0))[0] < 135


def test_given_rgba_png_when_decoded_then_transparency_composited_on_black() -> None:
    source = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    source.putpixel((0, 0), (255, 255, 255, 255))
    image = decode_image(encode(source, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((3, 3)) == (0, 0, 0)


def test_given_gray_alpha_png_when_decoded_then_rgb() -> None:
    source = Image.new("LA", (4, 4), (200, 128))
    image = decode_image(encode(source, "PNG"))
    assert image.mode == "RGB"
    assert 95 <= image.getpixel((1, 1))[0] <= 105  # half-transparent 200 over black


def test_given_palette_png_when_decoded_then_rgb_colours_kept() -> None:
    source = Image.new("RGB", (6, 6), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert source.mode == "P"
    image = decode_image(encode(source, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == (0, 0, 255)


def test_given_palette_png_with_transparency_when_decoded_then_transparent_is_black() -> None:
    source = Image.new("P", (4, 4), 1)
    source.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    source.putpixel((0, 0), 0)
    data = encode(source, "PNG", transparency=1)
    image = decode_image(data)
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((3, 3)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P-transparent", "I;16", "I", "F"])
def test_given_an_image_decoded_in_many_strips_then_pixels_equal_the_whole_image_conversion(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a random image, and strips of 3 rows (the decoder's strips bound its memory)
    rng = np.random.default_rng(7)
    height, width = 31, 17
    monkeypatch.setattr(images, "_BLOCK_PIXELS", 3 * width)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    if mode == "P-transparent":
        source = Image.fromarray(rgba[..., :3]).quantize(32)
        source.info["transparency"] = bytes(range(0, 256, 8))
    elif mode in ("RGBA", "LA"):
        source = Image.fromarray(rgba).convert(mode)
    else:
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        source = Image.fromarray(rng.normal(3000, 900, (height, width)).astype(dtype))
        assert source.mode == mode
    # When it is converted to RGB, Then every pixel is what the whole-image conversion gives
    if mode in ("I;16", "I", "F"):
        values = np.asarray(source).astype(np.float64)
        low, high = values.min(), values.max()
        gray = np.round((values - low) / (high - low) * 255.0).astype(np.uint8)
        expected = np.asarray(Image.fromarray(gray).convert("RGB"))
    else:
        whole = source.convert("RGBA")
        black = Image.new("RGBA", whole.size, (0, 0, 0, 255))
        expected = np.asarray(Image.alpha_composite(black, whole).convert("RGB"))
    assert np.array_equal(np.asarray(images._to_rgb(source)), expected)


def test_given_cmyk_jpeg_when_decoded_then_rgb_colour_is_right() -> None:
    # Given a CMYK JPEG of pure cyan
    data = encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    # When decoded, then RGB cyan: no red, full green and blue
    r, g, b = decode_image(data).getpixel((8, 8))
    assert r < 40 and g > 215 and b > 215


def test_given_exif_rotated_jpeg_when_decoded_then_orientation_applied() -> None:
    # Given a 40x20 landscape JPEG whose EXIF says "rotate 90° clockwise to display" (6),
    # with a red left half
    source = Image.new("RGB", (40, 20), (255, 255, 255))
    source.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(source, "JPEG", exif=exif.tobytes(), quality=95)
    # When decoded
    image = decode_image(data)
    # Then it is portrait and the red half is now on top
    assert image.size == (20, 40)
    assert image.getpixel((10, 5))[1] < 60
    assert image.getpixel((10, 35))[1] > 200


# --- DICOM ---------------------------------------------------------------------------------------


def test_given_dicom_without_window_when_decoded_then_min_max() -> None:
    image = decode_image(dicom_bytes(RAMP))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((0, 1))[0] == round(2000 / 4000 * 255)


def test_given_dicom_with_rescale_and_window_when_decoded_then_window_applied_to_hu() -> None:
    # Given stored values 0..4000 with slope 1, intercept -1000 (so -1000..3000 HU)
    # and a window centred at 0 HU, 400 wide
    pixels = np.array([[0, 1000], [1150, 4000]], dtype=np.uint16)
    data = dicom_bytes(pixels, centre=0, width=400, slope=1.0, intercept=-1000.0)
    image = decode_image(data)
    # Then -1000 HU is black, 0 HU mid-gray, 150 HU near white, 3000 HU white
    assert image.getpixel((0, 0))[0] == 0
    assert 125 <= image.getpixel((1, 0))[0] <= 130
    assert 220 <= image.getpixel((0, 1))[0] <= 232
    assert image.getpixel((1, 1))[0] == 255


def test_given_dicom_with_multi_valued_window_when_decoded_then_first_window_used() -> None:
    data = dicom_bytes(RAMP, centre=[1000, 3000], width=[2000, 10])
    image = decode_image(data)
    # Window 0..2000: 0 → black, 1000 → mid, 2000 and 4000 → white
    assert image.getpixel((0, 0))[0] == 0
    assert 125 <= image.getpixel((1, 0))[0] <= 130
    assert image.getpixel((0, 1))[0] == 255


def test_given_monochrome1_dicom_when_decoded_then_inverted() -> None:
    image = decode_image(dicom_bytes(RAMP, photometric="MONOCHROME1"))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (0, 0, 0)


def test_given_truncated_dicom_when_decoded_then_decode_error_names_record() -> None:
    data = dicom_bytes(np.zeros((64, 64), dtype=np.uint16))
    with pytest.raises(ImageDecodeError, match=r"^scan-7: "):
        decode_image(data[: len(data) - 3000], name="scan-7")


def test_given_dicom_over_pixel_limit_when_decoded_then_too_large_before_decoding() -> None:
    data = dicom_bytes(np.zeros((64, 64), dtype=np.uint16))
    with pytest.raises(ImageTooLargeError, match="4,096 pixels"):
        decode_image(data, name="big", max_pixels=4000)


def test_given_magic_bytes_when_sniffed_then_media_type() -> None:
    assert sniff_media_type(encode(Image.new("RGB", (2, 2)), "JPEG")) == "image/jpeg"
    assert sniff_media_type(encode(Image.new("RGB", (2, 2)), "PNG")) == "image/png"
    assert sniff_media_type(dicom_bytes(RAMP)) == "application/dicom"
    assert sniff_media_type(b"GIF89a....") is None
    assert sniff_media_type(b"") is None
    assert {"image/jpeg", "image/png", "application/dicom"} == set(ACCEPTED_MEDIA_TYPES)


# --- bad input -----------------------------------------------------------------------------------


def test_given_bomb_header_over_default_limit_when_decoded_then_too_large_error() -> None:
    # 8000×8000 = 64 MP: over our 50 MP default, under Pillow's own error threshold, so only
    # our header check stops it (the junk pixel data shows nothing was decoded).
    data = png_header_only(8000, 8000)
    with pytest.raises(ImageTooLargeError, match=r"^bomb\.png: image is 8000x8000") as info:
        decode_image(data, name="bomb.png")
    assert info.value.record == "bomb.png"
    assert DEFAULT_MAX_PIXELS == 50_000_000


def test_given_huge_bomb_header_when_decoded_then_too_large_error_not_pillow_error() -> None:
    with pytest.raises(ImageTooLargeError, match="huge"):
        decode_image(png_header_only(30000, 30000), name="huge")


def test_given_image_over_custom_limit_when_decoded_then_too_large() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=9999)
    assert decode_image(data, max_pixels=10000).size == (100, 100)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_given_truncated_file_when_decoded_then_decode_error_names_record(fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(ImageDecodeError, match=r"^img-1: .*(truncated|corrupt|header)"):
        decode_image(data[: len(data) // 2], name="img-1")


def test_given_zero_byte_file_when_decoded_then_decode_error_names_record() -> None:
    with pytest.raises(ImageDecodeError, match=r"^empty-1: empty file"):
        decode_image(b"", name="empty-1")


def test_given_non_image_file_when_decoded_then_decode_error_names_record() -> None:
    with pytest.raises(ImageDecodeError, match=r"^notes: not a recognised image"):
        decode_image(b"patient notes, not pixels\n" * 10, name="notes")


# --- loading -------------------------------------------------------------------------------------


def test_given_local_and_s3_images_when_loaded_then_same_pixels(
    tmp_path: Path, s3_bucket: str
) -> None:
    data = encode(Image.new("L", (5, 3), 9), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    storage.write_bytes(f"s3://{s3_bucket}/images/a.png", data)
    local = load_image(str(tmp_path / "a.png"))
    remote = load_image(f"s3://{s3_bucket}/images/a.png", name="a")
    assert local.tobytes() == remote.tobytes()
    assert local.size == (5, 3)


def test_given_bad_local_file_when_loaded_without_name_then_error_names_location(
    tmp_path: Path,
) -> None:
    path = tmp_path / "zero.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"zero\.png"):
        load_image(str(path))


def _records(tmp_path: Path) -> list[Record]:
    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:100])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return [
        Record("good", str(good)),
        Record("missing", str(tmp_path / "nowhere.png")),
        Record("cut", str(truncated)),
        Record("empty", str(empty)),
    ]


def test_given_bad_records_when_loaded_leniently_then_good_kept_and_bad_reported(
    tmp_path: Path,
) -> None:
    bad: list[BadRecord] = []
    loaded = load_record_images(_records(tmp_path), strict=False, bad=bad)
    assert [record.image_id for record, _ in loaded] == ["good"]
    assert loaded[0][1].mode == "RGB"
    assert [b.image_id for b in bad] == ["missing", "cut", "empty"]
    assert "nowhere.png" in bad[0].reason
    assert "empty file" in bad[2].reason
    assert not bad[2].reason.startswith("empty:")  # the id is a separate field, not repeated


def test_given_bad_records_when_loaded_strictly_then_first_bad_one_raises(tmp_path: Path) -> None:
    records = _records(tmp_path)
    with pytest.raises(StorageError, match=r"^missing: "):
        load_record_images(records, strict=True, bad=[])
    with pytest.raises(ImageDecodeError, match=r"^cut: "):
        load_record_images([records[0], records[2]], strict=True, bad=[])
