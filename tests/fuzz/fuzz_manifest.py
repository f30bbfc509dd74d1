"""Coverage-guided fuzzing (atheris, libFuzzer) of the manifest reader, seeded from the hostile
manifests of ``tests/support/hostile/manifests.py``.

The first byte of an input picks the file name the reader sees (``.jsonl`` or ``.csv``: it picks
the format by the name), the rest is the file. A crash is any exception from
:func:`medsearch.data.manifest.read_manifest` other than its documented ones: a
:class:`~medsearch.errors.ManifestError` (an :class:`~medsearch.errors.InvalidInputError`) for a
malformed file or record, a :class:`~medsearch.errors.StorageError` for one that cannot be read
as UTF-8 text. Every crash found becomes a case of ``tests/support/hostile/manifests.py``.

    python -m tests.fuzz.fuzz_manifest -max_total_time=300   # make fuzz
    python -m tests.fuzz.fuzz_manifest -runs=3000 -seed=1    # tests/fuzz/test_fuzzers.py

Corpus, crash inputs and the file each input is written to live under ``build/fuzz/manifest/``.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports(include=["medsearch"]):
    from medsearch.data.manifest import read_manifest
    from medsearch.errors import InvalidInputError, StorageError

from tests.fuzz.seeds import run_fuzzer, work_folder

NAMES = ("manifest.jsonl", "manifest.csv")
# Inputs are written here, one file per name, overwritten by each input.
_FOLDER = work_folder("manifest") / "input"
_FOLDER.mkdir(exist_ok=True)


def test_one_input(data: bytes) -> None:
    """Read one input as the manifest its first byte names; only the documented errors."""
    if not data:
        return
    path = _FOLDER / NAMES[data[0] % len(NAMES)]
    path.write_bytes(data[1:])
    with contextlib.suppress(InvalidInputError, StorageError):
        read_manifest(path)


def seeds() -> list[bytes]:
    """The hostile manifests (those up to 64 KB), each behind the byte that names its format."""
    from tests.support.hostile.manifests import CASES

    return [
        bytes([NAMES.index("manifest.csv" if case.filename.endswith(".csv") else NAMES[0])])
        + case.data
        for case in CASES
        if len(case.data) <= 1 << 16
    ]


def main(argv: list[str]) -> None:
    """Run libFuzzer with ``argv``'s flags over the seeds (or the corpus folders given)."""
    run_fuzzer(argv, test_one_input, seeds, "manifest")


if __name__ == "__main__":
    main(sys.argv)
