"""The search-index protocol: what the search service needs from any engine.

The embedded engine (one directory on disk) and the OpenSearch engine both implement
:class:`SearchIndex`; the service, the API and the loader only ever see this protocol.
A query names a caption text (BM25), a vector (kNN) or both (hybrid, fused by
:mod:`medsearch.fusion`), plus metadata filters and a page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Filters: metadata field -> accepted values (OR within a field, AND across fields).
Filters = Mapping[str, Sequence[str]]

MAX_K = 100
# Each sub-query of a hybrid search contributes its own top N = max(k + offset, MIN_CANDIDATES).
MIN_CANDIDATES = 100


@dataclass(frozen=True)
class Document:
    """What an index stores per image: caption for BM25, vector for kNN, metadata for filters."""

    image_id: str
    caption: str | None
    vector: np.ndarray | None
    image: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchQuery:
    """One search: text and/or vector, hybrid weight, filters, a page, ids to leave out."""

    text: str | None = None
    vector: np.ndarray | None = None
    alpha: float = 0.5
    k: int = 10
    offset: int = 0
    filters: Filters = field(default_factory=dict)
    exclude_ids: frozenset[str] = frozenset()

    @property
    def candidates(self) -> int:
        """How many hits each sub-query contributes (enough to fill the requested page)."""
        return max(self.k + self.offset, MIN_CANDIDATES)


@dataclass(frozen=True)
class Hit:
    """One ranked result with its fused score and the raw component scores (None if absent)."""

    image_id: str
    score: float
    text_score: float | None = None
    vector_score: float | None = None


@dataclass(frozen=True)
class SearchPage:
    """A page of hits and the total number of matches, stable across pages of one query.

    total: text-only = documents matching the caption query; vector-only = documents with a vector
    (after filters); hybrid = the union of both sets.
    """

    hits: list[Hit]
    total: int


@dataclass
class UpsertResult:
    """Outcome of a bulk upsert: how many documents were written and which failed (id, reason)."""

    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@runtime_checkable
class SearchIndex(Protocol):
    """What every engine offers: idempotent upserts by image_id, lookups, search and facets."""

    def upsert(self, documents: Iterable[Document]) -> UpsertResult:
        """Insert or replace documents by ``image_id`` (idempotent)."""
        ...

    def delete(self, image_ids: Iterable[str]) -> int:
        """Remove documents; return how many existed."""
        ...

    def get(self, image_id: str) -> Document | None:
        """Return one document (with its vector) or ``None``."""
        ...

    def get_many(
        self, image_ids: Sequence[str], *, with_vectors: bool = True
    ) -> dict[str, Document]:
        """Return the documents that exist among ``image_ids``, by id, in one lookup.

        A page of results needs every hit's caption and metadata: one lookup instead of one per
        hit saves a round trip per result on a remote engine. ``with_vectors=False`` leaves the
        vectors out (``vector`` is then None for every document), which is most of the bytes.
        """
        ...

    def count(self) -> int:
        """Return the number of documents."""
        ...

    def search(self, query: SearchQuery) -> SearchPage:
        """Rank documents for a text, vector or hybrid query."""
        ...

    def facets(self, fields: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        """Return filterable metadata fields with their values and document counts."""
        ...

    @property
    def dim(self) -> int | None:
        """The vector dimension, or ``None`` while the index holds no vectors."""
        ...
