"""Schemathesis against the served OpenAPI schema: every operation, every phase (examples,
coverage, fuzzing, stateful), every check, over a real server on 127.0.0.1.

The served app is the real one over a small real index (synthetic corpus, tiny CLIP, embedded
engine) with the web page mounted, as ``medsearch serve`` runs it. The run must find nothing:
no server error, no response that breaks the schema, no schema-valid request refused, no
schema-invalid one accepted. ``MEDSEARCH_FUZZ_EXAMPLES`` sets the examples per operation (a
small budget here; ``make fuzz`` runs a large one) and ``MEDSEARCH_FUZZ_SEED`` the seed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medsearch.api import BackgroundServer, create_app
from medsearch.settings import ServiceSettings
from tests.support.served_api import StatusCounter, build_small_index

REPO = Path(__file__).resolve().parents[2]
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
EXAMPLES = int(os.environ.get("MEDSEARCH_FUZZ_EXAMPLES", "5"))
SEED = int(os.environ.get("MEDSEARCH_FUZZ_SEED", "0"))


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path, tiny_model_dir: Path
) -> Iterator[tuple[str, StatusCounter]]:
    """The API over a small real index on a real server; its base URL and status counter."""
    index_dir = build_small_index(synth_corpus, tiny_model_dir, tmp_path_factory.mktemp("st"))
    settings = ServiceSettings(
        index_dir=str(index_dir), model=str(tiny_model_dir), web_dir=REPO / "web"
    )
    counter = StatusCounter(create_app(settings))
    server = BackgroundServer(counter).start()  # type: ignore[arg-type]
    try:
        yield server.url, counter
    finally:
        server.stop()


def test_given_the_served_schema_when_schemathesis_runs_every_phase_then_no_failure(
    served: tuple[str, StatusCounter], tmp_path: Path
) -> None:
    url, counter = served
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
        "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", str(SEED),
        "--workers", "1", "--phases", "examples,coverage,fuzzing,stateful",
        "--request-timeout", "30", "--no-color",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # its cassettes and caches stay out of the repository
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        timeout=900,
    )
    summary = re.search(r"(\d+) generated", result.stdout)
    print(
        f"schemathesis: {summary.group(0) if summary else '?'} test cases, "
        f"{counter.requests} requests served, {counter.server_errors} server errors"
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout
    assert counter.requests > 0 and counter.server_errors == 0
