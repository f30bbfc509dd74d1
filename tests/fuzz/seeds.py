"""What the atheris fuzzers share: a corpus folder seeded from the hostile corpus, and the start.

libFuzzer reads its inputs from the corpus folders among its arguments and adds the new ones it
finds to the first. Without one, ``build/fuzz/<name>/corpus/`` is used, so that ``make fuzz``
carries its findings from one run to the next; the fuzzer's seeds (built from
``tests/support/hostile/``) are written into the first folder in any case, and crash inputs go to
``build/fuzz/<name>/`` unless ``-artifact_prefix`` says otherwise. Given a file instead (replay),
it runs just that file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import atheris

BUILD = Path(__file__).resolve().parents[2] / "build" / "fuzz"


def write_seeds(folder: Path, seeds: list[bytes]) -> Path:
    """Write each seed to ``folder`` under its SHA-1, as libFuzzer names corpus files."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / hashlib.sha1(seed, usedforsecurity=False).hexdigest()).write_bytes(seed)
    return folder


def work_folder(name: str) -> Path:
    """``build/fuzz/<name>/``, created: the fuzzer's corpus, crash inputs and scratch files."""
    folder = BUILD / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_fuzzer(
    argv: list[str],
    test_one_input: Callable[[bytes], None],
    seeds: Callable[[], list[bytes]],
    name: str,
) -> None:
    """Start libFuzzer with ``argv`` (flags, then corpus folders or files to replay)."""
    args = list(argv)
    inputs = [Path(arg) for arg in args[1:] if not arg.startswith("-")]
    if not inputs:
        inputs = [work_folder(name) / "corpus"]
        args.append(str(inputs[0]))
    if not any(arg.startswith("-artifact_prefix=") for arg in args):
        args.insert(1, f"-artifact_prefix={work_folder(name)}/")
    if not inputs[0].is_file():
        write_seeds(inputs[0], seeds())
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
