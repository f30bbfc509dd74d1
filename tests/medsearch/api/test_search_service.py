"""SearchService: the semantics of every mode, filters, paging, and each validation rule."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from conftest import ColourEncoder, MemoryIndex, dicom_bytes, make_image

from medsearch.errors import (
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from medsearch.index.base import Document
from medsearch.search import (
    MAX_OFFSET,
    MAX_QUERY_CHARS,
    MAX_UPLOAD_BYTES,
    SearchService,
    clean_filters,
    validate_alpha,
    validate_k,
    validate_offset,
    validate_query,
)


def ids(response: Any) -> list[str]:
    return [result.image_id for result in response.results]


# --- text, vector, hybrid ------------------------------------------------------------------------


def test_given_text_mode_when_searching_then_bm25_matches_rank_and_captionless_never_appear(
    service: SearchService,
) -> None:
    response = service.search("lung nodule", mode="text", k=20)
    assert ids(response)[:2] == ["red-01", "red-03"] or ids(response)[:2] == ["red-03", "red-01"]
    assert response.total == len(response.results) == 2
    assert all(r.caption is not None for r in response.results)
    assert all(r.bm25_score is not None and r.vector_score is None for r in response.results)
    assert response.mode == "text" and response.alpha is None and response.query == "lung nodule"


def test_given_captionless_red_images_when_vector_search_for_red_then_they_are_found(
    service: SearchService,
) -> None:
    text = service.search("red", mode="text", k=20)
    vector = service.search("red", mode="vector", k=4)
    assert text.total == 0
    assert set(ids(vector)) == {"red-01", "red-02", "red-03", "red-04"}
    captionless = [r for r in vector.results if r.caption is None]
    assert {r.image_id for r in captionless} == {"red-02", "red-04"}
    assert all(r.vector_score is not None and r.bm25_score is None for r in vector.results)


def test_given_alpha_extremes_when_hybrid_then_order_follows_the_weighted_side(
    service: SearchService,
) -> None:
    # Given a query whose words match captions (BM25) and name a colour (vector)
    text = service.search("chest x-ray effusion", mode="text", k=100)
    vector = service.search("chest x-ray effusion", mode="vector", k=100)
    # When alpha is 0 the BM25 matches lead in BM25 order; when 1, the kNN order is kept
    hybrid0 = service.search("chest x-ray effusion", mode="hybrid", alpha=0.0, k=100)
    hybrid1 = service.search("chest x-ray effusion", mode="hybrid", alpha=1.0, k=100)
    assert ids(hybrid0)[: text.total] == ids(text)
    assert ids(hybrid1) == ids(vector)
    assert hybrid0.alpha == 0.0 and hybrid0.mode == "hybrid"
    # Then every hit carries both component scores where it was in each list
    both = [r for r in hybrid0.results if r.bm25_score is not None]
    assert both and all(r.vector_score is not None for r in both)


def test_given_a_model_when_mode_omitted_then_hybrid_runs(service: SearchService) -> None:
    assert service.search("knee").mode == "hybrid"


def test_given_no_encoder_when_vector_modes_requested_then_a_clear_error_and_text_still_works(
    index: MemoryIndex,
) -> None:
    service = SearchService(index, None)
    for mode in ("vector", "hybrid"):
        with pytest.raises(InvalidInputError, match="needs a model"):
            service.search("knee", mode=mode)
    assert service.search("knee").mode == "text"
    assert ids(service.search("knee mri", mode="text"))[0] in {"blue-01", "blue-02"}
    # the image mode needs no encoder: it uses the stored vector
    assert service.similar("blue-01").results
    assert service.health().model is None and "vector" not in service.health().modes


# --- image and image_text ------------------------------------------------------------------------


def test_given_a_corpus_image_when_image_mode_then_it_is_excluded_and_neighbours_share_colour(
    service: SearchService, index: MemoryIndex
) -> None:
    response = service.similar("green-01", mode="image", k=100)
    assert "green-01" not in ids(response)
    assert set(ids(response)[:3]) == {"green-02", "green-03", "green-04"}
    assert response.total == index.count() - 1
    assert response.image_id == "green-01" and response.query is None and response.alpha is None


def test_given_image_text_mode_when_searching_then_the_caption_is_the_bm25_query(
    service: SearchService, index: MemoryIndex
) -> None:
    response = service.similar("yellow-01", mode="image_text", alpha=0.0, k=5)
    sent = index.searches[-1]
    assert sent.text == "Fracture of the distal radius on wrist x-ray"
    assert sent.vector is not None and sent.exclude_ids == {"yellow-01"}
    assert response.query == sent.text and response.alpha == 0.0
    # With alpha 0 the best hit is the caption sharing most rare words ("wrist", "radius")
    assert ids(response)[0] == "yellow-02" and "yellow-01" not in ids(response)


def test_given_a_captionless_image_when_image_text_mode_then_vector_only(
    service: SearchService, index: MemoryIndex
) -> None:
    image_text = service.similar("blue-04", mode="image_text", k=5)
    assert index.searches[-1].text is None
    image = service.similar("blue-04", mode="image", k=5)
    assert ids(image_text) == ids(image) and image_text.alpha is None


def test_given_an_image_without_vector_when_similar_then_invalid_input(
    index: MemoryIndex, encoder: ColourEncoder
) -> None:
    index.upsert([Document("novec", "a caption", None)])
    with pytest.raises(InvalidInputError, match="no vector"):
        SearchService(index, encoder).similar("novec")


def test_given_unknown_or_invalid_ids_when_looked_up_then_not_found_or_invalid(
    service: SearchService,
) -> None:
    with pytest.raises(NotFoundError):
        service.similar("nope")
    with pytest.raises(NotFoundError):
        service.record("nope")
    for bad in ("../x", "a/b", "", "\x00", "x" * 129, ".."):
        with pytest.raises(InvalidInputError, match="invalid image_id"):
            service.record(bad)


# --- upload --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_given_an_uploaded_copy_of_a_corpus_image_when_searching_then_it_ranks_first(
    service: SearchService, make_upload: Any, fmt: str
) -> None:
    # blue variant 2 is blue-03's picture
    response = service.search_upload(make_upload("blue", 2, fmt), filename=f"scan.{fmt}")
    assert ids(response)[0] == "blue-03"
    assert response.mode == "upload" and response.alpha is None and response.query is None


def test_given_a_dicom_upload_when_searching_then_the_matching_grey_image_ranks_first(
    service: SearchService,
) -> None:
    # The DICOM carries grey levels only; grey-02 (variant 1) is grey, so its copy is exact.
    response = service.search_upload(dicom_bytes(make_image("grey", 1)), filename="x.dcm")
    assert ids(response)[0] == "grey-02"


def test_given_an_upload_with_text_when_searching_then_it_is_hybrid(
    service: SearchService, index: MemoryIndex, make_upload: Any
) -> None:
    response = service.search_upload(make_upload("grey"), q="  pleural effusion ", alpha=0.3)
    assert index.searches[-1].text == "pleural effusion"
    assert response.query == "pleural effusion" and response.alpha == 0.3
    assert any(r.bm25_score is not None for r in response.results)
    # an empty text field is "no text", not an error
    assert service.search_upload(make_upload("grey"), q="  ").alpha is None


def test_given_bad_uploads_when_searching_then_each_gets_its_error(
    service: SearchService, index: MemoryIndex, make_upload: Any
) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        service.search_upload(b"")
    with pytest.raises(UnsupportedMediaTypeError):
        service.search_upload(b"%PDF-1.4 not an image at all")
    with pytest.raises(PayloadTooLargeError):
        service.search_upload(b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_UPLOAD_BYTES)
    with pytest.raises(InvalidInputError, match="needs a model"):
        SearchService(index, None).search_upload(make_upload("red"))


# --- filters and paging --------------------------------------------------------------------------


def test_given_filters_when_searching_then_or_within_a_field_and_across_fields(
    service: SearchService,
) -> None:
    ct = service.search("mass", mode="text", filters={"modality": ["CT"]}, k=100)
    assert ids(ct) and all(r.metadata["modality"] == "CT" for r in ct.results)
    both = service.search(
        "mass", mode="text", filters=[("modality", "CT"), ("modality", "MRI")], k=100
    )
    assert {r.metadata["modality"] for r in both.results} == {"CT", "MRI"}
    anded = service.search(
        "red", mode="vector", filters={"modality": ["CT"], "region": ["chest"]}, k=100
    )
    assert {(r.metadata["modality"], r.metadata["region"]) for r in anded.results} == {
        ("CT", "chest")
    }
    assert anded.total == 3  # red-03, red-04, grey-03


def test_given_an_unknown_filter_field_when_searching_then_an_error_lists_the_fields(
    service: SearchService,
) -> None:
    with pytest.raises(InvalidInputError, match=r"'modalty'.*modality, region"):
        service.search("mass", filters={"modalty": ["CT"]})


def test_given_a_field_added_after_start_when_filtering_then_it_is_recognised(
    service: SearchService, index: MemoryIndex, corpus: list[Document]
) -> None:
    service.facets()  # the field cache is filled
    index.upsert([Document("late", "late mass", corpus[0].vector, metadata={"site": "B"})])
    service._fields_at -= 60  # as if the cache were old
    assert ids(service.search("mass", mode="text", filters={"site": ["B"]})) == ["late"]


def test_given_pages_when_paging_then_page_two_continues_page_one_and_total_is_stable(
    service: SearchService,
) -> None:
    for mode in ("text", "vector", "hybrid"):
        whole = service.search("chest x-ray red", mode=mode, k=12)
        first = service.search("chest x-ray red", mode=mode, k=6)
        second = service.search("chest x-ray red", mode=mode, k=6, offset=6)
        assert ids(first) + ids(second) == ids(whole)[: len(ids(first) + ids(second))]
        assert not set(ids(first)) & set(ids(second))
        assert first.total == second.total == whole.total
        assert second.offset == 6
    image_pages = [service.similar("red-01", k=5, offset=o) for o in (0, 5, 10)]
    seen = [i for page in image_pages for i in ids(page)]
    assert len(seen) == len(set(seen)) == 15 and "red-01" not in seen


# --- responses -----------------------------------------------------------------------------------


def test_given_a_hit_when_returned_then_it_carries_caption_scores_metadata_and_url(
    index: MemoryIndex, encoder: ColourEncoder
) -> None:
    service = SearchService(index, encoder, image_url=lambda d: f"https://cdn/{d.image_id}.png")
    result = service.search("pleural effusion left", mode="hybrid", alpha=0.1, k=1).results[0]
    assert result.image_id == "grey-02"
    assert result.caption == "Pleural effusion on the left, chest x-ray"
    assert result.metadata == {"modality": "XR", "region": "chest", "colour": "grey"}
    assert result.image_url == "https://cdn/grey-02.png"
    assert math.isfinite(result.score) and result.bm25_score and result.vector_score
    default = SearchService(index, encoder).search("effusion", k=1).results[0]
    assert default.image_url == f"v1/images/{default.image_id}/file"


def test_given_health_and_facets_when_asked_then_count_model_and_values(
    service: SearchService,
) -> None:
    health = service.health()
    assert (health.status, health.documents, health.model, health.dim) == (
        "ok",
        18,
        "colour-encoder",
        12,
    )
    assert service.facets()["modality"] == {"XR": 7, "CT": 5, "MRI": 4, "US": 2}


def test_given_a_png_or_dicom_corpus_file_when_fetched_then_browsers_get_png_or_jpeg(
    service: SearchService, index: MemoryIndex, tmp_path: Any, corpus: list[Document]
) -> None:
    data, media_type = service.image_file("red-01")
    assert media_type == "image/png" and data.startswith(b"\x89PNG")
    dicom = tmp_path / "scan.dcm"
    dicom.write_bytes(dicom_bytes(make_image("grey")))
    index.upsert([Document("dcm-1", None, corpus[0].vector, image=str(dicom))])
    data, media_type = service.image_file("dcm-1")
    assert media_type == "image/png" and data.startswith(b"\x89PNG")
    index.upsert([Document("gone", None, corpus[0].vector, image=str(tmp_path / "missing.png"))])
    with pytest.raises(NotFoundError, match="not available"):
        service.image_file("gone")


# --- validation rules, one test each -------------------------------------------------------------


def test_query_rule_strips_and_accepts_1_to_512_characters() -> None:
    assert validate_query("  knee  ") == "knee"
    assert validate_query("a\tb\nc") == "a b c"
    assert validate_query("x" * MAX_QUERY_CHARS) == "x" * MAX_QUERY_CHARS
    assert validate_query(" " + "x" * (MAX_QUERY_CHARS - 2) + " ") == "x" * (MAX_QUERY_CHARS - 2)


@pytest.mark.parametrize(
    ("q", "message"),
    [
        ("", "empty"),
        ("   \t ", "empty"),
        ("x" * (MAX_QUERY_CHARS + 1), "at most 512"),
        ("lung\x00nodule", "U\\+0000"),
        ("lung\x1bnodule", "U\\+001B"),
        ("lung\x7fnodule", "U\\+007F"),
        # the schema's length and character rules hold for the text as sent, before stripping
        (" " + "x" * MAX_QUERY_CHARS, "at most 512"),
        ("nodule\x1c", "U\\+001C"),
        ("\x85nodule", "U\\+0085"),
        (None, "text string"),
        (42, "text string"),
    ],
)
def test_query_rule_rejects(q: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        validate_query(q)


def test_k_rule_accepts_1_to_100() -> None:
    assert [validate_k(k) for k in (1, 50, 100)] == [1, 50, 100]
    assert validate_k(np.int64(7)) == 7


@pytest.mark.parametrize("k", [0, 101, -1, 10**30, 1.5, "10", True, None])
def test_k_rule_rejects(k: object) -> None:
    with pytest.raises(InvalidInputError, match="k must be an integer from 1 to 100"):
        validate_k(k)


def test_offset_rule_accepts_0_to_the_cap() -> None:
    assert validate_offset(0) == 0 and validate_offset(MAX_OFFSET) == MAX_OFFSET


@pytest.mark.parametrize("offset", [-1, MAX_OFFSET + 1, 10**18, 2.0, "3", False])
def test_offset_rule_rejects(offset: object) -> None:
    with pytest.raises(InvalidInputError, match="offset must be an integer from 0 to"):
        validate_offset(offset)


def test_alpha_rule_accepts_0_to_1() -> None:
    assert [validate_alpha(a) for a in (0, 0.25, 1)] == [0.0, 0.25, 1.0]


@pytest.mark.parametrize("alpha", [-1, -0.001, 1.001, math.nan, math.inf, -math.inf, "x", True])
def test_alpha_rule_rejects(alpha: object) -> None:
    with pytest.raises(InvalidInputError, match="alpha must be"):
        validate_alpha(alpha)


def test_mode_rule_names_the_accepted_modes(service: SearchService) -> None:
    with pytest.raises(InvalidInputError, match="mode must be one of text, vector, hybrid"):
        service.search("knee", mode="image")
    with pytest.raises(InvalidInputError, match="mode must be one of image, image_text"):
        service.similar("red-01", mode="text")


def test_filter_rule_groups_values_and_bounds_them() -> None:
    assert clean_filters([("m", "CT"), ("m", " MRI "), ("m", "CT"), ("r", "")]) == {
        "m": ["CT", "MRI"]
    }
    assert clean_filters({"m": "CT"}) == {"m": ["CT"]}
    with pytest.raises(InvalidInputError, match="at most 50 values"):
        clean_filters([("m", str(i)) for i in range(51)])
    with pytest.raises(InvalidInputError, match="at most 20 filter fields"):
        clean_filters([(f"f{i}", "v") for i in range(21)])
    with pytest.raises(InvalidInputError, match="1-256 characters"):
        clean_filters({"m": ["x" * 257]})
    with pytest.raises(InvalidInputError, match="control"):
        clean_filters({"m": ["C\x00T"]})


class _CountingIndex(MemoryIndex):
    """The brute-force index, recording every document lookup the service makes."""

    def __init__(self, documents: Any) -> None:
        super().__init__(documents)
        self.gets: list[str] = []
        self.get_manys: list[tuple[list[str], bool]] = []

    def get(self, image_id: str) -> Document | None:
        self.gets.append(image_id)
        return super().get(image_id)

    def get_many(self, image_ids: Any, *, with_vectors: bool = True) -> dict[str, Document]:
        self.get_manys.append((list(image_ids), with_vectors))
        return super().get_many(image_ids, with_vectors=with_vectors)


def test_given_a_page_of_hits_when_searching_then_documents_are_fetched_once_without_vectors(
    corpus: list[Document], encoder: ColourEncoder
) -> None:
    # Given: an index that counts lookups
    index = _CountingIndex(corpus)
    service = SearchService(index, encoder)
    # When: a hybrid page of several hits is searched
    response = service.search("chest x-ray", mode="hybrid", k=5)
    # Then: one get_many for the whole page, in rank order, without vectors; no per-hit get
    assert len(response.results) == 5
    assert index.get_manys == [(ids(response), False)]
    assert index.gets == []


def test_given_a_thumbnail_when_its_file_is_served_then_the_vector_is_not_fetched(
    corpus: list[Document], encoder: ColourEncoder
) -> None:
    # Given an index that counts lookups
    index = _CountingIndex(corpus)
    service = SearchService(index, encoder)
    # When an image's file is asked for (once per result thumbnail)
    data, media_type = service.image_file("red-01")
    # Then the bytes come back from one lookup without the vector
    assert media_type == "image/png" and data.startswith(b"\x89PNG")
    assert index.get_manys == [(["red-01"], False)]
    assert index.gets == []
