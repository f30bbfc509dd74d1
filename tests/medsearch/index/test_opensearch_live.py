"""The OpenSearch engine against a live cluster: the shared engine contract and the lifecycle.

Skipped unless ``MEDSEARCH_OPENSEARCH_URL`` is set, e.g. a local single node::

    docker run -p 9200:9200 -e discovery.type=single-node \\
        -e OPENSEARCH_INITIAL_ADMIN_PASSWORD=Medsearch-2024 opensearchproject/opensearch:2
    MEDSEARCH_OPENSEARCH_URL=https://admin:Medsearch-2024@localhost:9200 \\
        MEDSEARCH_OPENSEARCH_VERIFY_CERTS=0 .venv/bin/pytest -m live tests/medsearch/index

``MEDSEARCH_OPENSEARCH_AUTH=sigv4`` (with ``MEDSEARCH_AWS_REGION``) signs with the AWS credentials
of the environment instead. Every index and alias made here is named ``medsearch-test-*`` and is
deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from index_contract import MakeIndex, SearchIndexContract

from medsearch.index.base import Document, SearchIndex, SearchQuery
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex

URL = os.environ.get("MEDSEARCH_OPENSEARCH_URL")

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not URL, reason="MEDSEARCH_OPENSEARCH_URL is not set"),
]


def live_client() -> object:
    """A client for the live cluster, with the auth the environment asks for."""
    from lambdas import opensearch_client

    assert URL is not None
    auth = os.environ.get("MEDSEARCH_OPENSEARCH_AUTH", "basic" if "@" in URL else "none")
    verify = os.environ.get("MEDSEARCH_OPENSEARCH_VERIFY_CERTS", "1") != "0"
    if auth == "basic":  # credentials in the URL
        auth = "none"
    return opensearch_client(
        URL,
        auth=auth,  # type: ignore[arg-type]
        service=os.environ.get("MEDSEARCH_OPENSEARCH_SERVICE", "es"),  # type: ignore[arg-type]
        region=os.environ.get("MEDSEARCH_AWS_REGION"),
        verify_certs=verify,
        timeout=120,
    )


@pytest.fixture
def live_names() -> Iterator[list[str]]:
    """Names of indexes made by a test; all of them are deleted afterwards."""
    names: list[str] = []
    yield names
    client = live_client()
    for name in names:
        OpenSearchIndex(client, name).drop()  # type: ignore[arg-type]


def fresh_name() -> str:
    return f"medsearch-test-{uuid.uuid4().hex[:10]}"


def live_factory(hybrid: str, names: list[str]) -> MakeIndex:
    def make(documents: Sequence[Document]) -> SearchIndex:
        name = fresh_name()
        names.append(name)
        config = OpenSearchConfig(hybrid=hybrid, refresh_writes=True, replicas=0)  # type: ignore[arg-type]
        index = OpenSearchIndex(live_client(), name, config=config)  # type: ignore[arg-type]
        dim = next(len(d.vector) for d in documents if d.vector is not None)
        index.create(dim)
        with index.loading():
            result = index.upsert(documents)
        assert result.failed == []
        return index

    return make


class TestLivePipelineContract(SearchIndexContract):
    @pytest.fixture
    def make_index(self, live_names: list[str]) -> MakeIndex:
        return live_factory("pipeline", live_names)


class TestLiveClientFusionContract(SearchIndexContract):
    @pytest.fixture
    def make_index(self, live_names: list[str]) -> MakeIndex:
        return live_factory("client", live_names)


def test_blue_green_alias_swap_and_prune_on_a_live_cluster(live_names: list[str]) -> None:
    alias = fresh_name()
    client = live_client()
    config = OpenSearchConfig(replicas=0, keep_indexes=1)
    runs = []
    for run in ("a", "b"):
        index = OpenSearchIndex(client, f"{alias}-{run}", config=config)  # type: ignore[arg-type]
        live_names.append(index.name)
        index.create(4)
        with index.loading():
            index.upsert([Document(f"{run}1", f"run {run}", np.ones(4, dtype=np.float32))])
        runs.append(index)
        index.swap_alias(alias)
        reader = OpenSearchIndex(client, alias)  # type: ignore[arg-type]
        assert reader.count() == 1 and reader.get(f"{run}1") is not None
    assert runs[1].alias_targets(alias) == [runs[1].name]
    assert not runs[0].exists()  # pruned: keep 1
    assert OpenSearchIndex(client, alias).search(SearchQuery(text="run")).total == 1  # type: ignore[arg-type]
