"""SageMaker source archives: ``make sagemaker-sources`` → ``build/sagemaker/<entry>.tar.gz``.

Script mode unpacks ``sagemaker_submit_directory`` (a ``.tar.gz``) into the container and runs the
entry point from it; the batch-transform container does the same with the model's ``code/``
folder. Each archive holds the entry folder's files (``train.py`` or ``inference.py``, their
``requirements.txt``) with the ``medsearch`` package beside them, as those entry points expect.
The archives are deterministic (sorted names, fixed times and owners), so an unchanged source
gives the same CDK asset hash and no redeploy.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from medsearch.constants import BATCH_SOURCE_DIR, TRAINING_SOURCE_DIR

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "build" / "sagemaker"
ENTRIES = (TRAINING_SOURCE_DIR, BATCH_SOURCE_DIR)
SKIP = ("__pycache__", ".pyc", ".pyo")


def archive_path(entry: str, dest: Path = DEST) -> Path:
    """Where the archive of one entry folder is written."""
    return dest / f"{entry}.tar.gz"


def _files(entry: str) -> Iterator[tuple[str, Path]]:
    """(name in the archive, file) for the entry's own files and the medsearch package."""
    for path in sorted((REPO / entry).iterdir()):
        if path.is_file() and not path.name.endswith(SKIP) and path.name != "__init__.py":
            yield path.name, path
    for path in sorted((REPO / "medsearch").rglob("*")):
        cached = "__pycache__" in path.parts or path.name.endswith(SKIP)
        if path.is_file() and not cached:
            yield str(path.relative_to(REPO)), path


def build_archive(entry: str, dest: Path = DEST) -> Path:
    """Write one entry folder's deterministic ``.tar.gz``; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in _files(entry):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    target = archive_path(entry, dest)
    with target.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(buffer.getvalue())
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Build every entry's archive and print where it went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args(argv)
    for entry in ENTRIES:
        path = build_archive(entry, args.dest)
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
