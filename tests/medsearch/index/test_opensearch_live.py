"""The OpenSearch engine against a real OpenSearch: the shared engine contract and the lifecycle.

The node is the suite's own (``opensearch_url`` in tests/conftest.py starts one), or a cluster
named by ``MEDSEARCH_OPENSEARCH_URL``, e.g.::

    MEDSEARCH_OPENSEARCH_URL=https://admin:Medsearch-2024@localhost:9200 \\
        MEDSEARCH_OPENSEARCH_VERIFY_CERTS=0 .venv/bin/pytest -m live

``MEDSEARCH_OPENSEARCH_AUTH=sigv4`` (with ``MEDSEARCH_AWS_REGION``) signs with the AWS credentials
of the environment instead. Every index and alias made here is named ``medsearch-test-*`` and is
deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from index_contract import MakeIndex, SearchIndexContract

from medsearch.index.base import Document, SearchIndex, SearchQuery
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex

pytestmark = pytest.mark.live


@pytest.fixture
def live_names(opensearch_client: Any) -> Iterator[list[str]]:
    """Names of indexes made by a test; all of them are deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        OpenSearchIndex(opensearch_client, name).drop()


def fresh_name() -> str:
    return f"medsearch-test-{uuid.uuid4().hex[:10]}"


def live_factory(client: Any, hybrid: str, names: list[str]) -> MakeIndex:
    def make(documents: Sequence[Document]) -> SearchIndex:
        name = fresh_name()
        names.append(name)
        config = OpenSearchConfig(hybrid=hybrid, refresh_writes=True, replicas=0)
        index = OpenSearchIndex(client, name, config=config)
        dim = next(len(d.vector) for d in documents if d.vector is not None)
        index.create(dim)
        with index.loading():
            result = index.upsert(documents)
        assert result.failed == []
        return index

    return make


class TestLivePipelineContract(SearchIndexContract):
    @pytest.fixture
    def make_index(self, opensearch_client: Any, live_names: list[str]) -> MakeIndex:
        return live_factory(opensearch_client, "pipeline", live_names)


class TestLiveClientFusionContract(SearchIndexContract):
    @pytest.fixture
    def make_index(self, opensearch_client: Any, live_names: list[str]) -> MakeIndex:
        return live_factory(opensearch_client, "client", live_names)


def test_blue_green_alias_swap_and_prune_on_a_live_cluster(
    opensearch_client: Any, live_names: list[str]
) -> None:
    alias = fresh_name()
    client = opensearch_client
    config = OpenSearchConfig(replicas=0, keep_indexes=1)
    runs = []
    for run in ("a", "b"):
        index = OpenSearchIndex(client, f"{alias}-{run}", config=config)
        live_names.append(index.name)
        index.create(4)
        with index.loading():
            index.upsert([Document(f"{run}1", f"run {run}", np.ones(4, dtype=np.float32))])
        runs.append(index)
        index.swap_alias(alias)
        reader = OpenSearchIndex(client, alias)
        assert reader.count() == 1 and reader.get(f"{run}1") is not None
    assert runs[1].alias_targets(alias) == [runs[1].name]
    assert not runs[0].exists()  # pruned: keep 1
    assert OpenSearchIndex(client, alias).search(SearchQuery(text="run")).total == 1
