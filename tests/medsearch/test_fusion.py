"""Hybrid fusion: OpenSearch's min_max + arithmetic_mean, checked against hand computations."""

from __future__ import annotations

import math

import pytest

from medsearch.errors import InvalidInputError
from medsearch.fusion import MIN_SCORE, SINGLE_RESULT_SCORE, fuse, normalize_min_max
from medsearch.index.base import Hit


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
    assert by_id["a"] == Hit("a", expected["a"], text_score=6.0, vector_score=0.5)
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
