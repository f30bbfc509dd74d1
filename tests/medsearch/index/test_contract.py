"""Every engine against the shared engine contract (index_contract.py), from one fixture.

The same tests run on the embedded engine, on the OpenSearch engine over the in-memory fake
cluster and over the real node, each OpenSearch target in both hybrid paths (fusion in a search
pipeline, and client-side fusion with medsearch.fusion), so the engines cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from index_contract import MakeIndex, SearchIndexContract, assert_ann_recall, corpus

from medsearch.index.base import Document, SearchIndex
from medsearch.index.embedded import EmbeddedIndex
from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex
from tests.support.fake_opensearch import FakeCluster, fake_client
from tests.support.opensearch_node import MakeNodeIndex, fresh_name

ENGINES = [
    "embedded",
    "fake-pipeline",
    "fake-client",
    pytest.param("node-pipeline", marks=pytest.mark.live),
    pytest.param("node-client", marks=pytest.mark.live),
]


def _first_dim(documents: Sequence[Document]) -> int:
    return next(len(d.vector) for d in documents if d.vector is not None)


def embedded_factory(folder: Path) -> MakeIndex:
    def make(documents: Sequence[Document]) -> SearchIndex:
        index = EmbeddedIndex.create(folder / "index")
        index.upsert(documents)
        return index

    return make


def fake_factory(hybrid: str) -> MakeIndex:
    def make(documents: Sequence[Document]) -> SearchIndex:
        config = OpenSearchConfig(hybrid=hybrid, refresh_writes=True)  # type: ignore[arg-type]
        index = OpenSearchIndex(fake_client(FakeCluster()), "contract", config=config)
        index.create(_first_dim(documents), loading=False)
        assert index.upsert(documents).failed == []
        return index

    return make


def node_factory(node_index: MakeNodeIndex, hybrid: str) -> MakeIndex:
    def make(documents: Sequence[Document]) -> SearchIndex:
        config = OpenSearchConfig(hybrid=hybrid, refresh_writes=True, replicas=0)  # type: ignore[arg-type]
        index = node_index(config)
        index.create(_first_dim(documents))
        with index.loading():  # the loader's path: refresh off, then restored
            assert index.upsert(documents).failed == []
        return index

    return make


# The contract tests that write; every other one only reads the corpus, so on the node (where
# making an index costs about a second) they share one loaded copy.
WRITING_TESTS = frozenset(
    {
        "test_upsert_is_idempotent",
        "test_upsert_replaces_by_image_id",
        "test_delete_removes_documents",
        "test_dimension_mismatch_is_invalid_input",
    }
)


@pytest.fixture(scope="session")
def node_corpus(opensearch_client: Any) -> Iterator[str]:
    """The contract corpus, loaded once on the node for the tests that only read it."""
    index = OpenSearchIndex(opensearch_client, fresh_name(), config=OpenSearchConfig(replicas=0))
    documents = corpus()
    index.create(_first_dim(documents))
    with index.loading():
        assert index.upsert(documents).failed == []
    yield index.name
    index.drop()


class TestEngineContract(SearchIndexContract):
    @pytest.fixture(params=ENGINES)
    def engine(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def index(
        self, engine: str, make_index: MakeIndex, request: pytest.FixtureRequest
    ) -> SearchIndex:
        kind, _, hybrid = engine.partition("-")
        if kind == "node" and request.node.originalname not in WRITING_TESTS:
            config = OpenSearchConfig(hybrid=hybrid, replicas=0)  # type: ignore[arg-type]
            client = request.getfixturevalue("opensearch_client")
            return OpenSearchIndex(client, request.getfixturevalue("node_corpus"), config=config)
        return make_index(corpus())

    @pytest.fixture
    def make_index(self, engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> MakeIndex:
        kind, _, hybrid = engine.partition("-")
        if kind == "embedded":
            return embedded_factory(tmp_path)
        if kind == "fake":
            return fake_factory(hybrid)
        return node_factory(request.getfixturevalue("node_index"), hybrid)

    # ANN recall runs once per HNSW implementation (below): the fake's kNN is exact, so recall
    # there would say nothing, and node-client sends node-pipeline's kNN request.
    test_ann_recall_at_10_on_embedding_like_vectors = None


# Building the graph: 50k vectors take 10-60 s in the embedded engine; on the node, bulk loading
# and the lucene graph of 50k 512-d vectors took 2.5-6 minutes on 2 cores, so it gets 20k.
@pytest.mark.slow
@pytest.mark.parametrize(
    "engine", ["embedded", pytest.param("node-pipeline", marks=pytest.mark.live)]
)
def test_ann_recall_at_10_on_embedding_like_vectors(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if engine == "embedded":
        assert_ann_recall(embedded_factory(tmp_path))
    else:
        make = node_factory(request.getfixturevalue("node_index"), "pipeline")
        assert_ann_recall(make, n=20_000)
