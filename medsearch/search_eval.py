"""Search evaluation: how well each search mode ranks a query set's relevant images.

Model evaluation (:mod:`medsearch.evaluate`) scores vectors; this scores what a user gets — the
search service's own text, vector and hybrid rankings over an index — with the same nDCG@k and
R@k definitions. It also counts relevant *captionless* images each mode finds: BM25 cannot see
them, so they show what the vectors add.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medsearch.errors import InvalidInputError, NotFoundError
from medsearch.evaluate import QUERY_K, graded_metrics

if TYPE_CHECKING:
    from medsearch.data.queries import Query
    from medsearch.search import SearchService

log = logging.getLogger(__name__)

SEARCH_MODES = ("text", "vector", "hybrid")


@dataclass(frozen=True)
class _Judged:
    """A query with its judgments restricted to indexed images."""

    text: str
    relevance: Mapping[str, float]
    captionless: frozenset[str]


def _judge(service: SearchService, queries: Sequence[Query]) -> list[_Judged]:
    """Keep judgments of images the index holds, noting which of them have no caption."""
    known: dict[str, bool] = {}  # image_id -> captionless

    def captionless(image_id: str) -> bool | None:
        if image_id not in known:
            try:
                known[image_id] = service.record(image_id).caption is None
            except (NotFoundError, InvalidInputError):
                return None
        return known[image_id]

    judged = []
    for query in queries:
        relevance = {}
        silent = set()
        for image_id, grade in query.relevance.items():
            state = captionless(image_id)
            if state is None or grade <= 0:
                continue
            relevance[image_id] = float(grade)
            if state:
                silent.add(image_id)
        if relevance:
            judged.append(_Judged(query.query, relevance, frozenset(silent)))
    return judged


def evaluate_search(
    service: SearchService,
    queries: Sequence[Query],
    *,
    modes: Sequence[str] = SEARCH_MODES,
    alpha: float = 0.5,
    k: int = QUERY_K,
) -> dict[str, Any]:
    """Return nDCG@k, R@k and captionless hits per mode over a query set.

    Only images the index holds are judged; queries with no relevant image there are skipped.
    """
    judged = _judge(service, queries)
    if not judged:
        raise InvalidInputError("no query has a relevant image in this index")
    report: dict[str, Any] = {"queries": len(judged), "k": k, "alpha": alpha, "modes": {}}
    for mode in modes:
        ndcgs, recalls, silent_found, silent_total = [], [], 0, 0
        for query in judged:
            response = service.search(query.text, mode=mode, alpha=alpha, k=k)
            ranked = [hit.image_id for hit in response.results]
            top = np.array([query.relevance.get(image_id, 0.0) for image_id in ranked])
            ndcg, recall = graded_metrics(top, np.array(list(query.relevance.values())), k=k)
            ndcgs.append(ndcg)
            recalls.append(recall)
            silent_found += len(query.captionless.intersection(ranked))
            silent_total += min(len(query.captionless), k)
        report["modes"][mode] = {
            f"ndcg@{k}": round(float(np.mean(ndcgs)), 4),
            f"r@{k}": round(float(np.mean(recalls)), 4),
            "captionless_found": silent_found,
            "captionless_relevant": silent_total,
        }
        log.info("search mode %s: %s", mode, report["modes"][mode])
    return report
