"""Hybrid fusion: OpenSearch's min_max + arithmetic_mean, checked against hand computations."""

from __future__ import annotations

import math

import pytest

from medsearch.errors import InvalidInputError
from medsearch.fusion import (
    MIN_SCORE,
    SINGLE_RESULT_SCORE,
    confident_total,
    fuse,
    normalize_min_max,
)


def test_given_scores_when_normalised_then_min_max_with_opensearch_floor() -> None:
    # Given raw scores 2, 4 and 10 — When normalised — Then (s - 2) / 8, with 0 lifted to 0.001.
    assert normalize_min_max([("a", 10.0), ("b", 4.0), ("c", 2.0)]) == {
        "a": 1.0,
        "b": 0.25,
        "c": MIN_SCORE,
    }


def test_given_single_or_equal_scores_when_normalised_then_all_one() -> None:
    assert normalize_min_max([("a", 3.5)]) == {"a": SINGLE_RESULT_SCORE}
    assert normalize_min_max([("a", 0.2), ("b", 0.2)]) == {"a": 1.0, "b": 1.0}
    assert normalize_min_max([]) == {}


def test_given_two_lists_when_fused_then_equals_hand_computation() -> None:
    # Given BM25 a=6, b=4, c=2 and cosine b=0.9, d=0.7, a=0.5, with alpha 0.3
    text = [("a", 6.0), ("b", 4.0), ("c", 2.0)]
    vector = [("b", 0.9), ("d", 0.7), ("a", 0.5)]
    # When fused
    hits = fuse(text, vector, alpha=0.3)
    # Then each score is 0.7 * minmax(text) + 0.3 * minmax(vector), missing counting 0:
    expected = {
        "a": 0.7 * 1.0 + 0.3 * MIN_SCORE,
        "b": 0.7 * 0.5 + 0.3 * 1.0,
        "c": 0.7 * MIN_SCORE + 0.3 * 0.0,
        "d": 0.7 * 0.0 + 0.3 * 0.5,
    }
    assert [h.image_id for h in hits] == ["a", "b", "d", "c"]
    for hit in hits:
        assert math.isclose(hit.score, expected[hit.image_id], rel_tol=1e-12)
    # and the raw component scores are kept (None where the document was not in a list).
    by_id = {h.image_id: h for h in hits}
    a = by_id["a"]
    assert (a.image_id, a.text_score, a.vector_score) == ("a", 6.0, 0.5)
    assert math.isclose(a.score, expected["a"], rel_tol=1e-12)
    assert by_id["c"].vector_score is None
    assert by_id["d"].text_score is None


@pytest.mark.parametrize(("alpha", "winner"), [(0.0, "t"), (1.0, "v")])
def test_given_extreme_alpha_when_fused_then_one_side_decides(alpha: float, winner: str) -> None:
    hits = fuse([("t", 5.0), ("v", 1.0)], [("v", 0.9), ("t", 0.1)], alpha=alpha)
    assert hits[0].image_id == winner


def test_given_ties_when_fused_then_ordered_by_image_id() -> None:
    # Given three documents that fuse to the same score — Then they rank by image_id.
    hits = fuse([("z", 1.0), ("m", 1.0)], [("a", 1.0)], alpha=0.5)
    assert [h.image_id for h in hits] == ["a", "m", "z"]
    assert len({h.score for h in hits}) == 1


def test_given_an_affine_change_of_scores_when_fused_then_same_ranking() -> None:
    # Given cosine vs OpenSearch's (1 + cosine) / 2 — Then the fused scores are identical.
    text = [("a", 3.0), ("b", 1.0), ("c", 2.0)]
    cosine = [("a", -0.2), ("b", 0.8), ("d", 0.1)]
    shifted = [(i, (1 + s) / 2) for i, s in cosine]
    assert [(h.image_id, round(h.score, 12)) for h in fuse(text, cosine, 0.6)] == [
        (h.image_id, round(h.score, 12)) for h in fuse(text, shifted, 0.6)
    ]


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "x", None])
def test_given_bad_alpha_when_fused_then_invalid_input(alpha: object) -> None:
    with pytest.raises(InvalidInputError, match="alpha"):
        fuse([("a", 1.0)], [("a", 1.0)], alpha=alpha)  # type: ignore[arg-type]


def test_given_a_limit_when_fused_then_the_best_hits_of_the_full_ranking_are_kept() -> None:
    # Given two lists whose fusion ranks a, b, d, c
    text = [("a", 6.0), ("b", 4.0), ("c", 2.0)]
    vector = [("b", 0.9), ("d", 0.7), ("a", 0.5)]
    full = fuse(text, vector, alpha=0.3)
    # When fused with a limit, then the head of the full ranking comes back, scores and all
    assert fuse(text, vector, alpha=0.3, limit=2) == full[:2]
    assert fuse(text, vector, alpha=0.3, limit=0) == []
    assert fuse(text, vector, alpha=0.3, limit=10) == full


def test_given_two_lists_when_fused_then_each_hit_carries_the_weighted_parts_of_its_score() -> None:
    # Given BM25 a=6, b=4, c=2 and cosine b=0.9, d=0.7, a=0.5, alpha 0.3 — When fused — Then
    # text_part = 0.7 * minmax(bm25), vector_part = 0.3 * minmax(cosine), and they sum to score.
    hits = fuse([("a", 6.0), ("b", 4.0), ("c", 2.0)], [("b", 0.9), ("d", 0.7), ("a", 0.5)], 0.3)
    parts = {h.image_id: (h.text_part, h.vector_part) for h in hits}
    assert parts["a"] == (pytest.approx(0.7 * 1.0), pytest.approx(0.3 * MIN_SCORE))
    assert parts["b"] == (pytest.approx(0.7 * 0.5), pytest.approx(0.3 * 1.0))
    assert parts["c"] == (pytest.approx(0.7 * MIN_SCORE), 0.0)
    assert parts["d"] == (0.0, pytest.approx(0.3 * 0.5))
    for hit in hits:
        assert hit.text_part is not None and hit.vector_part is not None
        assert hit.text_part + hit.vector_part == hit.score  # exactly: the bar splits the score


def test_given_a_vector_list_reaching_below_the_floor_then_the_total_is_exact() -> None:
    # Given a top 4 whose last hit is below the floor — Then every match is in it: 3, exact.
    vector = [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.2)]
    assert confident_total((), 0, "eq", vector, 4, 0.5) == (3, "eq")
    assert confident_total((), 0, "eq", [("a", 0.1)], 4, 0.5) == (0, "eq")


def test_given_a_vector_list_all_above_the_floor_then_the_total_is_a_lower_bound() -> None:
    vector = [("a", 0.9), ("b", 0.8)]
    assert confident_total((), 0, "eq", vector, 2, 0.5) == (2, "gte")
    # A list that ended before its depth holds every vector document: exact again.
    assert confident_total((), 0, "eq", vector, 5, 0.5) == (2, "eq")


def test_given_text_matches_when_counting_then_vector_matches_add_only_new_documents() -> None:
    # Given 3 text matches (a, b, x), all in the text list, and confident vector hits a, d —
    # Then the union: 4, exact (c is below the floor).
    vector = [("a", 0.9), ("d", 0.8), ("c", 0.1)]
    assert confident_total(["a", "b", "x"], 3, "eq", vector, 3, 0.5) == (4, "eq")


def test_given_a_text_list_cut_before_its_last_match_then_only_the_larger_side_counts() -> None:
    # Given 50 text matches of which the list holds 2 — Then d may be one of the other 48:
    # at least 50.
    vector = [("d", 0.9), ("c", 0.1)]
    assert confident_total(["a", "b"], 50, "eq", vector, 2, 0.5) == (50, "gte")
    # A text count that stopped at a bound (OpenSearch past 10,000) is a lower bound too.
    assert confident_total(["a", "b"], 2, "gte", vector, 2, 0.5) == (2, "gte")
