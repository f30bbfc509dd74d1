"""Coverage-guided fuzzing (atheris, libFuzzer) of the image decoder, seeded from the hostile
corpus.

The first byte of an input picks a format's magic bytes to put in front of the rest (PNG, JPEG,
DICOM's preamble, GIF, TIFF either byte order, WebP, or none), so every input reaches one of the
decoders however the rest mutates; the seeds are the corpus files behind the "none" byte. A crash
is any exception from :func:`medsearch.data.images.decode_image` other than the decoder's
documented :class:`~medsearch.errors.ImageDecodeError` (which :class:`ImageTooLargeError` is):
libFuzzer then writes the input to ``crash-*`` and stops with a non-zero status. Every crash
found becomes a case of ``tests/support/hostile/images.py``.

    python -m tests.fuzz.fuzz_images -max_total_time=300     # make fuzz
    python -m tests.fuzz.fuzz_images -runs=3000 -seed=1      # tests/fuzz/test_fuzzers.py
    python -m tests.fuzz.fuzz_images crash-1234abcd          # replay one input

The corpus (seeded on every start) and crash inputs live under ``build/fuzz/images/`` unless
folders are given (``tests/fuzz/seeds.py``).
"""

from __future__ import annotations

import contextlib
import sys
import warnings

import atheris

# Pillow's and pydicom's Python code is instrumented too: their header parsers are where the
# branches are (the C codecs are not, and libFuzzer still feeds them).
with atheris.instrument_imports(include=["medsearch", "PIL", "pydicom"]):
    import pydicom.pixels  # noqa: F401  (the decoder imports it lazily: here it is instrumented)
    from PIL import Image

    from medsearch.data.images import decode_image
    from medsearch.errors import ImageDecodeError

    Image.init()  # Pillow imports its format plugins on first use: now, inside the block

from tests.fuzz.seeds import run_fuzzer

# Small enough that a header claiming a large image is refused or decoded in milliseconds; the
# size check itself is the same code at any limit.
MAX_PIXELS = 1_000_000

MAGIC: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"\x00" * 128 + b"DICM",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"",
)
NO_MAGIC = len(MAGIC) - 1


def test_one_input(data: bytes) -> None:
    """Decode one input behind the magic its first byte picks; only the documented error."""
    if not data:
        return
    payload = MAGIC[data[0] % len(MAGIC)] + data[1:]
    with contextlib.suppress(ImageDecodeError):
        decode_image(payload, name="fuzz", max_pixels=MAX_PIXELS)


def seeds() -> list[bytes]:
    """The hostile corpus's files, each behind the byte that adds no magic."""
    from tests.support.hostile.images import CASES

    return [bytes([NO_MAGIC]) + case.data for case in CASES if 0 < len(case.data) <= 1 << 16]


def main(argv: list[str]) -> None:
    """Run libFuzzer with ``argv``'s flags over the seeds (or the corpus folders given)."""
    warnings.simplefilter("ignore")  # pydicom warns on every odd value it reads
    run_fuzzer(argv, test_one_input, seeds, "images")


if __name__ == "__main__":
    main(sys.argv)
