"""The engine contract: tests every SearchIndex implementation must pass, written once.

Use it from an engine's test module::

    from index_contract import SearchIndexContract

    class TestMyEngineContract(SearchIndexContract):
        @pytest.fixture
        def make_index(self, tmp_path):
            def make(documents):  # a fresh, empty index holding exactly `documents`, searchable
                index = MyEngine(...)
                index.upsert(documents)
                return index
            return make

The expected values are computed here independently of any engine: BM25 (Lucene's formula,
k1 = 1.2, b = 0.75) over captions analysed with Snowball English stemming and Lucene's English
stop words, exact cosine top-k with numpy, and min-max fusion written out by hand.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pytest
import snowballstemmer

from medsearch.errors import InvalidInputError
from medsearch.index.base import Document, Hit, SearchIndex, SearchQuery
from medsearch.index.synthetic import embedding_like_vectors

MakeIndex = Callable[[Sequence[Document]], SearchIndex]

K1, B = 1.2, 0.75
LUCENE_STOP = {
    *("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is"),
    *("it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there"),
    *("these", "they", "this", "to", "was", "will", "with"),
}
_STEMMER = snowballstemmer.stemmer("english")
DIM = 8


def reference_terms(text: str) -> list[str]:
    """Analyse like OpenSearch's English analysis: words, lowercase, stop words, Porter2 stems."""
    words = [w.lower() for w in re.findall(r"[^\W_]+", text)]
    return [_STEMMER.stemWord(w) for w in words if w not in LUCENE_STOP]


def reference_bm25(captions: dict[str, str], query: str) -> dict[str, float]:
    """Lucene BM25 of every captioned document matching any query term (an OR `match` query)."""
    docs = {i: Counter(reference_terms(c)) for i, c in captions.items()}
    lengths = {i: sum(tf.values()) for i, tf in docs.items()}
    n_docs = len(docs)
    avgdl = sum(lengths.values()) / n_docs
    scores: dict[str, float] = {}
    for term in reference_terms(query):  # duplicates count twice, as two SHOULD clauses do
        df = sum(1 for tf in docs.values() if term in tf)
        if df == 0:
            continue
        idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
        for image_id, tf in docs.items():
            if term in tf:
                f = tf[term]
                norm = K1 * (1 - B + B * lengths[image_id] / avgdl)
                scores[image_id] = scores.get(image_id, 0.0) + idf * f / (f + norm)
    return scores


def reference_minmax(scores: dict[str, float]) -> dict[str, float]:
    """OpenSearch min_max by hand: equal scores -> 1.0, the minimum -> 0.001."""
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return dict.fromkeys(scores, 1.0)
    return {i: max((s - low) / (high - low), 0.001) for i, s in scores.items()}


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


CAPTIONS = {
    "d01": "Fracture of the left femur after a fall",
    "d02": "Healing femoral fractures with callus formation",
    "d03": "Lung nodule in the right upper lobe",
    "d04": "Multiple lung nodules, nodule size up to 2 cm, both lungs",
    "d05": "Brain MRI showing a glioma in the frontal lobe",
    "d06": "Normal chest radiograph",
    "d07": "Comminuted fracture of the distal radius, fracture lines extend to the joint",
    "d08": "Pleural effusion on the right with lung collapse",
    "d09": "CT of the abdomen, no acute findings",
    "d10": "Running injury: stress fracture of the tibia",
    "d11": "Knee MRI: torn meniscus and joint effusion",
}
MODALITY = {
    "d01": "X-ray", "d02": "X-ray", "d03": "CT", "d04": "CT", "d05": "MRI", "d06": "X-ray",
    "d07": "X-ray", "d08": "CT", "d09": "CT", "d10": "MRI", "d11": "MRI", "d12": "CT",
    "d13": "MRI",
}  # fmt: skip
REGION = {
    "d01": "leg", "d02": "leg", "d03": "chest", "d04": "chest", "d05": "head", "d06": "chest",
    "d07": "arm", "d08": "chest", "d09": "abdomen", "d10": "leg", "d11": "leg", "d12": "chest",
    "d13": "head",
}  # fmt: skip
CAPTIONLESS = ("d12", "d13")
# d14 has a caption but no vector: text-only.
NO_VECTOR = "d14"
NO_VECTOR_CAPTION = "Old healed fracture of the clavicle"


def corpus() -> list[Document]:
    """A small corpus: captioned documents, two captionless ones, one without a vector."""
    rng = np.random.default_rng(42)
    docs = []
    for image_id in sorted(MODALITY):
        docs.append(
            Document(
                image_id=image_id,
                caption=CAPTIONS.get(image_id),
                vector=unit(rng.standard_normal(DIM)),
                image=f"images/{image_id}.png",
                metadata={"modality": MODALITY[image_id], "region": REGION[image_id]},
            )
        )
    docs.append(
        Document(
            NO_VECTOR,
            NO_VECTOR_CAPTION,
            None,
            f"images/{NO_VECTOR}.png",
            {"modality": "X-ray", "region": "chest"},
        )
    )
    return docs


def all_captions() -> dict[str, str]:
    return {**CAPTIONS, NO_VECTOR: NO_VECTOR_CAPTION}


def assert_scores(hits: list[Hit], expected: dict[str, float], attr: str = "score") -> None:
    """Hits hold exactly the expected ids, with equal scores, best first, ties by image_id."""
    got = {h.image_id: getattr(h, attr) for h in hits}
    assert set(got) == set(expected)
    for image_id, score in expected.items():
        assert got[image_id] == pytest.approx(score, rel=1e-4, abs=1e-6), image_id
    order = sorted(expected, key=lambda i: (-round(expected[i], 5), i))
    assert [h.image_id for h in hits] == order


HOSTILE_QUERIES = [
    '"',
    '"unbalanced quote',
    "*",
    "fem*",
    "caption:femur",
    ":",
    "(",
    ")",
    "(fracture OR",
    "\\",
    "femur\\",
    "AND",
    "OR NOT",
    "fracture AND NOT femur",
    "+fracture -femur",
    "fracture~2",
    "femur^10",
    "[a TO z]",
    "{}",
    "/regex.*/",
    "x" * 10_000,
    "fracture " * 2_000,
    "\x00\x01\x02\x1b[31m\x7f",
    "lung\tnodule\r\n",
    "\u202eevil\u200b",
    "🦴 fracture",
    "   ",
]


def assert_ann_recall(make_index: MakeIndex, n: int = 50_000) -> None:
    """ANN recall@10 against exact search on ``n`` embedding-like 512-d vectors is >= 0.98."""
    # Given n embedding-like 512-d vectors (never uniform random ones)
    vectors = embedding_like_vectors(n, 512, seed=0)
    docs = [Document(f"v{i:05d}", None, v) for i, v in enumerate(vectors)]
    index = make_index(docs)
    queries = embedding_like_vectors(100, 512, seed=99)
    # When each query's top 10 is asked for — Then it matches exact search (recall >= 0.98).
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = 0
    for query, truth in zip(queries, exact, strict=True):
        hits = index.search(SearchQuery(vector=query, k=10)).hits
        found += len({h.image_id for h in hits} & {f"v{i:05d}" for i in truth})
    recall = found / exact.size
    assert recall >= 0.98, f"recall@10 = {recall:.3f}"


class SearchIndexContract:
    """Tests every engine must pass; subclasses provide the ``make_index`` fixture."""

    @pytest.fixture
    def make_index(self) -> MakeIndex:
        raise NotImplementedError("an engine test class must provide make_index")

    @pytest.fixture
    def index(self, make_index: MakeIndex) -> SearchIndex:
        return make_index(corpus())

    # --- BM25 --------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "query",
        [
            "fracture femur",
            "fractures of the femur",
            "lung nodule nodule",
            "healing",
            "joint effusion",
            "running",
            "Brain MRI glioma frontal lobe",
        ],
    )
    def test_bm25_ranking_equals_independent_computation(
        self, index: SearchIndex, query: str
    ) -> None:
        # Given the corpus — When a text query runs — Then scores and order match Lucene's BM25.
        expected = reference_bm25(all_captions(), query)
        page = index.search(SearchQuery(text=query, k=100))
        assert page.total == len(expected)
        assert_scores(page.hits, expected)
        assert_scores(page.hits, expected, attr="text_score")
        assert all(h.vector_score is None for h in page.hits)

    @pytest.mark.parametrize("query", ["zebra unicorn", "the of and with", "?!"])
    def test_text_query_without_matches_is_empty(self, index: SearchIndex, query: str) -> None:
        page = index.search(SearchQuery(text=query))
        assert page.hits == [] and page.total == 0

    @pytest.mark.parametrize("query", HOSTILE_QUERIES)
    def test_hostile_query_text_is_plain_words(self, index: SearchIndex, query: str) -> None:
        # Given query-syntax characters, huge and control-character strings — Then no error, and
        # the words in them are searched as words.
        page = index.search(SearchQuery(text=query, k=5))
        expected = reference_bm25(all_captions(), query)
        assert page.total == len(expected)
        hybrid = index.search(SearchQuery(text=query, vector=corpus()[0].vector, k=5))
        assert hybrid.total >= page.total

    # --- vectors -----------------------------------------------------------------------------

    def test_vector_search_is_cosine_top_k(self, index: SearchIndex) -> None:
        docs = [d for d in corpus() if d.vector is not None]
        query = unit(np.random.default_rng(7).standard_normal(DIM))
        expected = {d.image_id: float(np.dot(d.vector, query)) for d in docs}
        page = index.search(SearchQuery(vector=query, k=5))
        assert page.total == len(docs)
        top5 = dict(sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
        assert_scores(page.hits, top5)
        assert_scores(page.hits, top5, attr="vector_score")

    def test_vector_search_finds_captionless_images(self, index: SearchIndex) -> None:
        # Given a captionless image — When searched by its own vector — Then it ranks first,
        # while no text query can reach it.
        captionless = next(d for d in corpus() if d.image_id == CAPTIONLESS[0])
        page = index.search(SearchQuery(vector=captionless.vector, k=3))
        assert page.hits[0].image_id == CAPTIONLESS[0]
        assert page.hits[0].score == pytest.approx(1.0, abs=1e-5)

    def test_exclude_ids_leaves_the_image_out(self, index: SearchIndex) -> None:
        # Given "similar images" of d03 — Then d03 itself is not among them and not counted.
        doc = corpus()[2]
        page = index.search(SearchQuery(vector=doc.vector, k=20, exclude_ids=frozenset({"d03"})))
        assert "d03" not in {h.image_id for h in page.hits}
        assert page.total == len([d for d in corpus() if d.vector is not None]) - 1
        text = index.search(SearchQuery(text="lung nodule", exclude_ids=frozenset({"d03"})))
        assert "d03" not in {h.image_id for h in text.hits} and text.total == 2

    def test_dimension_mismatch_is_invalid_input(self, index: SearchIndex) -> None:
        with pytest.raises(InvalidInputError):
            index.search(SearchQuery(vector=np.ones(DIM + 1, dtype=np.float32)))
        with pytest.raises(InvalidInputError):
            index.upsert([Document("bad", "caption", np.ones(DIM + 3, dtype=np.float32))])
        assert index.get("bad") is None

    @pytest.mark.slow  # building a 50k-vector graph takes 10-60 s on two shared cores
    def test_ann_recall_at_10_on_embedding_like_vectors(self, make_index: MakeIndex) -> None:
        assert_ann_recall(make_index)

    # --- hybrid ------------------------------------------------------------------------------

    @pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
    def test_hybrid_equals_hand_fusion(self, index: SearchIndex, alpha: float) -> None:
        # Given a text and a vector — When fused — Then each score is
        # (1 - alpha) * minmax(bm25) + alpha * minmax(cosine), missing from a list counting 0.
        text = "fracture femur lung"
        query = unit(np.random.default_rng(3).standard_normal(DIM))
        bm25 = reference_bm25(all_captions(), text)
        cosine = {
            d.image_id: float(np.dot(d.vector, query)) for d in corpus() if d.vector is not None
        }
        nt, nv = reference_minmax(bm25), reference_minmax(cosine)
        expected = {
            i: (1 - alpha) * nt.get(i, 0.0) + alpha * nv.get(i, 0.0)
            for i in set(bm25) | set(cosine)
        }
        page = index.search(SearchQuery(text=text, vector=query, alpha=alpha, k=100))
        assert page.total == len(expected)
        assert_scores(page.hits, expected)
        by_id = {h.image_id: h for h in page.hits}
        assert by_id["d01"].text_score == pytest.approx(bm25["d01"], rel=1e-4)
        assert by_id["d12"].text_score is None
        assert by_id[NO_VECTOR].vector_score is None

    # --- filters and paging ------------------------------------------------------------------

    @pytest.mark.parametrize("mode", ["text", "vector", "hybrid"])
    @pytest.mark.parametrize(
        "filters",
        [
            {"modality": ["CT"]},
            {"modality": ["CT", "MRI"]},
            {"modality": ["X-ray", "MRI"], "region": ["leg"]},
            {"region": ["nowhere"]},
        ],
    )
    def test_filters_or_within_and_across_fields(
        self, index: SearchIndex, mode: str, filters: dict[str, list[str]]
    ) -> None:
        docs = {d.image_id: d for d in corpus()}

        def allowed(image_id: str) -> bool:
            meta = docs[image_id].metadata
            return all(meta.get(key) in values for key, values in filters.items())

        text = "fracture lung nodule effusion MRI" if mode != "vector" else None
        vector = unit(np.ones(DIM)) if mode != "text" else None
        page = index.search(SearchQuery(text=text, vector=vector, k=100, filters=filters))
        assert all(allowed(h.image_id) for h in page.hits)
        text_ids = {i for i in reference_bm25(all_captions(), text or "") if allowed(i)}
        vector_ids = {i for i, d in docs.items() if d.vector is not None and allowed(i)}
        want = {"text": text_ids, "vector": vector_ids, "hybrid": text_ids | vector_ids}[mode]
        assert page.total == len(want)
        assert {h.image_id for h in page.hits} == want

    @pytest.mark.parametrize("mode", ["text", "vector", "hybrid"])
    def test_paging_has_a_stable_total_and_no_overlap(self, index: SearchIndex, mode: str) -> None:
        text = "fracture lung nodule effusion joint" if mode != "vector" else None
        vector = unit(np.arange(DIM, dtype=np.float32) - 3) if mode != "text" else None
        whole = index.search(SearchQuery(text=text, vector=vector, k=12))
        pages = [
            index.search(SearchQuery(text=text, vector=vector, k=4, offset=o)) for o in (0, 4, 8)
        ]
        assert {p.total for p in pages} == {whole.total}
        assert [h.image_id for p in pages for h in p.hits] == [h.image_id for h in whole.hits]
        beyond = index.search(SearchQuery(text=text, vector=vector, k=10, offset=whole.total))
        assert beyond.hits == [] and beyond.total == whole.total

    @pytest.mark.parametrize("mode", ["text", "vector", "hybrid"])
    def test_every_scalar_metadata_field_is_named_and_filters_by_exact_value(
        self, make_index: MakeIndex, mode: str
    ) -> None:
        # Given numbers and booleans in the metadata, fields no engine offers as facets
        sizes = [4.6, 12, 4.6, 0.5, 12, 4.6]
        docs = [
            replace(d, metadata={**d.metadata, "size_cm": sizes[i % 6], "contrast": i % 2 == 0})
            for i, d in enumerate(corpus())
        ]
        index = make_index(docs)
        # Then the engine names them as filterable
        assert {"modality", "region", "size_cm", "contrast"} <= set(index.filter_fields())  # type: ignore[attr-defined]
        # And a number filters by its JSON form, a boolean by true/false, on every engine alike
        text = "fracture lung nodule effusion MRI" if mode != "vector" else None
        vector = unit(np.ones(DIM)) if mode != "text" else None
        for filters, keep in [
            ({"size_cm": ["4.6"]}, lambda m: m["size_cm"] == 4.6),
            ({"size_cm": ["12", "0.5"]}, lambda m: m["size_cm"] in (12, 0.5)),
            (
                {"contrast": ["true"], "size_cm": ["4.6"]},
                lambda m: m["contrast"] and m["size_cm"] == 4.6,
            ),
        ]:
            page = index.search(SearchQuery(text=text, vector=vector, k=100, filters=filters))
            allowed = {d.image_id for d in docs if keep(d.metadata)}
            assert page.hits and {h.image_id for h in page.hits} <= allowed, filters

    def test_facets_count_metadata_values(self, index: SearchIndex) -> None:
        facets = index.facets()
        assert facets["modality"] == dict(Counter(d.metadata["modality"] for d in corpus()))
        assert facets["region"]["chest"] == 6

    # --- writes ------------------------------------------------------------------------------

    def test_upsert_is_idempotent(self, index: SearchIndex) -> None:
        # Given the corpus indexed once — When the same documents are upserted again
        before = index.search(SearchQuery(text="fracture", vector=unit(np.ones(DIM)), k=100))
        result = index.upsert(corpus())
        # Then nothing changes: same count, same ranking, same scores.
        assert result.written == len(corpus()) and result.failed == []
        assert index.count() == len(corpus())
        after = index.search(SearchQuery(text="fracture", vector=unit(np.ones(DIM)), k=100))
        assert after.total == before.total
        assert [(h.image_id, round(h.score, 5)) for h in after.hits] == [
            (h.image_id, round(h.score, 5)) for h in before.hits
        ]

    def test_upsert_replaces_by_image_id(self, index: SearchIndex) -> None:
        old = index.get("d06")
        assert old is not None
        index.upsert(
            [Document("d06", "Pneumothorax on the left", old.vector, old.image, {"modality": "CT"})]
        )
        assert index.count() == len(corpus())
        assert "d06" not in {h.image_id for h in index.search(SearchQuery(text="normal")).hits}
        assert index.search(SearchQuery(text="pneumothorax")).hits[0].image_id == "d06"
        assert index.get("d06").metadata == {"modality": "CT"}  # type: ignore[union-attr]

    def test_get_returns_the_stored_document(self, index: SearchIndex) -> None:
        original = corpus()[0]
        doc = index.get(original.image_id)
        assert doc is not None
        assert doc.caption == original.caption
        assert doc.image == original.image
        assert dict(doc.metadata) == dict(original.metadata)
        assert np.allclose(doc.vector, original.vector, atol=1e-5)
        no_vector = index.get(NO_VECTOR)
        assert no_vector is not None and no_vector.vector is None
        assert index.get("missing") is None
        assert index.get("../x") is None

    def test_get_many_returns_the_documents_that_exist(self, index: SearchIndex) -> None:
        first, second = corpus()[0], corpus()[1]
        ids = [second.image_id, "missing", first.image_id, "../x", NO_VECTOR]
        found = index.get_many(ids)
        assert list(found) == [second.image_id, first.image_id, NO_VECTOR]
        assert found[first.image_id].caption == first.caption
        assert dict(found[first.image_id].metadata) == dict(first.metadata)
        assert np.allclose(found[first.image_id].vector, first.vector, atol=1e-5)
        assert found[NO_VECTOR].vector is None
        bare = index.get_many(ids, with_vectors=False)
        assert list(bare) == list(found)
        assert all(doc.vector is None for doc in bare.values())
        assert bare[first.image_id].caption == first.caption
        assert index.get_many([]) == {}

    def test_delete_removes_documents(self, index: SearchIndex) -> None:
        assert index.delete(["d01", "missing"]) == 1
        assert index.count() == len(corpus()) - 1
        assert index.get("d01") is None
        assert "d01" not in {h.image_id for h in index.search(SearchQuery(text="femur")).hits}
        vector = corpus()[0].vector
        assert "d01" not in {h.image_id for h in index.search(SearchQuery(vector=vector)).hits}
        assert index.delete(["d01"]) == 0

    def test_query_needs_text_or_vector(self, index: SearchIndex) -> None:
        with pytest.raises(InvalidInputError):
            index.search(SearchQuery())

    # --- relevance: score parts and the vector floor ---------------------------------------------

    def test_given_a_fused_query_when_searched_then_parts_are_the_summed_normalised_scores(
        self, index: SearchIndex
    ) -> None:
        # Given client-side fusion (the embedded engine, OpenSearch's "client" path) — When a
        # hybrid query is run — Then each hit's text_part and vector_part are the weighted
        # min-max scores fusion summed; OpenSearch's pipeline returns the fused score alone.
        alpha, text = 0.3, "fracture femur lung"
        query = unit(np.random.default_rng(3).standard_normal(DIM))
        bm25 = reference_bm25(all_captions(), text)
        cosine = {
            d.image_id: float(np.dot(d.vector, query)) for d in corpus() if d.vector is not None
        }
        nt, nv = reference_minmax(bm25), reference_minmax(cosine)
        page = index.search(SearchQuery(text=text, vector=query, alpha=alpha, k=100))
        pipeline = getattr(getattr(index, "config", None), "hybrid", "client") == "pipeline"
        for hit in page.hits:
            if pipeline:
                assert hit.text_part is None and hit.vector_part is None
                continue
            assert hit.text_part == pytest.approx((1 - alpha) * nt.get(hit.image_id, 0.0), abs=1e-4)
            assert hit.vector_part == pytest.approx(alpha * nv.get(hit.image_id, 0.0), abs=1e-4)
            assert hit.text_part + hit.vector_part == pytest.approx(hit.score, abs=1e-9)

    @pytest.mark.parametrize("mode", ["vector", "hybrid"])
    def test_given_a_vector_floor_when_searched_then_the_total_counts_only_matches(
        self, index: SearchIndex, mode: str
    ) -> None:
        # Given a floor between the 4th and 5th nearest cosines — When searched with candidate
        # lists deeper than the corpus — Then the total is the text matches plus those 4, exact,
        # on every page, and the ranking is the one without a floor.
        text = "fracture femur" if mode == "hybrid" else None
        query = unit(np.random.default_rng(5).standard_normal(DIM))
        cosines = sorted(
            (float(np.dot(d.vector, query)), d.image_id) for d in corpus() if d.vector is not None
        )[::-1]
        floor = (cosines[3][0] + cosines[4][0]) / 2
        text_ids = set(reference_bm25(all_captions(), text or ""))
        want = {i for _, i in cosines[:4]} | text_ids
        plain = index.search(SearchQuery(text=text, vector=query, k=5))
        for offset in (0, 5):
            page = index.search(
                SearchQuery(text=text, vector=query, k=5, offset=offset, vector_floor=floor)
            )
            assert (page.total, page.total_relation) == (len(want), "eq")
        page = index.search(SearchQuery(text=text, vector=query, k=5, vector_floor=floor))
        assert [h.image_id for h in page.hits] == [h.image_id for h in plain.hits]
        # Above every cosine: a vector query matches nothing, a hybrid one its text matches.
        none = index.search(SearchQuery(text=text, vector=query, k=5, vector_floor=2.0))
        assert (none.total, none.total_relation) == (len(text_ids), "eq")
        assert len(none.hits) == 5  # still shown: the floor marks, it does not hide

    def test_given_a_candidate_list_all_above_the_floor_then_the_total_is_a_lower_bound(
        self, index: SearchIndex
    ) -> None:
        # Given a floor below every cosine and 3 candidates of 12 vectors — Then at least 3.
        query = unit(np.random.default_rng(5).standard_normal(DIM))
        page = index.search(SearchQuery(vector=query, k=3, depth=3, vector_floor=-2.0))
        assert (page.total, page.total_relation) == (3, "gte")
