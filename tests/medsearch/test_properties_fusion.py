"""Properties of hybrid fusion (medsearch.fusion.fuse), for any pair of ranked lists.

Scores are drawn on a grid (integers 0-500 for BM25, hundredths in [-1, 1] for cosine) so that
the gap between two distinct scores normalises to more than ``MIN_SCORE``: OpenSearch's min-max
lifts a list's minimum from 0 to 0.001, which can rank it above a score that normalises to less
(pinned as an explicit case below, since the embedded engine must rank as OpenSearch does).
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from medsearch.fusion import MIN_SCORE, fuse

IDS = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=6)


def scored(values: st.SearchStrategy[float]) -> st.SearchStrategy[list[tuple[str, float]]]:
    """A sub-query's list: unique ids with raw scores, in no particular order."""
    return st.lists(st.tuples(IDS, values), max_size=30, unique_by=lambda pair: pair[0])


BM25 = scored(st.integers(0, 500).map(float))
COSINE = scored(st.integers(-100, 100).map(lambda i: i / 100))
ALPHA = st.floats(0.0, 1.0, allow_nan=False)


def ranked(scores: list[tuple[str, float]]) -> list[str]:
    """The ids of one list best first, ties by id (the order an engine returns)."""
    return [image_id for image_id, _ in sorted(scores, key=lambda p: (-p[1], p[0]))]


@settings(deadline=None)
@given(text=BM25, vector=COSINE, alpha=ALPHA)
def test_given_any_lists_when_fused_then_scores_in_0_1_each_id_once_and_best_first(
    text: list[tuple[str, float]], vector: list[tuple[str, float]], alpha: float
) -> None:
    hits = fuse(text, vector, alpha)
    assert sorted(h.image_id for h in hits) == sorted({i for i, _ in text} | {i for i, _ in vector})
    assert all(0.0 <= h.score <= 1.0 + 1e-12 and math.isfinite(h.score) for h in hits)
    assert [(-h.score, h.image_id) for h in hits] == sorted((-h.score, h.image_id) for h in hits)
    raw_text, raw_vector = dict(text), dict(vector)
    assert all(h.text_score == raw_text.get(h.image_id) for h in hits)
    assert all(h.vector_score == raw_vector.get(h.image_id) for h in hits)


@settings(deadline=None)
@given(text=BM25, vector=COSINE)
def test_given_alpha_0_when_fused_then_bm25_order_then_vector_only_ids_by_id(
    text: list[tuple[str, float]], vector: list[tuple[str, float]]
) -> None:
    ids = [h.image_id for h in fuse(text, vector, 0.0)]
    only_vector = sorted({i for i, _ in vector} - {i for i, _ in text})
    assert ids == ranked(text) + only_vector


@settings(deadline=None)
@given(text=BM25, vector=COSINE)
def test_given_alpha_1_when_fused_then_vector_order_then_text_only_ids_by_id(
    text: list[tuple[str, float]], vector: list[tuple[str, float]]
) -> None:
    ids = [h.image_id for h in fuse(text, vector, 1.0)]
    only_text = sorted({i for i, _ in text} - {i for i, _ in vector})
    assert ids == ranked(vector) + only_text


@settings(deadline=None)
@given(
    text=BM25,
    vector=COSINE,
    alpha=ALPHA,
    limit=st.integers(0, 40),
    data=st.data(),
)
def test_given_permuted_input_lists_when_fused_then_the_same_ranking_and_limit_is_a_prefix(
    text: list[tuple[str, float]],
    vector: list[tuple[str, float]],
    alpha: float,
    limit: int,
    data: st.DataObject,
) -> None:
    hits = fuse(text, vector, alpha)
    shuffled = fuse(data.draw(st.permutations(text)), data.draw(st.permutations(vector)), alpha)
    assert shuffled == hits
    assert fuse(text, vector, alpha, limit=limit) == hits[:limit]


@settings(deadline=None)
@given(
    text=BM25,
    alpha=ALPHA,
    scale=st.sampled_from([0.5, 2.0, 2.2, 10.0]),
    shift=st.sampled_from([-3.0, 0.0, 1.0]),
)
def test_given_a_positive_affine_change_of_one_list_when_fused_then_the_same_ranking(
    text: list[tuple[str, float]], alpha: float, scale: float, shift: float
) -> None:
    # BM25 with or without Lucene's (k1 + 1) factor, cosine or (1 + cosine) / 2: the same ranking
    vector = [(i, s / 500) for i, s in text[::-1]]
    changed = [(i, s * scale + shift) for i, s in text]
    assert [h.image_id for h in fuse(changed, vector, alpha)] == [
        h.image_id for h in fuse(text, vector, alpha)
    ]


def test_given_a_score_normalised_under_min_score_when_fused_then_the_minimum_outranks_it() -> None:
    # OpenSearch's min_max lifts the minimum to MIN_SCORE; a score normalising to less stays.
    text = [("top", 10_000.0), ("low", 1.0), ("min", 0.0)]
    assert MIN_SCORE > 1.0 / 10_000.0  # low's normalised score
    assert [h.image_id for h in fuse(text, [], 0.0)] == ["top", "min", "low"]
