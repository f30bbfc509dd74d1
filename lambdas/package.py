"""Build and check the Lambda functions' zip content (``make lambda-package``).

``python -m lambdas.package [search_api] [index_loader] [pipeline]`` (all by default) pip-installs,
for each function, the project's base dependencies (the ``medsearch`` code it carries needs them)
and the function's own ``requirements.txt`` into its folder (``SEARCH_API_PACKAGE_DIR``,
``INDEX_LOADER_PACKAGE_DIR``, ``PIPELINE_PACKAGE_DIR``) as wheels for the runtime's Python and
platform
(:data:`~medsearch.constants.LAMBDA_PLATFORM` and every older manylinux tag); removes what the
function never imports at run time (build tools, optional transports) and what the runtime
provides (boto3, botocore); copies the ``medsearch`` package and the function's part of
``lambdas`` beside them; and checks the result: unzipped size within Lambda's 250 MB, no
forbidden module (torch, transformers, tantivy, faiss, onnx; for the loader onnxruntime and
tokenizers too; for the pipeline steps the OpenSearch client as well), and every wheel built for
the runtime's CPython and glibc.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medsearch.constants import (
    INDEX_LOADER_PACKAGE_DIR,
    LAMBDA_PLATFORM,
    LAMBDA_PYTHON_VERSION,
    LAMBDA_UNZIPPED_LIMIT_BYTES,
    PIPELINE_PACKAGE_DIR,
    SEARCH_API_PACKAGE_DIR,
)

REPO = Path(__file__).resolve().parents[1]
LAMBDAS = Path(__file__).resolve().parent
# Top-level modules that must never be in a package (the reason the packages exist without them).
FORBIDDEN = ("torch", "transformers", "tantivy", "faiss", "onnx", "onnxscript")
# The loader neither encodes nor tokenizes.
LOADER_FORBIDDEN = (*FORBIDDEN, "onnxruntime", "tokenizers")
# The pipeline steps (plan, gate, unpack) only read and write S3.
PIPELINE_FORBIDDEN = (*LOADER_FORBIDDEN, "opensearchpy")
# Dependencies no function imports: onnxruntime's build/quantisation tools (sympy, mpmath,
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
# The Lambda Python runtime has these (aws-xray-sdk pulls botocore in); a second copy in the
# package would only shadow the runtime's.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
# Legacy manylinux names and the glibc version each stands for (PEP 600).
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_(\w+)")
# A versioned glibc symbol a shared library needs, as its dynamic string table names it.
_GLIBC_NEED = re.compile(rb"GLIBC_(\d+)\.(\d+)(?:\.\d+)?\x00")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "requirements.txt")


@dataclass(frozen=True)
class PackageConfig:
    """One function's package: where it is built, from which requirements, with which checks."""

    name: str
    requirements: Path
    dest: Path
    forbidden: tuple[str, ...] = FORBIDDEN
    prune: tuple[str, ...] = PRUNE + RUNTIME_PROVIDED

    @property
    def code(self) -> tuple[Path, ...]:
        """The project's code the function runs: ``medsearch``, ``lambdas/__init__.py`` and
        the function's own folder (not the other function's, nor this build tool)."""
        return (REPO / "medsearch", LAMBDAS / "__init__.py", LAMBDAS / self.name)


FUNCTIONS: dict[str, PackageConfig] = {
    "search_api": PackageConfig(
        "search_api", LAMBDAS / "search_api" / "requirements.txt", REPO / SEARCH_API_PACKAGE_DIR
    ),
    "index_loader": PackageConfig(
        "index_loader",
        LAMBDAS / "index_loader" / "requirements.txt",
        REPO / INDEX_LOADER_PACKAGE_DIR,
        forbidden=LOADER_FORBIDDEN,
    ),
    "pipeline": PackageConfig(
        "pipeline",
        LAMBDAS / "pipeline" / "requirements.txt",
        REPO / PIPELINE_PACKAGE_DIR,
        forbidden=PIPELINE_FORBIDDEN,
    ),
}


@dataclass
class PackageReport:
    """Size of an unzipped package, its largest top-level entries and what fails the checks."""

    total_bytes: int
    largest: list[tuple[str, int]] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    incompatible: list[str] = field(default_factory=list)
    glibc: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def too_new(self) -> dict[str, tuple[int, int]]:
        """The top-level entries whose shared libraries need a newer glibc than the platform's."""
        target = manylinux_glibc(LAMBDA_PLATFORM)
        assert target is not None
        return {name: need for name, need in self.glibc.items() if need > target[0]}

    @property
    def ok(self) -> bool:
        """Whether the package fits Lambda's limit, holds nothing forbidden and runs there."""
        return (
            self.total_bytes <= LAMBDA_UNZIPPED_LIMIT_BYTES
            and not self.forbidden
            and not self.incompatible
            and not self.too_new
        )


def manylinux_glibc(platform: str) -> tuple[tuple[int, int], str] | None:
    """Return the glibc version and architecture a manylinux platform tag stands for."""
    prefix, _, arch = platform.partition("_")
    if prefix in _LEGACY_MANYLINUX:
        return _LEGACY_MANYLINUX[prefix], arch
    match = _MANYLINUX.fullmatch(platform)
    if match is None:
        return None
    return (int(match[1]), int(match[2])), match[3]


def platform_tags(platform: str) -> list[str]:
    """Return ``platform`` and every older manylinux tag for its architecture, newest first.

    pip's ``--platform`` matches a ``manylinux_2_x`` tag exactly (it widens only the legacy
    ``manylinux2014``/``manylinux2010`` names), so the older tags a glibc also runs are passed
    one by one; many wheels are still built for manylinux2014 only.
    """
    parsed = manylinux_glibc(platform)
    if parsed is None:
        return [platform]
    (major, minor), arch = parsed
    tags = []
    for glibc_minor in range(minor, 4, -1):
        tags.append(f"manylinux_{major}_{glibc_minor}_{arch}")
        tags.extend(
            f"{name}_{arch}" for name, v in _LEGACY_MANYLINUX.items() if v[1] == glibc_minor
        )
    return tags


def wheel_tag_fits(tag: str, python_version: str, platform: str) -> bool:
    """Tell whether a wheel tag (``cp312-cp312-manylinux_2_28_x86_64``, ``py3-none-any``...)
    runs on CPython ``python_version`` on a glibc ``platform`` (``manylinux_2_28_x86_64``)."""
    major, minor = (int(part) for part in python_version.split("."))
    target = manylinux_glibc(platform)
    assert target is not None, f"{platform} is not a manylinux platform"
    own_abi = f"cp{major}{minor}"
    for interpreter in tag.split("-")[0].split("."):
        for abi in tag.split("-")[1].split("."):
            for plat in tag.split("-")[2].split("."):
                version = re.fullmatch(r"(py|cp)(\d)(\d*)", interpreter)
                if version is None or int(version[2]) != major:
                    continue
                if version[3] and int(version[3]) > minor:
                    continue
                if abi not in ("none", "abi3", own_abi) or (
                    abi == own_abi and interpreter != own_abi
                ):
                    continue
                if plat == "any":
                    return True
                glibc = manylinux_glibc(plat)
                if glibc is not None and glibc[1] == target[1] and glibc[0] <= target[0]:
                    return True
    return False


def wheel_tags(folder: Path) -> dict[str, list[str]]:
    """Return each installed distribution's wheel tags (from its ``.dist-info/WHEEL``)."""
    tags = {}
    for wheel in sorted(folder.glob("*.dist-info/WHEEL")):
        lines = wheel.read_text().splitlines()
        tags[wheel.parent.name.removesuffix(".dist-info")] = [
            line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:")
        ]
    return tags


def incompatible_wheels(
    folder: Path, python_version: str = LAMBDA_PYTHON_VERSION, platform: str = LAMBDA_PLATFORM
) -> list[str]:
    """Return the distributions in ``folder`` none of whose wheel tags runs on the runtime."""
    return [
        name
        for name, tags in wheel_tags(folder).items()
        if not any(wheel_tag_fits(tag, python_version, platform) for tag in tags)
    ]


def glibc_needed(library: Path) -> tuple[int, int] | None:
    """Return the newest glibc symbol version a shared library references, if any."""
    needs = [(int(m[1]), int(m[2])) for m in _GLIBC_NEED.finditer(library.read_bytes())]
    return max(needs, default=None)


def measure(folder: Path, forbidden: Sequence[str] = FORBIDDEN) -> PackageReport:
    """Return the unzipped size of ``folder`` (regular files; links are not followed), its
    forbidden top-level modules, the wheels that do not fit the runtime and, per top-level
    entry, the newest glibc its shared libraries need."""
    sizes: dict[str, int] = {}
    glibc: dict[str, tuple[int, int]] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            top = path.relative_to(folder).parts[0]
            sizes[top] = sizes.get(top, 0) + path.stat().st_size
            if ".so" in path.suffixes:
                need = glibc_needed(path)
                if need is not None and need > glibc.get(top, (0, 0)):
                    glibc[top] = need
    found = sorted(
        name
        for name in sizes
        if name.split(".")[0].split("-")[0] in forbidden and not name.endswith(".dist-info")
    )
    largest = sorted(sizes.items(), key=lambda item: item[1], reverse=True)[:12]
    return PackageReport(sum(sizes.values()), largest, found, incompatible_wheels(folder), glibc)


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


def find_runtime_python() -> str | None:
    """Return a CPython of the runtime's version on this machine, if any (to load a package as
    Lambda does): on PATH, or one pyenv installed (its shim may name another); checked by running
    it."""
    name = f"python{LAMBDA_PYTHON_VERSION}"
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    installed = sorted(str(p) for p in pyenv.glob(f"{LAMBDA_PYTHON_VERSION}.*/bin/{name}"))
    for candidate in filter(None, [shutil.which(name), *installed]):
        probe = [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        try:
            answer = subprocess.run(probe, capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if answer.returncode == 0 and answer.stdout.strip() == LAMBDA_PYTHON_VERSION:
            return candidate
    return None


def core_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """Return the project's base dependencies (what the ``medsearch`` code needs to import)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project["dependencies"])


def pip_command(config: PackageConfig) -> list[str]:
    """Return the pip call that installs ``config``'s dependencies as the runtime's wheels."""
    platforms = [arg for tag in platform_tags(LAMBDA_PLATFORM) for arg in ("--platform", tag)]
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--target",
        str(config.dest),
        *platforms,
        "--implementation",
        "cp",
        "--python-version",
        LAMBDA_PYTHON_VERSION,
        "--only-binary=:all:",
        # Bytecode compiled here would be for this interpreter, not the runtime's: dead weight.
        "--no-compile",
        *core_requirements(),
        "-r",
        str(config.requirements),
    ]


def build(config: PackageConfig) -> None:
    """Install the requirements into a fresh ``config.dest``, prune, and copy the code."""
    if config.dest.exists():
        shutil.rmtree(config.dest)
    config.dest.mkdir(parents=True)
    subprocess.run(pip_command(config), check=True)
    prune(config.dest, config.prune)
    for source in config.code:
        target = config.dest / source.relative_to(REPO)
        if source.is_dir():
            shutil.copytree(source, target, ignore=_IGNORE)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def report(config: PackageConfig) -> PackageReport:
    """Measure a built package and print its size, largest entries and failed checks."""
    result = measure(config.dest, config.forbidden)
    limit = LAMBDA_UNZIPPED_LIMIT_BYTES / 2**20
    size = result.total_bytes / 2**20
    print(f"{config.name} ({config.dest}): {size:.1f} MiB unzipped (limit {limit:.0f} MiB)")
    for name, entry_size in result.largest:
        print(f"  {entry_size / 2**20:7.1f} MiB  {name}")
    if result.forbidden:
        print(f"  forbidden in the package: {', '.join(result.forbidden)}")
    if result.incompatible:
        target = f"CPython {LAMBDA_PYTHON_VERSION} on {LAMBDA_PLATFORM}"
        print(f"  wheels not built for {target}: {', '.join(result.incompatible)}")
    for name, (major, minor) in sorted(result.too_new.items()):
        print(f"  {name} needs glibc {major}.{minor}, newer than {LAMBDA_PLATFORM} has")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Build (unless --measure-only) and check the named functions' packages (default: all);
    exit 1 if any is too large, holds a forbidden module or a wheel the runtime cannot load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("functions", nargs="*", metavar="FUNCTION", help=", ".join(FUNCTIONS))
    parser.add_argument("--measure-only", action="store_true", help="check existing builds")
    args = parser.parse_args(argv)
    unknown = [name for name in args.functions if name not in FUNCTIONS]
    if unknown:
        parser.error(f"unknown function {', '.join(unknown)}: use {', '.join(FUNCTIONS)}")
    ok = True
    for name in args.functions or FUNCTIONS:
        config = FUNCTIONS[name]
        if not args.measure_only:
            build(config)
        ok = report(config).ok and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
