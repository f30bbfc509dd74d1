"""Hybrid fusion: min-max normalisation and a weighted sum, the one implementation of all engines.

This reproduces OpenSearch's ``normalization-processor`` with ``min_max`` normalisation and
``arithmetic_mean`` combination, weights ``[1 - alpha, alpha]`` (text first, vector second), so the
embedded engine and the OpenSearch engine (client-side or through the search pipeline) rank alike:

- Each sub-query's list is normalised on its own: ``(s - min) / (max - min)``. As in OpenSearch, a
  normalised score of exactly 0 (the list's minimum) becomes ``MIN_SCORE`` = 0.001, so the last
  document of a list still ranks above one missing from it, and a list whose scores are all equal
  (a single hit included) gives every document ``SINGLE_RESULT_SCORE`` = 1.0.
- A document missing from a list scores 0 there (its weight still counts).
- ``score = ((1 - alpha) * text + alpha * vector) / ((1 - alpha) + alpha)`` — the weights sum to 1,
  so this is ``(1 - alpha) * text + alpha * vector``.

Min-max normalisation is invariant to any positive affine change of a list's scores, so an engine
may report BM25 with or without Lucene's constant factor, or kNN scores as cosine or as
OpenSearch's ``(1 + cosine) / 2``, and the fused ranking is the same.

Ties are broken by ``image_id`` (ascending), so a ranking never depends on dict or heap order.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

from medsearch.errors import InvalidInputError
from medsearch.index.base import Hit, TotalRelation

# OpenSearch neural-search MinMaxScoreNormalizationTechnique constants.
MIN_SCORE = 0.001
SINGLE_RESULT_SCORE = 1.0

ScoredIds = Sequence[tuple[str, float]]


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float in [0, 1] or raise: it is the vector weight of a hybrid query."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise InvalidInputError(f"alpha must be a number between 0 and 1, got {alpha!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"alpha must be between 0 and 1, got {alpha!r}")
    return value


def normalize_min_max(scores: ScoredIds) -> dict[str, float]:
    """Min-max normalise one list of (image_id, raw score) exactly as OpenSearch's ``min_max``."""
    if not scores:
        return {}
    values = [float(score) for _, score in scores]
    low, high = min(values), max(values)
    normalised: dict[str, float] = {}
    for (image_id, _), score in zip(scores, values, strict=True):
        if high == low:
            value = SINGLE_RESULT_SCORE
        else:
            value = (score - low) / (high - low)
            if value == 0.0:
                value = MIN_SCORE
        normalised[image_id] = value
    return normalised


def sort_hits(hits: Iterable[Hit]) -> list[Hit]:
    """Order hits by score (descending), then image_id, so equal scores rank deterministically."""
    return sorted(hits, key=lambda hit: (-hit.score, hit.image_id))


def fuse(text: ScoredIds, vector: ScoredIds, alpha: float, limit: int | None = None) -> list[Hit]:
    """Fuse a BM25 list and a kNN list into one ranking; raw scores are kept on each hit.

    ``text`` and ``vector`` are each sub-query's own top N as (image_id, raw score); ``alpha`` is
    the vector weight. Returns every document of either list (or the best ``limit``), best first;
    each hit carries the two weighted normalised parts its score is the sum of.
    """
    weight_vector = check_alpha(alpha)
    weight_text = 1.0 - weight_vector
    raw_text: Mapping[str, float] = {image_id: float(score) for image_id, score in text}
    raw_vector: Mapping[str, float] = {image_id: float(score) for image_id, score in vector}
    norm_text = normalize_min_max(text)
    norm_vector = normalize_min_max(vector)
    # Missing from a list -> 0 there; both weights count (they sum to 1).
    parts = {
        image_id: (
            weight_text * norm_text.get(image_id, 0.0),
            weight_vector * norm_vector.get(image_id, 0.0),
        )
        for image_id in raw_text.keys() | raw_vector.keys()
    }
    fused = [
        (-(text_part + vector_part), image_id)
        for image_id, (text_part, vector_part) in parts.items()
    ]
    fused.sort()
    if limit is not None:
        fused = fused[: max(limit, 0)]
    return [
        Hit(
            image_id=image_id,
            score=-negative,
            text_score=raw_text.get(image_id),
            vector_score=raw_vector.get(image_id),
            text_part=parts[image_id][0],
            vector_part=parts[image_id][1],
        )
        for negative, image_id in fused
    ]


def confident_total(
    text_ids: Collection[str],
    text_total: int,
    text_relation: TotalRelation,
    vector: ScoredIds,
    depth: int,
    floor: float,
) -> tuple[int, TotalRelation]:
    """Return how many documents match a query whose vector side has a calibrated floor, and
    whether that count is exact: text matches plus vector hits at or above ``floor``.

    ``text_ids``: the text list as searched (its top N; empty for a vector query), of
    ``text_total`` matches; ``vector``: the kNN top ``depth``, best first. Counting every
    document above the floor would take a scan of the corpus; the top list suffices, since a list
    that reaches a hit below the floor (or ends before ``depth``) holds every one above it. A list
    all above the floor is counted as a lower bound (``gte``), as is a text list cut before its
    last match (a vector hit outside it may be a text match: only the larger side is counted).
    Both engines count this way, so their totals agree.
    """
    confident = {image_id for image_id, score in vector if float(score) >= floor}
    vector_complete = len(vector) < depth or len(confident) < len(vector)
    text_complete = text_relation == "eq" and len(text_ids) >= text_total
    if text_complete:
        total = text_total + len(confident - set(text_ids))
    else:
        total = max(text_total, len(confident))
    return total, "eq" if text_complete and vector_complete else "gte"
