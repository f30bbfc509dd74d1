"""Embedded-engine behaviour beyond the shared contract: atomic generations, crashes, corrupt
folders, facets, filtered ANN, bad documents."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from index_contract import corpus, reference_terms

from medsearch.data.manifest import read_manifest
from medsearch.errors import InvalidInputError, SearchIndexError
from medsearch.index.base import Document, IndexModel, SearchIndex, SearchQuery
from medsearch.index.embedded import (
    CURRENT,
    EmbeddedConfig,
    EmbeddedIndex,
    build_index,
    build_index_with_result,
    open_index,
)
from medsearch.index.synthetic import embedding_like_vectors

REPO_ROOT = Path(__file__).resolve().parents[3]
MEDPIX = REPO_ROOT.parent / "shared" / "datasets" / "medpix"


def snapshot(index: EmbeddedIndex) -> list[tuple[str, float]]:
    """The ranking of a fixed hybrid query, to compare an index before and after an event."""
    query = SearchQuery(text="fracture lung", vector=np.ones(8, dtype=np.float32), k=100)
    return [(h.image_id, round(h.score, 6)) for h in index.search(query).hits]


def generation_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def test_embedded_index_implements_the_protocol(tmp_path: Path) -> None:
    assert isinstance(build_index(tmp_path / "i", corpus()), SearchIndex)


def test_build_killed_midway_leaves_the_previous_index_whole(tmp_path: Path) -> None:
    # Given an index built and searchable
    root = tmp_path / "index"
    before = snapshot(build_index(root, corpus(), model_id="first"))
    # When a second, larger build is killed with SIGKILL while it writes its generation
    script = textwrap.dedent(
        f"""
        from medsearch.index.base import Document
        from medsearch.index.embedded import EmbeddedConfig, build_index
        from medsearch.index.synthetic import embedding_like_vectors
        vectors = embedding_like_vectors(40_000, 64, seed=1)
        docs = (Document(f"n{{i:05d}}", "new caption", v) for i, v in enumerate(vectors))
        build_index({str(root)!r}, docs, model_id="second", config=EmbeddedConfig(exact_below=10))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob(".gen-*.tmp/vectors.npy")):
            assert proc.poll() is None, "the build finished before it could be killed"
            assert time.monotonic() < deadline, "the build never started writing"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(root.glob(".gen-*.tmp")), "killed after the swap: the test proves nothing"
    # Then the previous generation is whole: same documents, same model, same ranking
    reopened = EmbeddedIndex.open(root)
    assert reopened.model_id == "first"
    assert reopened.count() == len(corpus())
    assert snapshot(reopened) == before
    # and the next write succeeds and removes the half-written folder.
    reopened.upsert([Document("d99", "new lung fracture", np.ones(8, np.float32))])
    assert not list(root.glob(".gen-*.tmp"))
    assert reopened.count() == len(corpus()) + 1


def test_readers_keep_their_generation_until_reload(tmp_path: Path) -> None:
    # Given a reader and a writer on the same folder
    root = tmp_path / "index"
    build_index(root, corpus())
    reader = EmbeddedIndex.open(root)
    writer = EmbeddedIndex.open(root)
    # When the writer replaces a document
    writer.delete(["d01"])
    # Then the reader still sees its whole old generation, and the new one after reload().
    assert reader.get("d01") is not None and reader.count() == len(corpus())
    assert reader.reload() is True
    assert reader.get("d01") is None
    assert reader.reload() is False


def test_a_stale_handle_writes_on_top_of_the_newest_generation(tmp_path: Path) -> None:
    # Given two handles on one folder, one of which has just deleted a document
    root = tmp_path / "index"
    build_index(root, corpus())
    stale = EmbeddedIndex.open(root)
    EmbeddedIndex.open(root).delete(["d01"])
    # When the handle that has not reloaded writes
    stale.upsert([Document("new", "fresh caption", None)])
    # Then its generation holds the other handle's change too, not its own older view
    assert stale.get("d01") is None and stale.get("new") is not None
    assert stale.count() == len(corpus())
    assert EmbeddedIndex.open(root).ids() == stale.ids()


def test_only_the_live_and_previous_generations_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "index"
    index = build_index(root, corpus())
    for i in range(3):
        index.upsert([Document(f"x{i}", "extra", None)])
    assert generation_dirs(root) == ["gen-000003", "gen-000004"]
    assert (root / CURRENT).read_text().strip() == "gen-000004"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: None, "no index"),
        (lambda root: (root / CURRENT).write_text("../../etc"), "corrupt"),
        (lambda root: (root / CURRENT).write_text("gen-000009"), "missing"),
        (lambda root: (root / "gen-000001" / "meta.json").write_text("{"), "cannot read"),
        (lambda root: (root / "gen-000001" / "docs.jsonl").write_text('{"image_id": "d'), "cannot"),
        (lambda root: (root / "gen-000001" / "vectors.npy").write_bytes(b"junk"), "cannot read"),
        (lambda root: (root / "gen-000001" / "meta.json").write_text('{"format": 99}'), "format"),
    ],
)
def test_missing_or_corrupt_index_is_a_clear_error(tmp_path: Path, damage, message: str) -> None:
    root = tmp_path / "index"
    if message != "no index":
        build_index(root, corpus())
    damage(root)
    with pytest.raises(SearchIndexError, match=message):
        open_index(root)


def test_open_index_fetches_an_s3_prefix(tmp_path: Path, s3_bucket: str) -> None:
    # Given an index folder uploaded under an s3:// prefix
    from medsearch import storage

    root = tmp_path / "index"
    build_index(root, corpus(), model_id="m")
    for path in root.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"s3://{s3_bucket}/idx/{path.relative_to(root)}", path.read_bytes())
    # When opened by URL — Then it answers like the local folder.
    index = open_index(f"s3://{s3_bucket}/idx", cache_dir=tmp_path / "cache")
    assert index.count() == len(corpus()) and index.model_id == "m"
    with pytest.raises(SearchIndexError, match="cannot fetch"):
        open_index(f"s3://{s3_bucket}/nothing", cache_dir=tmp_path / "cache")


def test_open_index_fetches_only_the_live_generation_and_follows_a_new_one(
    tmp_path: Path, s3_bucket: str
) -> None:
    # Given an index folder holding two generations (the previous one is kept), uploaded to S3
    from medsearch import storage

    def upload(root: Path) -> None:
        for path in root.rglob("*"):
            if path.is_file():
                key = f"s3://{s3_bucket}/idx/{path.relative_to(root)}"
                storage.write_bytes(key, path.read_bytes())

    root = tmp_path / "index"
    first = build_index(root, corpus(), model_id="m")
    index = EmbeddedIndex.open(root)
    index.delete([corpus()[0].image_id])
    upload(root)
    assert first.generation != index.generation
    # When opened by URL — Then only the live generation is copied into the cache
    cache = tmp_path / "cache"
    remote = open_index(f"s3://{s3_bucket}/idx", cache_dir=cache)
    assert remote.generation == index.generation and remote.count() == len(corpus()) - 1
    fetched = {p.name for p in cache.rglob("gen-*") if p.is_dir()}
    assert fetched == {index.generation}
    # and when a newer generation is uploaded, the next open serves it, not the cached one.
    index.delete([corpus()[1].image_id])
    upload(root)
    again = open_index(f"s3://{s3_bucket}/idx", cache_dir=cache)
    assert again.generation == index.generation and again.count() == len(corpus()) - 2


def test_facets_skip_free_text_ids_and_numbers(tmp_path: Path) -> None:
    # Given 60 documents with a categorical field, a unique id field and ages (int and str)
    docs = [
        Document(
            f"p{i:02d}",
            "caption",
            None,
            metadata={
                "sex": ["female", "male"][i % 2],
                "case_id": f"case{i}",
                "age": i,
                "age_text": str(20 + i % 7),
                "tags": ["a", "b"] if i % 3 else ["a"],
                "urgent": i % 5 == 0,
            },
        )
        for i in range(60)
    ]
    # When facets are chosen automatically
    facets = build_index(tmp_path / "auto", docs).facets()
    # Then only the categorical fields are facets, with counts (list values counted each)
    assert set(facets) == {"sex", "tags", "urgent"}
    assert facets["sex"] == {"female": 30, "male": 30}
    assert facets["tags"] == {"a": 60, "b": 40}
    assert facets["urgent"] == {"false": 48, "true": 12}
    assert list(facets["urgent"]) == ["false", "true"]  # most common first
    # and configured facet fields win; any field can still be filtered on.
    index = build_index(tmp_path / "conf", docs, config=EmbeddedConfig(facet_fields=("case_id",)))
    assert set(index.facets()) == {"case_id"}
    assert index.facets(["age_text"])["age_text"]["20"] == 9
    # (ages 20-23 have 9 documents, 24-26 have 8: most common first, ties by value)
    assert list(index.facets(["age_text"])["age_text"]) == [str(a) for a in range(20, 27)]
    assert index.facets(["nothing"]) == {"nothing": {}}
    page = index.search(SearchQuery(text="caption", filters={"age": ["7"], "sex": ["male"]}))
    assert [h.image_id for h in page.hits] == ["p07"]


@pytest.mark.parametrize("share", [0.03, 0.5])
def test_filtered_vector_search_is_accurate_on_the_hnsw_graph(tmp_path: Path, share: float) -> None:
    # Given 20k vectors in an HNSW graph, a group holding 3% (exact path) or 50% (graph path)
    n = 20_000
    vectors = embedding_like_vectors(n, 64, seed=3)
    in_group = np.random.default_rng(0).random(n) < share
    docs = [
        Document(f"v{i:05d}", None, v, metadata={"group": "g" if in_group[i] else "other"})
        for i, v in enumerate(vectors)
    ]
    index = build_index(tmp_path / "i", docs, config=EmbeddedConfig(exact_below=1000))
    assert index.info()["ann"] == "hnsw"
    # When searched with the group as filter — Then only the group comes back, at high recall.
    members = np.flatnonzero(in_group)
    found = 0
    queries = embedding_like_vectors(20, 64, seed=4)
    for query in queries:
        page = index.search(SearchQuery(vector=query, k=10, filters={"group": ["g"]}))
        assert page.total == members.size
        got = {h.image_id for h in page.hits}
        assert all(index.get(i).metadata["group"] == "g" for i in got)  # type: ignore[union-attr]
        exact = members[np.argsort(-(vectors[members] @ query))[:10]]
        found += len(got & {f"v{i:05d}" for i in exact})
    assert found / (10 * len(queries)) >= 0.95


@pytest.mark.parametrize("exact_below", [10_000, 100])
def test_similar_images_leave_out_the_source_with_a_full_page(
    tmp_path: Path, exact_below: int
) -> None:
    # Given 600 vectors, searched exactly or on the HNSW graph, with two captionless twins of v00
    vectors = embedding_like_vectors(600, 32, seed=5)
    vectors[1] = vectors[2] = vectors[0]
    docs = [Document(f"v{i:03d}", None, v) for i, v in enumerate(vectors)]
    index = build_index(tmp_path / "i", docs, config=EmbeddedConfig(exact_below=exact_below))
    assert index.info()["ann"] == ("exact" if exact_below > 600 else "hnsw")
    # When v00's neighbours are asked for with v00 and v01 left out
    query = SearchQuery(vector=vectors[0], k=10, exclude_ids=frozenset({"v000", "v001", "nope"}))
    page = index.search(query)
    # Then the page is full, v02 (the remaining twin) leads, and the left-out ones are not counted
    got = [h.image_id for h in page.hits]
    assert len(got) == 10 and got[0] == "v002"
    assert not {"v000", "v001"} & set(got)
    assert page.total == 598
    exact = [f"v{i:03d}" for i in np.argsort(-(vectors @ vectors[0]), kind="stable")[:12]]
    if index.info()["ann"] == "exact":  # and exact search returns exactly the exact ranking
        assert got == [i for i in exact if i not in {"v000", "v001"}][:10]


def test_bad_documents_are_reported_and_the_rest_written(tmp_path: Path) -> None:
    good = Document("ok", "fine caption", np.ones(4, np.float32))
    bad = [
        Document("../x", "path-like id", None),
        Document("zero", "zero vector", np.zeros(4, np.float32)),
        Document("nan", "nan vector", np.array([np.nan, 1, 1, 1], np.float32)),
        Document("meta", "bad metadata", None, metadata={"x": object()}),
    ]
    index, result = build_index_with_result(tmp_path / "i", [good, *bad])
    assert result.written == 1
    assert {image_id for image_id, _ in result.failed} == {"../x", "zero", "nan", "meta"}
    assert index.count() == 1 and index.dim == 4


def test_mixed_dimensions_in_one_build_are_invalid(tmp_path: Path) -> None:
    docs = [Document("a", None, np.ones(4)), Document("b", None, np.ones(5))]
    with pytest.raises(InvalidInputError, match="dimension"):
        build_index(tmp_path / "i", docs)
    assert not (tmp_path / "i" / CURRENT).exists()


@pytest.mark.parametrize(
    "query",
    [
        SearchQuery(text="x", k=0),
        SearchQuery(text="x", k=101),
        SearchQuery(text="x", offset=-1),
        SearchQuery(text="x", offset=10_000),
        SearchQuery(text="x", alpha=2.0),
        SearchQuery(vector=np.zeros(8, np.float32)),
        SearchQuery(vector=np.full(8, np.inf, np.float32)),
        SearchQuery(vector=np.ones((2, 8), np.float32)),
        SearchQuery(text="x", filters={"modality": []}),
    ],
)
def test_invalid_queries_are_invalid_input(tmp_path: Path, query: SearchQuery) -> None:
    index = build_index(tmp_path / "i", corpus())
    with pytest.raises(InvalidInputError):
        index.search(query)


def test_empty_index_answers_empty(tmp_path: Path) -> None:
    index = EmbeddedIndex.create(tmp_path / "i", model_id="m")
    assert index.count() == 0 and index.dim is None and index.facets() == {}
    assert index.search(SearchQuery(text="lung")).total == 0
    assert index.search(SearchQuery(vector=np.ones(8, np.float32))).total == 0
    assert EmbeddedIndex.create(tmp_path / "i").generation == index.generation


def test_generation_metadata_is_recorded(tmp_path: Path) -> None:
    index = build_index(tmp_path / "i", corpus(), model_id="clip-tiny")
    meta = json.loads((tmp_path / "i" / index.generation / "meta.json").read_text())
    assert meta["model_id"] == "clip-tiny" and meta["dim"] == 8 and meta["count"] == len(corpus())
    assert meta["ann"] == "exact"  # a collection this small is searched exactly


def test_the_model_that_made_the_vectors_is_recorded_and_kept_by_upserts(tmp_path: Path) -> None:
    # Given an index built from the vectors of one model
    index = build_index(tmp_path / "i", corpus(), model_id="clip-tiny", fingerprint="sha256:ab")
    meta = json.loads((tmp_path / "i" / index.generation / "meta.json").read_text())
    assert meta["model_fingerprint"] == "sha256:ab"
    assert index.indexed_model() == IndexModel("clip-tiny", "sha256:ab")
    # When documents are upserted and deleted, Then the record stays
    index.upsert([Document("new-1", "a new caption", np.ones(8, np.float32))])
    index.delete(["new-1"])
    assert open_index(tmp_path / "i").indexed_model() == IndexModel("clip-tiny", "sha256:ab")
    # And an index built without a fingerprint (as before them) records none
    old = build_index(tmp_path / "old", corpus(), model_id="clip-tiny")
    assert old.indexed_model() == IndexModel("clip-tiny", None)


@pytest.mark.skipif(not MEDPIX.exists(), reason="MedPix sample not present")
def test_medpix_captions_are_searchable(tmp_path: Path) -> None:
    # Given the real MedPix sample with embedding-like stand-in vectors
    records = read_manifest(MEDPIX / "manifest.jsonl")
    ids = [r.image_id for r in records]
    docs = [
        Document(r.image_id, r.caption, v, r.image, r.metadata)
        for r, v in zip(records, embedding_like_vectors(len(ids), 32), strict=True)
    ]
    index = build_index(tmp_path / "ix", docs)
    # When searched for a finding — Then every match mentions a query word's stem, best first.
    for query in ("pulmonary embolism", "fracture of the femur", "brain tumor MRI"):
        stems = set(reference_terms(query))
        page = index.search(SearchQuery(text=query, k=20))
        matching = [r for r in records if r.caption and stems & set(reference_terms(r.caption))]
        assert page.total == len(matching) > 0
        for hit in page.hits:
            caption = index.get(hit.image_id).caption  # type: ignore[union-attr]
            assert stems & set(reference_terms(caption or ""))


def test_an_upsert_with_nothing_valid_keeps_the_generation(tmp_path: Path) -> None:
    index = build_index(tmp_path / "i", corpus())
    generation = index.generation
    result = index.upsert([Document("../bad", "x", None)])
    assert result.written == 0 and [i for i, _ in result.failed] == ["../bad"]
    assert index.upsert([]).written == 0
    assert index.generation == generation and index.count() == len(corpus())


ACCELERATORS = ("docs_offsets.npy", "image_ids.json", "filters.json", "filter_rows.npy")


def _answers(index: EmbeddedIndex) -> dict[str, object]:
    """What readers see: documents, facets, and filtered text, vector and hybrid rankings."""
    vector = np.ones(8, dtype=np.float32)
    queries = [
        SearchQuery(text="fracture lung", k=100),
        SearchQuery(text="fracture lung", filters={"modality": ["CT", "MRI"]}, k=100),
        SearchQuery(vector=vector, filters={"region": ["chest"]}, k=100),
        SearchQuery(text="fracture", vector=vector, filters={"modality": ["X-ray"]}, k=100),
    ]
    return {
        "docs": [
            (d.image_id, d.caption, d.image, dict(d.metadata), d.vector is not None)
            for d in index.get_many(index.ids()).values()
        ],
        "facets": index.facets(),
        "filterable": index.filter_fields(),
        "rankings": [
            [(h.image_id, round(h.score, 6)) for h in index.search(q).hits] for q in queries
        ],
    }


def test_given_a_generation_when_opened_then_rows_and_filters_come_from_its_stored_tables(
    tmp_path: Path,
) -> None:
    # Given an index as build_index writes it now, and the same generation without the tables
    # that let it open without parsing every row (as generations written before them are)
    built = build_index(tmp_path / "new", corpus())
    expected = _answers(EmbeddedIndex.open(tmp_path / "new"))
    gen = tmp_path / "new" / (tmp_path / "new" / CURRENT).read_text().strip()
    assert all((gen / name).is_file() for name in ACCELERATORS)
    old = tmp_path / "old"
    old.mkdir()
    (old / CURRENT).write_text(gen.name)
    shutil.copytree(gen, old / gen.name)
    for name in ACCELERATORS:
        (old / gen.name / name).unlink()
    meta = json.loads((old / gen.name / "meta.json").read_text())
    del meta["captioned_without_vector"]
    (old / gen.name / "meta.json").write_text(json.dumps(meta))
    # Then both answer every read alike
    assert _answers(EmbeddedIndex.open(old)) == expected
    assert built.count() == len(corpus())
    # and an upsert into the older generation writes the tables again
    reopened = EmbeddedIndex.open(old)
    reopened.upsert([Document("x-new", "new fracture", None, None, {"modality": "CT"})])
    newest = old / (old / CURRENT).read_text().strip()
    assert all((newest / name).is_file() for name in ACCELERATORS)
    assert (
        EmbeddedIndex.open(old).facets()["modality"]["CT"]
        == expected["facets"]["modality"]["CT"] + 1
    )  # type: ignore[index]


def test_given_damaged_row_tables_when_opened_or_filtered_then_a_clear_error(
    tmp_path: Path,
) -> None:
    root = tmp_path / "index"
    build_index(root, corpus())
    gen = root / (root / CURRENT).read_text().strip()
    (gen / "docs_offsets.npy").write_bytes(b"not an npy")
    with pytest.raises(SearchIndexError, match="cannot read"):
        EmbeddedIndex.open(root)
    build_index(root, corpus())
    gen = root / (root / CURRENT).read_text().strip()
    (gen / "filter_rows.npy").unlink()
    index = EmbeddedIndex.open(root)  # the filters are read on first use
    with pytest.raises(SearchIndexError, match="cannot read the filters"):
        index.facets()
