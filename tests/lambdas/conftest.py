"""Fixtures for the Lambda handlers: environment, moto S3 and the in-memory OpenSearch."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.support.fake_opensearch import FakeCluster, patch_index_loader

MANIFEST_TEMPLATE = "s3://{bucket}/data/{{run_id}}/manifest.jsonl"


@pytest.fixture
def loader_env(monkeypatch: pytest.MonkeyPatch, s3_bucket: str) -> str:
    """The index loader's environment, as the stack sets it; returns the bucket name."""
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_URL", "https://search-medsearch.example.com")
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_AUTH", "none")
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_INDEX", "medsearch")
    monkeypatch.setenv("MEDSEARCH_MANIFEST_URL", MANIFEST_TEMPLATE.format(bucket=s3_bucket))
    monkeypatch.setenv("MEDSEARCH_BULK_MAX_DOCS", "2")
    monkeypatch.setenv("MEDSEARCH_RETRY_BACKOFF_BASE", "0")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "medsearch")
    return s3_bucket


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster(seed=3)


@pytest.fixture
def loader_handler(
    loader_env: str, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The index loader handler module, talking to ``cluster``, with a fresh container state."""
    import lambdas.index_loader.handler as handler

    patch_index_loader(monkeypatch, cluster)
    yield handler
