"""Build and measure the search API Lambda's zip content (``make lambda-package``).

``python -m lambdas.search_api.package [DEST]`` pip-installs ``requirements.txt`` into ``DEST``
(default ``build/search_api``) as Linux x86_64 wheels for the runtime's Python, removes the
distributions the API never imports at run time (pulled in only for build tools or optional
transports), copies the ``medsearch`` and ``lambdas`` packages beside them, and checks the result:
unzipped size within Lambda's 250 MB, and no torch, transformers, tantivy or faiss inside.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medsearch.constants import (
    LAMBDA_PLATFORM,
    LAMBDA_PYTHON_VERSION,
    LAMBDA_UNZIPPED_LIMIT_BYTES,
    SEARCH_API_PACKAGE_DIR,
)

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
# Top-level modules that must never be in the package (the reason it exists without them).
FORBIDDEN = ("torch", "transformers", "tantivy", "faiss", "onnx", "onnxscript")
# Dependencies the API never imports: onnxruntime's build/quantisation tools (sympy, mpmath,
# coloredlogs, humanfriendly, flatbuffers, protobuf), tokenizers' hub download (huggingface_hub,
# hf_xet, fsspec, filelock, tqdm, pyyaml, httpx2...), opensearch-py's optional gRPC transport.
PRUNE = (
    "sympy",
    "mpmath",
    "coloredlogs",
    "humanfriendly",
    "flatbuffers",
    "protobuf",
    "grpcio",
    "opensearch_protobufs",
    "huggingface_hub",
    "hf_xet",
    "fsspec",
    "filelock",
    "tqdm",
    "pyyaml",
    "click",
    "httpx2",
    "httpcore2",
    "h11",
    "truststore",
    "typer",
    "shellingham",
    "rich",
    "markdown_it_py",
    "mdurl",
    "pygments",
)
CODE = ("medsearch", "lambdas")


@dataclass
class PackageReport:
    """Size of an unzipped package, its largest top-level entries and any forbidden module."""

    total_bytes: int
    largest: list[tuple[str, int]] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the package fits Lambda's limit and holds nothing forbidden."""
        return self.total_bytes <= LAMBDA_UNZIPPED_LIMIT_BYTES and not self.forbidden


def measure(folder: Path) -> PackageReport:
    """Return the unzipped size of ``folder`` (regular files; links are not followed)."""
    sizes: dict[str, int] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            top = path.relative_to(folder).parts[0]
            sizes[top] = sizes.get(top, 0) + path.stat().st_size
    forbidden = sorted(
        name
        for name in sizes
        if name.split(".")[0].split("-")[0] in FORBIDDEN and not name.endswith(".dist-info")
    )
    largest = sorted(sizes.items(), key=lambda item: item[1], reverse=True)[:12]
    return PackageReport(sum(sizes.values()), largest, forbidden)


def prune(folder: Path, names: Sequence[str] = PRUNE) -> list[str]:
    """Remove installed distributions (every file their RECORD lists); return the removed ones."""
    removed = []
    emptied: set[Path] = set()
    wanted = {n.lower().replace("-", "_") for n in names}
    for info in sorted(folder.glob("*.dist-info")):
        distribution = info.name.removesuffix(".dist-info").rsplit("-", 1)[0].lower()
        if distribution not in wanted:
            continue
        record = info / "RECORD"
        entries = record.read_text().splitlines() if record.is_file() else []
        for line in entries:
            target = folder / line.split(",", 1)[0]
            if target.is_file() or target.is_symlink():
                target.unlink()
                emptied.add(target.parent)
        shutil.rmtree(info, ignore_errors=True)
        removed.append(distribution)
    # Folders the removed files leave empty go too (deepest first), and nothing else.
    for directory in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        while directory != folder and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
            directory = directory.parent
    return removed


def build(dest: Path) -> None:
    """Install the requirements into a fresh ``dest``, prune, and copy the project's code."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(dest),
            "--platform",
            LAMBDA_PLATFORM,
            "--implementation",
            "cp",
            "--python-version",
            LAMBDA_PYTHON_VERSION,
            "--only-binary=:all:",
            "-r",
            str(REQUIREMENTS),
        ],
        check=True,
    )
    prune(dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "requirements.txt")
    for name in CODE:
        shutil.copytree(REPO / name, dest / name, ignore=ignore)


def main(argv: Sequence[str] | None = None) -> int:
    """Build (unless --measure-only) and report; exit 1 if too large or forbidden modules."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, nargs="?", default=REPO / SEARCH_API_PACKAGE_DIR)
    parser.add_argument("--measure-only", action="store_true", help="measure an existing build")
    args = parser.parse_args(argv)
    if not args.measure_only:
        build(args.dest)
    report = measure(args.dest)
    limit = LAMBDA_UNZIPPED_LIMIT_BYTES / 2**20
    print(f"{args.dest}: {report.total_bytes / 2**20:.1f} MiB unzipped (limit {limit:.0f} MiB)")
    for name, size in report.largest:
        print(f"  {size / 2**20:7.1f} MiB  {name}")
    if report.forbidden:
        print(f"forbidden in the package: {', '.join(report.forbidden)}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
