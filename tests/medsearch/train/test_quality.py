"""The quality bar: the tiny CLIP trained on the default synthetic corpus must really retrieve.

On the default corpus (`medsearch synth` defaults), `train --base tiny` with its default settings
must reach full-pool text→image R@10 >= 0.6 on the test split, and at least 3x the R@10 of the
untrained (`--epochs 0`) model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medsearch.data.manifest import read_manifest
from medsearch.data.synth import SynthConfig, write_synthetic_corpus
from medsearch.evaluate import evaluate_model
from medsearch.model.encoder import load_encoder
from medsearch.train import load_train_config, train

log = logging.getLogger(__name__)


def _test_r10(model: Path, manifest: Path) -> float:
    report = evaluate_model(load_encoder(str(model)), read_manifest(manifest, split="test"))
    return float(report["text_to_image"]["r@10"])


@pytest.mark.slow
def test_given_default_corpus_when_tiny_trained_then_r10_clears_the_bar(tmp_path: Path) -> None:
    # Given the default synthetic corpus
    manifest = write_synthetic_corpus(tmp_path / "corpus", SynthConfig())
    # When the tiny model is saved untrained and trained with its defaults
    base = {"data": str(manifest), "base": "tiny"}
    train(load_train_config(None, {**base, "out": str(tmp_path / "baseline"), "epochs": 0}))
    result = train(load_train_config(None, {**base, "out": str(tmp_path / "trained")}))
    baseline = _test_r10(tmp_path / "baseline", manifest)
    trained = _test_r10(tmp_path / "trained", manifest)
    log.warning(
        "test text→image R@10: trained %.3f, epochs-0 %.3f (%.1fx), training %.0fs",
        trained,
        baseline,
        trained / max(baseline, 1e-9),
        result.seconds,
    )
    # Then it clears both bounds
    assert trained >= 0.6
    assert trained >= 3 * baseline
