"""bench/gpu.py, the script prepared for a GPU machine, runs end to end at toy sizes on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_given_cpu_and_quick_when_the_gpu_bench_runs_then_every_part_reports() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert any(line.startswith("train batch 16 fp32: {'samples_per_s'") for line in lines)
    assert any(line.startswith("loader 2 workers: {'images_per_s'") for line in lines)
    (vectorized,) = [line for line in lines if line.startswith("vectorize: ")]
    # The pipelined path gives the command's vectors (exact preprocessing, fp32 on the CPU)
    assert "'min_cosine_pipelined_vs_command': 1.0" in vectorized
