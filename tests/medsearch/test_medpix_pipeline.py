"""The pipeline on real data: MedPix through `medsearch train`, `evaluate` and `vectorize`.

Runs the real entry point (``medsearch.cli.main``) on ``../shared/datasets/medpix`` and skips
when that folder is absent. Training is one short epoch of the tiny model: this checks that real
images and captions flow through every stage cleanly, not model quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsearch.cli import main
from medsearch.data.manifest import read_manifest
from medsearch.vectorize import read_vectors

pytestmark = pytest.mark.slow

REPORT_KEYS = {"model", "split", "n", "in_batch", "text_to_image", "image_to_text", "queries"}
DIRECTION_KEYS = {"r@1", "r@5", "r@10", "mrr@10", "median_rank"}


@pytest.fixture(scope="module")
def medpix_model(medpix_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP trained for one short epoch on MedPix's train split."""
    out = tmp_path_factory.mktemp("medpix-model")
    code = main(
        [
            "train",
            "--data",
            str(medpix_dir / "manifest.jsonl"),
            "--out",
            str(out),
            "--base",
            "tiny",
            "--epochs",
            "1",
            "--max-samples",
            "128",
            "--batch-size",
            "32",
            # The evaluate test below scores the model; evaluating inside training would double it.
            "--no-eval-each-epoch",
        ]
    )
    assert code == 0
    return out


def test_given_medpix_when_trained_one_epoch_then_the_model_folder_loads(
    medpix_model: Path,
) -> None:
    from medsearch.model.encoder import load_encoder

    encoder = load_encoder(str(medpix_model))
    vectors = encoder.encode_texts(["CT of the chest reveals an obstructing mass"])
    assert vectors.shape == (1, encoder.dim)
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-5)


def test_given_the_medpix_model_when_evaluated_on_validation_then_a_full_report(
    medpix_dir: Path, medpix_model: Path, tmp_path: Path
) -> None:
    # Given the validation split (197 images) and the query set beside the manifest
    manifest = medpix_dir / "manifest.jsonl"
    n_validation = len(read_manifest(manifest, split="validation"))
    out = tmp_path / "report.json"
    # When
    command = ["evaluate", "--model", str(medpix_model), "--data", str(manifest)]
    code = main([*command, "--split", "validation", "--out", str(out)])
    # Then every section is present and every number is a sane metric
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) == REPORT_KEYS
    assert report["split"] == "validation" and report["n"] == n_validation
    assert report["in_batch"]["batch_size"] == 64
    for direction in ("text_to_image", "image_to_text"):
        assert set(report[direction]) == DIRECTION_KEYS
        assert 1.0 <= report[direction]["median_rank"] <= n_validation
        assert 0.0 <= report[direction]["r@1"] <= report[direction]["r@10"] <= 1.0
    assert all(0.0 <= v <= 1.0 for k, v in report["in_batch"].items() if k.startswith("mrr"))
    assert 0.0 <= report["queries"]["ndcg@10"] <= 1.0
    assert (tmp_path / "report.html").exists() and (tmp_path / "report.png").exists()


def test_given_the_medpix_model_when_vectorized_then_every_image_has_a_unit_vector(
    medpix_dir: Path, medpix_model: Path, tmp_path: Path
) -> None:
    manifest = medpix_dir / "manifest.jsonl"
    records = read_manifest(manifest)
    out = tmp_path / "vectors"
    # When
    command = ["vectorize", "--model", str(medpix_model), "--data", str(manifest)]
    code = main([*command, "--out", str(out)])
    # Then all 1850 images (every split) are embedded, in manifest order, unit length
    assert code == 0
    ids, vectors, meta = read_vectors(out)
    assert len(records) == 1850
    assert ids == [r.image_id for r in records]
    assert vectors.shape == (1850, meta["dim"])
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vectors).all()
    assert (out / "bad_records.jsonl").read_text() == ""
