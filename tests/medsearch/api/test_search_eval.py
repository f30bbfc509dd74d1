"""Search evaluation: each mode's rankings scored against graded judgments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from conftest import ColourEncoder

from medsearch.data.queries import Query
from medsearch.errors import InvalidInputError
from medsearch.search import SearchService
from medsearch.search_eval import evaluate_search

RED = {"red-01": 1, "red-02": 1, "red-03": 1, "red-04": 1}


def test_given_colour_query_when_evaluated_then_only_vectors_find_captionless_images(
    service: SearchService,
) -> None:
    # Given a query no caption contains, whose relevant images include two captionless ones
    report = evaluate_search(service, [Query("red", RED)], k=10)
    modes = report["modes"]
    # Then BM25 finds nothing and the colour vectors find all four, captionless ones included
    assert modes["text"] == {
        "ndcg@10": 0.0,
        "r@10": 0.0,
        "captionless_found": 0,
        "captionless_relevant": 2,
    }
    assert modes["vector"]["r@10"] == 1.0
    assert modes["vector"]["ndcg@10"] == 1.0
    assert modes["vector"]["captionless_found"] == 2


def test_given_graded_text_query_when_evaluated_then_ndcg_matches_hand_computation(
    service: SearchService,
) -> None:
    # Given "knee meniscus" with one image graded 2 and one graded 1; only blue-02 says meniscus,
    # blue-01 says "meniscal" (the English stemmer does not join them), so BM25 ranks blue-02 only
    relevance = {"blue-02": 1, "blue-01": 2}
    report = evaluate_search(service, [Query("meniscus", relevance)], modes=["text"], k=10)
    row = report["modes"]["text"]
    # Then DCG = (2^1 - 1)/log2(2) = 1, ideal = 3/1 + 1/log2(3), and one of two relevant is found
    ideal = 3.0 + 1.0 / 1.584962500721156
    assert row["ndcg@10"] == pytest.approx(1.0 / ideal, abs=1e-4)
    assert row["r@10"] == 0.5


def test_given_judgments_outside_the_index_when_evaluated_then_they_are_ignored(
    service: SearchService,
) -> None:
    queries = [Query("red", {**RED, "not-indexed": 2}), Query("ghost", {"nowhere": 1})]
    report = evaluate_search(service, queries, modes=["vector"])
    assert report["queries"] == 1
    assert report["modes"]["vector"]["r@10"] == 1.0
    with pytest.raises(InvalidInputError, match="no query"):
        evaluate_search(service, [Query("ghost", {"nowhere": 1})])


def test_given_a_sweep_when_evaluated_then_each_alpha_scores_as_a_hybrid_run_at_that_alpha(
    service: SearchService,
) -> None:
    # Given a query set, evaluated with the default alpha plus a sweep that includes it
    queries = [Query("red", RED), Query("meniscus", {"blue-02": 1, "blue-01": 2})]
    report = evaluate_search(service, queries, k=10, sweep=(0.0, 0.5, 1.0))
    curve = report["alpha_sweep"]
    # Then every point equals a plain hybrid evaluation at that alpha (the report's own alpha
    # included, whose row is shared with the hybrid mode), and the best alpha is one of them
    assert set(curve) == {"0", "0.5", "1"}
    assert curve["0.5"] == report["modes"]["hybrid"]
    for key, alpha in (("0", 0.0), ("0.5", 0.5), ("1", 1.0)):
        alone = evaluate_search(service, queries, modes=["hybrid"], alpha=alpha, k=10)
        assert curve[key] == alone["modes"]["hybrid"]
    assert f"{report['best_alpha']:g}" in curve


class _CountingEncoder(ColourEncoder):
    """The colour encoder, recording every text it encodes."""

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self.encoded.extend(texts)
        return super().encode_texts(texts, batch_size)


def test_given_modes_and_a_sweep_when_evaluated_then_each_query_text_is_encoded_once(
    service: SearchService,
) -> None:
    # Given a service whose encoder counts its work
    encoder = _CountingEncoder()
    counted = SearchService(service.index, encoder)
    queries = [Query("red", RED), Query("meniscus", {"blue-02": 1, "blue-01": 2})]
    # When every mode and a three-point sweep are evaluated
    report = evaluate_search(counted, queries, k=10, sweep=(0.0, 0.3, 1.0))
    # Then each text went through the encoder once, and the scores are those of the plain service
    assert sorted(encoder.encoded) == ["meniscus", "red"]
    assert report == evaluate_search(service, queries, k=10, sweep=(0.0, 0.3, 1.0))


def test_given_depths_when_compared_then_each_is_measured_against_the_reference(
    service: SearchService,
) -> None:
    # Given a hybrid query, compared at depth 100 (the reference) and 1 (the page's end rules)
    from medsearch.search_eval import depth_agreement

    assert service.encoder is not None
    queries = [Query("red knee", RED)]
    report = depth_agreement(service.index, service.encoder, queries, [1, 100], reference=100)
    # Then depth 100 keeps its own top 10 whole, with the same R@10, and depth 1 is a share
    assert report["reference_depth"] == 100 and report["queries"] == 1
    assert report["depths"]["100"] == {
        "overlap": 1.0,
        "min_overlap": 1.0,
        "r@10": report["reference_r@10"],
    }
    assert 0.0 <= report["depths"]["1"]["overlap"] <= 1.0
