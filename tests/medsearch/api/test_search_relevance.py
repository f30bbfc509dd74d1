"""Relevance honesty over the embedded engine: score parts, caption highlights, and the index's
vector floor marking weak hits, counting totals and saying when nothing matches well."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsearch.index.base import Document
from medsearch.index.embedded import build_index
from medsearch.relevance import VectorFloor
from medsearch.search import SearchService
from tests.medsearch.api.conftest import ColourEncoder

# On the colour corpus, a colour word's own images clear a centred cosine of 0.3 (0.38-0.42)
# and nothing else does (a nonsense word's best: 0.17).
FLOOR = 0.3


def _floor(corpus: list[Document]) -> VectorFloor:
    centre = np.mean([d.vector for d in corpus if d.vector is not None], axis=0)
    return VectorFloor(FLOOR, tuple(float(x) for x in centre), 0.95, 0.05, len(corpus))


@pytest.fixture
def service(tmp_path: Path, corpus: list[Document], encoder: ColourEncoder) -> SearchService:
    """The service over an embedded index that records a vector floor."""
    index = build_index(tmp_path / "index", corpus, model_id=encoder.model_id)
    floored = build_index(
        tmp_path / "floored", corpus, model_id=encoder.model_id, vector_floor=_floor(corpus)
    )
    assert index.indexed_model().vector_floor is None
    return SearchService(floored, encoder)


def test_given_a_nonsense_query_when_searched_by_vector_then_nothing_matches_well(
    service: SearchService,
) -> None:
    # Given an index with a floor — When a word no image is like is searched — Then the nearest
    # images are still shown, each marked low_confidence, the total is 0 and best_match weak.
    for mode in ("vector", "hybrid"):
        page = service.search("zzzqqq", mode=mode, k=10)
        assert len(page.results) == 10
        assert all(hit.low_confidence is True for hit in page.results)
        assert (page.total, page.total_relation, page.best_match) == (0, "eq", "weak")
        assert page.vector_floor is not None


def test_given_a_real_query_when_searched_by_vector_then_its_images_are_the_matches(
    service: SearchService, encoder: ColourEncoder, corpus: list[Document]
) -> None:
    page = service.search("red", mode="vector", k=10)
    assert (page.total, page.total_relation, page.best_match) == (4, "eq", "good")
    confident = [hit.image_id for hit in page.results if not hit.low_confidence]
    assert sorted(confident) == ["red-01", "red-02", "red-03", "red-04"]
    # The response's floor is the query's raw cosine floor: floor + t · m.
    text = encoder.encode_texts(["red"])[0]
    assert page.vector_floor == pytest.approx(_floor(corpus).for_query(text), abs=1e-6)
    for hit in page.results:
        assert hit.vector_score is not None
        assert hit.low_confidence == (hit.vector_score < page.vector_floor)


def test_given_a_hybrid_query_when_captions_match_then_those_hits_are_confident(
    service: SearchService,
) -> None:
    page = service.search("lung nodule", mode="hybrid", k=18)
    by_id = {hit.image_id: hit for hit in page.results}
    assert by_id["red-01"].low_confidence is False and by_id["red-03"].low_confidence is False
    assert all(hit.low_confidence for hit in page.results if hit.bm25_score is None)
    assert (page.total, page.best_match) == (2, "good")


def test_given_a_hybrid_query_then_each_hit_has_parts_summing_to_its_score(
    service: SearchService,
) -> None:
    page = service.search("lung nodule", mode="hybrid", alpha=0.3, k=10)
    for hit in page.results:
        assert hit.text_part is not None and hit.vector_part is not None
        assert hit.text_part + hit.vector_part == pytest.approx(hit.score, abs=1e-12)
        assert hit.text_part <= 0.7 + 1e-12 and hit.vector_part <= 0.3 + 1e-12
    # One list alone is not fused: no parts.
    assert all(h.text_part is None for h in service.search("lung", mode="text").results)


def test_given_a_query_when_searched_then_highlights_mark_the_query_stems_in_captions(
    service: SearchService,
) -> None:
    page = service.search("nodules lung", mode="text", k=10)
    for hit in page.results:
        assert hit.caption is not None
        words = [hit.caption[start:end].lower() for start, end in hit.highlights]
        assert words and set(words) <= {"lung", "nodule"}
    assert service.search("lung", mode="vector", k=18).results[0].highlights is not None


def test_given_an_image_query_then_confidence_is_not_judged(service: SearchService) -> None:
    # The floor is calibrated on text-to-image cosines; image-to-image ones are another scale.
    page = service.similar("red-01", mode="image", k=5)
    assert page.best_match is None and page.vector_floor is None
    assert all(hit.low_confidence is None for hit in page.results)


def test_given_an_index_without_a_floor_then_vector_hits_are_not_judged(
    tmp_path: Path, corpus: list[Document], encoder: ColourEncoder
) -> None:
    service = SearchService(build_index(tmp_path / "plain", corpus), encoder)
    page = service.search("zzzqqq", mode="vector", k=5)
    assert page.best_match is None and page.total == len(corpus)
    assert all(hit.low_confidence is None for hit in page.results)
    # Text mode needs no floor: a BM25 hit is a match, no hit means none.
    assert service.search("zzzqqq", mode="text").best_match == "none"
    assert service.search("lung", mode="text").best_match == "good"


def test_given_caption_matches_beyond_the_text_list_when_fused_then_they_are_not_weak(
    tmp_path: Path, encoder: ColourEncoder
) -> None:
    # Given 130 captions that all match "lung" (more than the text list's top 100) and a floor
    # no cosine reaches — When a hybrid query ranked by its vector side is run — Then its hits
    # from the vector list alone still match by caption: none is low_confidence.
    rng = np.random.default_rng(0)
    documents = [
        Document(f"d{n:03d}", f"lung scan number {n}", rng.standard_normal(12).astype(np.float32))
        for n in range(130)
    ]
    floor = VectorFloor(5.0, (0.0,) * 12, 0.9, 0.1, 130)
    service = SearchService(
        build_index(tmp_path / "many", documents, model_id=encoder.model_id, vector_floor=floor),
        encoder,
    )
    page = service.search("lung", mode="hybrid", alpha=1.0, k=100)
    assert any(hit.bm25_score is None for hit in page.results)
    assert all(hit.low_confidence is False for hit in page.results)
    assert (page.total, page.total_relation, page.best_match) == (130, "gte", "good")
