"""The search-index protocol: what the search service needs from any engine.

The embedded engine (one directory on disk) and the OpenSearch engine both implement
:class:`SearchIndex`; the service, the API and the loader only ever see this protocol.
A query names a caption text (BM25), a vector (kNN) or both (hybrid, fused by
:mod:`medsearch.fusion`), plus metadata filters and a page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from medsearch.relevance import VectorFloor

# Filters: metadata field -> accepted values (OR within a field, AND across fields).
Filters = Mapping[str, Sequence[str]]

MAX_K = 100
# Each sub-query of a hybrid search contributes its top N = max(k + offset, HYBRID_DEPTH), on
# every engine (text and vector queries alone cut their one list at k + offset). Min-max
# normalisation runs over these lists, so N moves fused scores: measured by bench/fusion_depth.py,
# the top 10 at depth 10/30/50 kept only 0.61/0.68/0.80 of the depth-100 top 10 on the demo
# queries (0.88/0.92/0.95 on MedPix) with R@10 within 0.02, so the floor stays at 100 and the
# cost is saved by sending both lists in one round trip instead.
HYBRID_DEPTH = 100
MAX_DEPTH = 1000
# A total counted only up to a bound says so: "eq" (exact) or "gte" (at least this many).
TotalRelation = Literal["eq", "gte"]


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
    # The least number of hits each hybrid sub-query contributes (None: HYBRID_DEPTH).
    depth: int | None = None
    # The raw cosine this query's vector hits must reach to count as matches (the index's
    # VectorFloor.for_query of a text query's vector): given, a vector or hybrid total counts
    # only matches (see SearchPage).
    vector_floor: float | None = None

    @property
    def candidates(self) -> int:
        """How many hits each hybrid sub-query contributes: the page's end, at least the depth."""
        return max(self.k + self.offset, HYBRID_DEPTH if self.depth is None else self.depth)


@dataclass(frozen=True)
class Hit:
    """One ranked result with its fused score and the raw component scores (None if absent).

    A hit of client-side fusion also carries the two weighted, min-max normalised values it was
    fused from (``text_part + vector_part == score``), so a view can split the score exactly;
    None where the score was not fused here (one list alone, or OpenSearch's pipeline).
    """

    image_id: str
    score: float
    text_score: float | None = None
    vector_score: float | None = None
    text_part: float | None = None
    vector_part: float | None = None


@dataclass(frozen=True)
class SearchPage:
    """A page of hits and the total number of matches, stable across pages of one query.

    total: text-only = documents matching the caption query; vector-only = documents with a vector
    (after filters); hybrid = the union of both sets. With a ``vector_floor`` in the query, a
    vector document counts only if its cosine reaches the floor, and only among each list's top
    ``candidates`` (:func:`medsearch.fusion.confident_total`). ``total_relation`` is ``"gte"``
    where the engine stopped counting at a bound (OpenSearch's text totals, past 10,000 by
    default; a top list whose every hit clears the floor).
    """

    hits: list[Hit]
    total: int
    # "gte" where the engine stopped counting at a bound (total is then a lower bound).
    total_relation: TotalRelation = "eq"


@dataclass
class UpsertResult:
    """Outcome of a bulk upsert: how many documents were written and which failed (id, reason)."""

    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class IndexModel:
    """The model whose vectors an index holds, as the index's metadata records it.

    ``fingerprint`` is the weight fingerprint (:attr:`medsearch.vectors.Encoder.fingerprint`);
    None in an index built before fingerprints were stored, or from vectors without one.
    """

    model_id: str | None = None
    fingerprint: str | None = None
    # When a text query's cosine is evidence of a match, calibrated on the corpus's own captions
    # (medsearch.relevance); None where the index records none.
    vector_floor: VectorFloor | None = None


@runtime_checkable
class RecordsModel(Protocol):
    """An index that records which model made its vectors (both engines do)."""

    def indexed_model(self) -> IndexModel:
        """Return the model id and weight fingerprint stored with the index's vectors."""
        ...


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
