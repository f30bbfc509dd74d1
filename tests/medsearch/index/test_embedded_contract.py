"""The embedded engine against the shared engine contract (index_contract.py beside this file)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from index_contract import MakeIndex, SearchIndexContract

from medsearch.index.base import Document, SearchIndex
from medsearch.index.embedded import EmbeddedIndex


class TestEmbeddedContract(SearchIndexContract):
    @pytest.fixture
    def make_index(self, tmp_path: Path) -> MakeIndex:
        def make(documents: Sequence[Document]) -> SearchIndex:
            index = EmbeddedIndex.create(tmp_path / "index")
            index.upsert(documents)
            return index

        return make
