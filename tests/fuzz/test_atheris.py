"""The atheris fuzzers, run briefly: a bounded number of inputs each, from the hostile corpus.

Each runs in its own process, as ``make fuzz`` runs it for minutes, with a fixed seed so that a
run is repeatable, its corpus and crash files in the test's folder. A crash (an exception other
than the documented errors), a timeout or an out-of-memory input ends libFuzzer with a non-zero
status and a ``crash-``/``timeout-``/``oom-`` file, which the failure shows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

RUNS = 4000


@pytest.mark.parametrize("fuzzer", ["fuzz_images", "fuzz_manifest"])
def test_given_the_hostile_seeds_when_fuzzed_for_a_few_thousand_inputs_then_no_crash(
    fuzzer: str, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [
        sys.executable,
        "-m",
        f"tests.fuzz.{fuzzer}",
        f"-runs={RUNS}",
        "-seed=1",
        "-timeout=60",
        "-rss_limit_mb=3072",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    found = sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus")
    assert done.returncode == 0, (found, done.stderr[-4000:])
    assert f"Done {RUNS} runs" in done.stderr
    assert not found
    assert len(list(corpus.iterdir())) > 10  # it ran from the seeds, and kept what it found
