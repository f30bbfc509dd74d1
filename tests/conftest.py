"""Shared fixtures: a small synthetic corpus, a tiny random-init CLIP, moto S3 and the MedPix set.

Session-scoped where building is the cost (corpus, model), so the whole suite pays for each once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MEDPIX = REPO_ROOT.parent / "shared" / "datasets" / "medpix"
# A cluster of the user's own, read before any test patches the environment; unset, the suite
# starts a local node (tests/support/opensearch_node.py).
USER_OPENSEARCH_URL = os.environ.get("MEDSEARCH_OPENSEARCH_URL")
# Large enough for every split, captionless images and a query set; small enough to write in
# about 0.2 s.
SYNTH_N = 96


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of ``manifest.jsonl`` of a small synthetic corpus (``images/`` and ``queries.jsonl``
    beside it); train/validation/test splits and some captionless images. Read-only: copy it
    before changing anything."""
    from medsearch.data.synth import SynthConfig, write_synthetic_corpus

    out = tmp_path_factory.mktemp("synth")
    return write_synthetic_corpus(out, SynthConfig(n=SYNTH_N, seed=0, n_queries=12))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path) -> Path:
    """A tiny random-init CLIP (tokenizer trained on ``synth_corpus`` captions) saved with
    ``save_clip`` (default conv tower): loads with ``load_clip`` and ``load_encoder``. Read-only."""
    from medsearch.data.manifest import read_manifest
    from medsearch.model.loading import save_clip
    from medsearch.model.tiny import build_tiny_clip

    captions = [r.caption for r in read_manifest(synth_corpus) if r.caption]
    out = tmp_path_factory.mktemp("tiny-clip")
    save_clip(build_tiny_clip(captions, seed=0), out)
    return out


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path) -> Path:
    """A small random-init ``CLIPModel`` folder laid out like a Hugging Face hub download of
    openai/clip-vit-base-patch32 (tokenizer trained on ``synth_corpus`` captions), the stand-in
    for a pretrained base: see ``tests/support/clip_folder.py``. Read-only."""
    from medsearch.data.manifest import read_manifest
    from tests.support.clip_folder import build_clip_folder

    captions = [r.caption for r in read_manifest(synth_corpus) if r.caption]
    return build_clip_folder(tmp_path_factory.mktemp("hub-clip"), captions, shape="small", seed=0)


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 bucket named ``corpus``, installed as medsearch's object store."""
    import boto3
    from moto import mock_aws

    from medsearch import storage
    from medsearch._s3 import Boto3Store

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="corpus")
        storage.set_object_store(Boto3Store(client))
        try:
            yield "corpus"
        finally:
            storage.set_object_store(None)


@pytest.fixture(scope="session")
def medpix_dir() -> Path:
    """The real MedPix sample (manifest.jsonl, images/, queries.jsonl); skips when absent."""
    if not (MEDPIX / "manifest.jsonl").is_file():
        pytest.skip(f"MedPix data set not found at {MEDPIX}")
    return MEDPIX


def _run_python_without(blocked: set[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing any of ``blocked`` fails."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {sorted(blocked)!r}:\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    # From the repository root, where the entry-point packages (lambdas/, ...) are importable.
    return subprocess.run(
        [sys.executable, "-c", blocker + code], capture_output=True, text=True, cwd=REPO_ROOT
    )


@pytest.fixture
def python_without() -> Callable[[set[str], str], subprocess.CompletedProcess[str]]:
    """Run Python code in a subprocess whose imports of the named top-level packages fail, so a
    test proves a module imports without them (torch in the Lambda, boto3 in the core)."""
    return _run_python_without


@pytest.fixture(scope="session")
def small_stack() -> Any:
    """The CDK app's stack in its default (small) layout and its template (synthesized once)."""
    from tests.support.cdk_app import synth

    return synth({})


@pytest.fixture(scope="session")
def large_stack() -> Any:
    """The CDK app's stack in the large layout (Multi-AZ with standby) and its template."""
    from tests.support.cdk_app import LARGE, synth

    return synth(LARGE)


@pytest.fixture(scope="session")
def opensearch_url() -> Iterator[str]:
    """URL of a real OpenSearch for the live tests: ``MEDSEARCH_OPENSEARCH_URL`` if set, else a
    node started here for the session (stopped at the end). Without Java or Maven the live tests
    skip with the reason, except in CI (``CI=true``), where they must run and so fail instead."""
    if USER_OPENSEARCH_URL:
        yield USER_OPENSEARCH_URL
        return
    from tests.support.opensearch_node import NodeUnavailable, OpenSearchNode, missing_tools

    problem = missing_tools()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the live OpenSearch tests, but {problem}", pytrace=False)
        pytest.skip(problem)
    node = OpenSearchNode()
    try:
        node.start()
    except NodeUnavailable as exc:
        pytest.fail(f"cannot start the local OpenSearch node: {exc}", pytrace=False)
    try:
        yield node.url  # type: ignore[misc]
    finally:
        node.stop()


@pytest.fixture(scope="session")
def opensearch_client(opensearch_url: str) -> object:
    """A client for :func:`opensearch_url`; a user's cluster may ask for basic auth (credentials
    in the URL), SigV4 (``MEDSEARCH_OPENSEARCH_AUTH=sigv4`` with ``MEDSEARCH_AWS_REGION``) and
    unverified certificates (``MEDSEARCH_OPENSEARCH_VERIFY_CERTS=0``)."""
    from lambdas import opensearch_client as make_client

    auth = os.environ.get("MEDSEARCH_OPENSEARCH_AUTH", "none") if USER_OPENSEARCH_URL else "none"
    return make_client(
        opensearch_url,
        auth="none" if auth == "basic" else auth,  # type: ignore[arg-type]  # basic: in the URL
        service=os.environ.get("MEDSEARCH_OPENSEARCH_SERVICE", "es"),  # type: ignore[arg-type]
        region=os.environ.get("MEDSEARCH_AWS_REGION"),
        verify_certs=os.environ.get("MEDSEARCH_OPENSEARCH_VERIFY_CERTS", "1") != "0",
        timeout=120,
    )


@pytest.fixture
def node_index(opensearch_client: Any) -> Iterator[Any]:
    """Make ``OpenSearchIndex`` objects on the node (``make(config, name=None)``, a fresh
    ``medsearch-test-*`` name by default); every index made through it is deleted afterwards."""
    from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex
    from tests.support.opensearch_node import fresh_name

    made: list[OpenSearchIndex] = []

    def make(config: OpenSearchConfig | None = None, *, name: str | None = None) -> OpenSearchIndex:
        index = OpenSearchIndex(opensearch_client, name or fresh_name(), config=config)
        made.append(index)
        return index

    yield make
    for index in made:
        index.drop()


_LIVE_OUTCOMES: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the live tests' outcomes (one per test: its call, or the phase that ended it)."""
    if "live" not in report.keywords:
        return
    if report.when == "call" or report.outcome != "passed":
        if report.when == "teardown" and report.outcome == "failed":
            return  # already counted at its call; a teardown error shows in pytest's summary
        outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        _LIVE_OUTCOMES[outcome] += 1


def pytest_terminal_summary(terminalreporter: object) -> None:
    """Print the live OpenSearch tests' counts, so a run shows they ran and where."""
    if not any(_LIVE_OUTCOMES.values()):
        return
    where = "MEDSEARCH_OPENSEARCH_URL" if USER_OPENSEARCH_URL else "the local node"
    counts = ", ".join(f"{n} {outcome}" for outcome, n in _LIVE_OUTCOMES.items())
    terminalreporter.write_line(f"live OpenSearch tests on {where}: {counts}")  # type: ignore[attr-defined]
