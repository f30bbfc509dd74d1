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
