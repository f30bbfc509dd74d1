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

from medsearch.errors import InvalidInputError
from medsearch.evaluate import QUERY_K, graded_metrics
from medsearch.index.base import SearchIndex, SearchQuery
from medsearch.search import DEFAULT_ALPHA, TEXT_MODES, SearchService
from medsearch.vectors import encoder_fingerprint

if TYPE_CHECKING:
    from PIL import Image

    from medsearch.data.queries import Query
    from medsearch.vectors import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Judged:
    """A query with its judgments restricted to indexed images."""

    text: str
    relevance: Mapping[str, float]
    captionless: frozenset[str]


def _judge(service: SearchService, queries: Sequence[Query]) -> list[_Judged]:
    """Keep judgments of images the index holds, noting which of them have no caption."""
    wanted = {i for query in queries for i, grade in query.relevance.items() if grade > 0}
    # One lookup for every judged image; only captions are read, so vectors are left out.
    documents = service.index.get_many(sorted(wanted), with_vectors=False)
    judged = []
    for query in queries:
        relevance = {
            image_id: float(grade)
            for image_id, grade in query.relevance.items()
            if grade > 0 and image_id in documents
        }
        if relevance:
            silent = frozenset(i for i in relevance if documents[i].caption is None)
            judged.append(_Judged(query.query, relevance, silent))
    return judged


class _MemoEncoder:
    """The service's encoder, encoding each query text once for a whole evaluation.

    The vector and hybrid modes, and hybrid at every alpha of a sweep, search the same texts:
    without the memo each text would go through the text tower once per mode and alpha.
    """

    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder
        self._vectors: dict[str, np.ndarray] = {}
        self.model_id = encoder.model_id
        self.name = encoder.name
        self.dim = encoder.dim
        self.fingerprint = encoder_fingerprint(encoder)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Return the texts' vectors, encoding only those not seen before."""
        missing = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if missing:
            encoded = self._encoder.encode_texts(missing, batch_size)
            self._vectors.update(zip(missing, encoded, strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vectors[text] for text in texts])

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode images with the wrapped encoder (evaluation searches by text only)."""
        return self._encoder.encode_images(images, batch_size)


# Hybrid weights tried by the sweep: which alpha suits a corpus depends on how good its captions
# and its model are, so the report shows the whole curve rather than one point.
ALPHA_SWEEP = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _score_mode(
    service: SearchService, judged: Sequence[_Judged], mode: str, alpha: float, k: int
) -> dict[str, Any]:
    """Score one mode (at one alpha) over the judged queries."""
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
    return {
        f"ndcg@{k}": round(float(np.mean(ndcgs)), 4),
        f"r@{k}": round(float(np.mean(recalls)), 4),
        "captionless_found": silent_found,
        "captionless_relevant": silent_total,
    }


def evaluate_search(
    service: SearchService,
    queries: Sequence[Query],
    *,
    modes: Sequence[str] = TEXT_MODES,
    alpha: float = DEFAULT_ALPHA,
    k: int = QUERY_K,
    sweep: Sequence[float] = (),
) -> dict[str, Any]:
    """Return nDCG@k, R@k and captionless hits per mode over a query set.

    Only images the index holds are judged; queries with no relevant image there are skipped.
    With ``sweep``, hybrid is also scored at each of those alphas (``alpha_sweep``), and
    ``best_alpha`` names the one with the highest R@k — a guide for choosing the weight, measured
    on the same queries, so not an unbiased estimate of it.
    """
    judged = _judge(service, queries)
    if not judged:
        raise InvalidInputError("no query has a relevant image in this index")
    if service.encoder is not None:
        service = SearchService(
            service.index, _MemoEncoder(service.encoder), image_url=service.image_url
        )
    report: dict[str, Any] = {"queries": len(judged), "k": k, "alpha": alpha, "modes": {}}
    for mode in modes:
        report["modes"][mode] = _score_mode(service, judged, mode, alpha, k)
        log.info("search mode %s: %s", mode, report["modes"][mode])
    if sweep:
        # The hybrid row already scored the report's own alpha; the sweep reuses it.
        curve = {
            f"{a:g}": report["modes"]["hybrid"]
            if a == alpha and "hybrid" in report["modes"]
            else _score_mode(service, judged, "hybrid", a, k)
            for a in sweep
        }
        report["alpha_sweep"] = curve
        report["best_alpha"] = float(max(curve, key=lambda a: (curve[a][f"r@{k}"], -float(a))))
    return report


def depth_agreement(
    index: SearchIndex,
    encoder: Encoder,
    queries: Sequence[Query],
    depths: Sequence[int],
    *,
    reference: int = 100,
    alpha: float = DEFAULT_ALPHA,
    k: int = QUERY_K,
) -> dict[str, Any]:
    """Compare hybrid rankings at each fusion depth with those at ``reference``.

    Min-max normalisation runs over each sub-query's top N, so N moves fused scores and may
    reorder the head; this measures by how much on a real query set: per depth, the mean share
    of the reference top k kept, and R@k beside the reference's. Text and vector rankings do
    not depend on the depth (each list is cut at the page), so only hybrid is compared.
    """
    texts = [query.query for query in queries]
    vectors = encoder.encode_texts(texts)

    def ranked(text: str, vector: np.ndarray, depth: int) -> list[str]:
        query = SearchQuery(text=text, vector=vector, alpha=alpha, k=k, depth=depth)
        return [hit.image_id for hit in index.search(query).hits]

    def recall(query: Query, ids: Sequence[str]) -> float | None:
        grades = [float(g) for g in query.relevance.values() if g > 0]
        if not grades:
            return None
        top = np.array([float(query.relevance.get(i, 0.0)) for i in ids])
        return graded_metrics(top, np.array(grades), k=k)[1]

    base = [ranked(t, v, reference) for t, v in zip(texts, vectors, strict=True)]
    base_recalls = [
        r for q, ids in zip(queries, base, strict=True) if (r := recall(q, ids)) is not None
    ]
    report: dict[str, Any] = {
        "queries": len(queries),
        "k": k,
        "alpha": alpha,
        "reference_depth": reference,
        f"reference_r@{k}": round(float(np.mean(base_recalls)), 4) if base_recalls else None,
        "depths": {},
    }
    for depth in depths:
        overlaps, recalls = [], []
        for query, text, vector, want in zip(queries, texts, vectors, base, strict=True):
            got = ranked(text, vector, depth)
            overlaps.append(len(set(got) & set(want)) / max(len(want), 1))
            if (r := recall(query, got)) is not None:
                recalls.append(r)
        report["depths"][str(depth)] = {
            "overlap": round(float(np.mean(overlaps)), 4),
            "min_overlap": round(float(np.min(overlaps)), 4),
            f"r@{k}": round(float(np.mean(recalls)), 4) if recalls else None,
        }
    return report
