"""Fixtures for the engine tests: OpenSearch indexes on the real node, deleted afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from medsearch.index.opensearch import OpenSearchConfig, OpenSearchIndex
from tests.support.opensearch_node import MakeNodeIndex, fresh_name


@pytest.fixture
def node_index(opensearch_client: Any) -> Iterator[MakeNodeIndex]:
    """Make :class:`OpenSearchIndex` objects on the node (``make(config, name=None)``, a fresh
    name by default); every physical index made through it is deleted after the test."""
    made: list[OpenSearchIndex] = []

    def make(config: OpenSearchConfig | None = None, *, name: str | None = None) -> OpenSearchIndex:
        index = OpenSearchIndex(opensearch_client, name or fresh_name(), config=config)
        made.append(index)
        return index

    yield make
    for index in made:
        index.drop()
