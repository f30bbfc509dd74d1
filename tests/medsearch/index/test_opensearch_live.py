"""The OpenSearch engine's run lifecycle on the real node (the engine contract is test_contract.py).

The node is the suite's own (``opensearch_url`` in tests/conftest.py starts one), or a cluster
named by ``MEDSEARCH_OPENSEARCH_URL``, e.g.::

    MEDSEARCH_OPENSEARCH_URL=https://admin:Medsearch-2024@localhost:9200 \\
        MEDSEARCH_OPENSEARCH_VERIFY_CERTS=0 .venv/bin/pytest -m live

``MEDSEARCH_OPENSEARCH_AUTH=sigv4`` (with ``MEDSEARCH_AWS_REGION``) signs with the AWS credentials
of the environment instead. Every index made here is named ``medsearch-test-*`` and is deleted
afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest

from medsearch.index.base import Document, SearchQuery
from medsearch.index.opensearch import OpenSearchConfig
from tests.support.opensearch_node import MakeNodeIndex, fresh_name

pytestmark = pytest.mark.live


def test_blue_green_alias_swap_and_prune_on_a_live_cluster(node_index: MakeNodeIndex) -> None:
    alias = fresh_name()
    config = OpenSearchConfig(replicas=0, keep_indexes=1)
    runs = []
    for run in ("a", "b"):
        index = node_index(config, name=f"{alias}-{run}")
        index.create(4, alias=alias)
        with index.loading():
            index.upsert([Document(f"{run}1", f"run {run}", np.ones(4, dtype=np.float32))])
        runs.append(index)
        index.swap_alias(alias)
        reader = index.with_name(alias)
        assert reader.count() == 1 and reader.get(f"{run}1") is not None
    assert runs[1].alias_targets(alias) == [runs[1].name]
    assert not runs[0].exists()  # pruned: keep 1
    assert runs[1].with_name(alias).search(SearchQuery(text="run")).total == 1


def _corpus(n: int, *, without_vector: int = 0) -> list[Document]:
    """``n`` documents whose captions all say "nodule"; the last ``without_vector`` have none."""
    rng = np.random.default_rng(5)
    docs = []
    for i in range(n):
        vector = None if i >= n - without_vector else rng.standard_normal(8).astype(np.float32)
        modality = "CT" if i % 2 else "MRI"
        docs.append(
            Document(f"n{i:03d}", f"nodule case {i}", vector, metadata={"modality": modality})
        )
    return docs


def test_totals_are_exact_below_the_bound_and_a_lower_bound_above_it(
    node_index: MakeNodeIndex,
) -> None:
    # Given 30 captioned documents, 4 of them without a vector, and a total bound of 20
    index = node_index(OpenSearchConfig(replicas=0, total_hits_limit=20))
    index.create(8)
    with index.loading():
        assert index.upsert(_corpus(30, without_vector=4)).failed == []
    vector = np.ones(8, dtype=np.float32)
    # When a text query matches all 30: counted to the bound and marked as a lower bound
    text = index.search(SearchQuery(text="nodule", k=5))
    assert (text.total, text.total_relation) == (20, "gte")
    # and one matching fewer than the bound is exact
    few = index.search(SearchQuery(text="nodule", k=5, filters={"modality": ["CT"]}))
    assert (few.total, few.total_relation) == (15, "eq")
    # Then vector and hybrid totals are exact: 26 with a vector, plus the 4 text-only matches
    assert (index.search(SearchQuery(vector=vector)).total) == 26
    for hybrid in ("client", "pipeline"):
        engine = node_index(OpenSearchConfig(replicas=0, hybrid=hybrid), name=index.name)  # type: ignore[arg-type]
        page = engine.search(SearchQuery(text="nodule", vector=vector, k=5))
        assert (page.total, page.total_relation) == (30, "eq"), hybrid
        filtered = engine.search(
            SearchQuery(text="nodule", vector=vector, k=5, filters={"modality": ["CT"]})
        )
        assert filtered.total == 15, hybrid  # 13 CT with a vector + 2 CT without
        assert all(h.text_score is not None or h.vector_score is not None for h in page.hits)
    # And an in-place write keeps the totals true (the record's counts are dropped, then counted)
    index.delete(["n000", "n029"])  # one with a vector, one without
    index.refresh()
    assert index.search(SearchQuery(vector=vector)).total == 25
    assert index.search(SearchQuery(text="nodule", vector=vector, k=5)).total == 28


def test_a_finished_load_is_merged_to_the_chosen_segment_count(node_index: MakeNodeIndex) -> None:
    # Given a run loaded in many small bulk requests with refreshes between them (many segments)
    index = node_index(OpenSearchConfig(replicas=0, bulk_max_docs=10))
    index.create(8)
    docs = _corpus(60)
    for start in range(0, len(docs), 10):
        index.upsert(docs[start : start + 10])
        index.refresh()
    assert index.segments() > 1
    # When the load finishes
    index.finish_load()
    # Then the index has the segments merge_target chose (one per shard at this size), and
    # every document is still there
    from medsearch.index.opensearch import merge_target

    assert index.segments() == merge_target(len(docs)) == 1
    assert index.count() == len(docs)
