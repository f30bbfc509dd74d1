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
from tests.support.cli_output import one_line_error


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


# --- replacing a live index: the publish guard ----------------------------------------------------


def small_corpus(folder: Path, n: int) -> tuple[Path, Path]:
    """Write a manifest of ``n`` captioned records and vectors for them; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.jsonl"
    rows = [{"image_id": f"img-{i}", "image": f"{i}.png", "caption": f"CT {i}"} for i in range(n)]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ids = [row["image_id"] for row in rows]
    vectors = write_vectors(folder / "vectors", ids, embedding_like_vectors(max(n, 1), 8)[:n], "m")
    return manifest, vectors


def run_index(manifest: Path, vectors: Path, index: Path, *flags: str) -> int:
    return main(
        ["index", "--data", str(manifest), "--vectors", str(vectors), "--index", str(index), *flags]
    )


def test_given_a_live_index_when_an_empty_manifest_is_indexed_then_refused_and_index_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a live index of 5 documents
    index = tmp_path / "ix"
    assert run_index(*small_corpus(tmp_path / "full", 5), index) == 0
    generation = open_index(index).generation
    capsys.readouterr()
    # When an empty manifest is indexed into it
    empty_manifest, empty_vectors = small_corpus(tmp_path / "empty", 0)
    code = run_index(empty_manifest, empty_vectors, index)
    # Then the command ends with one line, and the live index is untouched
    assert code == 2
    line = one_line_error(capsys.readouterr().err, "index")
    assert "no documents" in line and "--allow-empty" in line
    assert open_index(index).count() == 5 and open_index(index).generation == generation
    # and --allow-empty publishes the empty index on purpose.
    assert run_index(empty_manifest, empty_vectors, index, "--allow-empty") == 0
    assert open_index(index).count() == 0


def test_given_a_live_index_when_a_manifest_drops_too_many_then_refused_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = tmp_path / "ix"
    assert run_index(*small_corpus(tmp_path / "full", 10), index) == 0
    half = small_corpus(tmp_path / "half", 5)
    capsys.readouterr()
    # 5 of 10 is more than the default 10 % drop: refused, the index keeps its 10
    assert run_index(*half, index) == 2
    line = one_line_error(capsys.readouterr().err, "index")
    assert "5 fewer" in line and "--force" in line
    assert open_index(index).count() == 10
    # A drop within --max-drop, or --force, publishes
    assert run_index(*small_corpus(tmp_path / "nine", 9), index) == 0
    assert open_index(index).count() == 9
    assert run_index(*half, index, "--max-drop", "0.2") == 2
    assert run_index(*half, index, "--max-drop", "0.5") == 0
    assert open_index(index).count() == 5
    assert run_index(*small_corpus(tmp_path / "one", 1), index, "--force") == 0
    assert open_index(index).count() == 1


def test_given_a_max_drop_outside_0_1_when_indexing_then_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_index(*small_corpus(tmp_path / "c", 2), tmp_path / "ix", "--max-drop", "1.5") == 2
    assert "max drop must be a share in [0, 1]" in one_line_error(capsys.readouterr().err, "index")
    assert not (tmp_path / "ix").exists()
