"""`medsearch index`: a manifest joined with a vectorize folder becomes a searchable index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsearch.cli import main
from medsearch.data.manifest import read_manifest
from medsearch.index.base import SearchQuery
from medsearch.index.embedded import open_index
from medsearch.index.synthetic import embedding_like_vectors
from medsearch.indexing import index_manifest


def write_vectors(folder: Path, ids: list[str], vectors: np.ndarray, model: str) -> Path:
    """Write a folder in `medsearch vectorize`'s layout (vectors.npy, ids.json, meta.json)."""
    folder.mkdir(parents=True)
    np.save(folder / "vectors.npy", vectors.astype(np.float32))
    (folder / "ids.json").write_text(json.dumps(ids))
    meta = {"model": model, "dim": int(vectors.shape[1]), "count": len(ids)}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_index_command_joins_manifest_and_vectors(
    tmp_path: Path, synth_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a manifest, and vectors for all records but three (plus one id the manifest lacks)
    records = read_manifest(synth_corpus)
    vectorized = [r.image_id for r in records[3:]] + ["stray"]
    vectors = embedding_like_vectors(len(vectorized), 16, seed=0)
    folder = write_vectors(tmp_path / "vectors", vectorized, vectors, "tiny-clip")
    # When `medsearch index` runs
    code = main(
        [
            "index",
            "--data",
            str(synth_corpus),
            "--vectors",
            str(folder),
            "--index",
            str(tmp_path / "ix"),
        ]
    )
    # Then every record is indexed, the three without a vector are reported, and the model kept
    out = capsys.readouterr().out
    assert code == 0
    assert f"indexed {len(records)} documents" in out
    assert "without a vector (text search only): 3" in out
    assert "not in the manifest (ignored): 1" in out
    index = open_index(tmp_path / "ix")
    assert index.count() == len(records) and index.model_id == "tiny-clip" and index.dim == 16
    first = index.get(records[0].image_id)
    assert first is not None and first.vector is None and first.caption == records[0].caption
    assert first.image == records[0].image and dict(first.metadata) == dict(records[0].metadata)
    # and a captionless record is found by its vector, never by text.
    captionless = next(r for r in records[3:] if r.caption is None)
    row = vectorized.index(captionless.image_id)
    hits = index.search(SearchQuery(vector=vectors[row], k=1)).hits
    assert hits[0].image_id == captionless.image_id
    assert index.facets()["modality"]


def test_index_command_without_vectors_folder_fails_cleanly(
    tmp_path: Path, synth_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "index",
            "--data",
            str(synth_corpus),
            "--vectors",
            str(tmp_path / "none"),
            "--index",
            str(tmp_path / "ix"),
        ]
    )
    assert code == 2
    assert "medsearch index: error:" in capsys.readouterr().err
    assert not (tmp_path / "ix").exists()


def test_reindexing_replaces_the_index_atomically(tmp_path: Path, synth_corpus: Path) -> None:
    records = read_manifest(synth_corpus)
    ids = [r.image_id for r in records]
    folder = write_vectors(tmp_path / "v", ids, embedding_like_vectors(len(ids), 16), "one")
    index_manifest(synth_corpus, folder, tmp_path / "ix")
    shutil.rmtree(folder)
    write_vectors(folder, ids[:10], embedding_like_vectors(10, 16), "two")
    summary = index_manifest(synth_corpus, folder, tmp_path / "ix")
    assert summary.with_vector == 10 and len(summary.without_vector) == len(ids) - 10
    assert open_index(tmp_path / "ix").model_id == "two"
