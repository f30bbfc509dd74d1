"""The service refuses at startup a model whose weights are not those of the index's vectors.

Two tiny CLIPs of the same dimension and tokenizer, different seeds, stand for a fine-tune and its
base: their vectors have the same shape, so only the weight fingerprint can tell them apart.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from medsearch.api import build_service, create_app
from medsearch.cli import main
from medsearch.data.manifest import read_manifest
from medsearch.errors import ConfigError
from medsearch.index.embedded import build_index, open_index
from medsearch.indexing import index_manifest, read_index_input
from medsearch.model.encoder import TorchEncoder, load_encoder
from medsearch.search import SearchService
from medsearch.settings import ServiceSettings
from medsearch.vectorize import vectorize
from tests.support.cli_output import one_line_error


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path) -> Path:
    """A tiny CLIP like ``tiny_model_dir`` (same dimension and tokenizer) with other weights."""
    from medsearch.model.loading import save_clip
    from medsearch.model.tiny import build_tiny_clip

    captions = [r.caption for r in read_manifest(synth_corpus) if r.caption]
    out = tmp_path_factory.mktemp("other-tiny-clip")
    save_clip(build_tiny_clip(captions, seed=1), out)
    return out


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model_dir: Path) -> TorchEncoder:
    return load_encoder(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def vectors_dir(
    tmp_path_factory: pytest.TempPathFactory, synth_corpus: Path, tiny_encoder: TorchEncoder
) -> Path:
    """The synthetic corpus vectorized with the tiny model."""
    out = tmp_path_factory.mktemp("model-check") / "vectors"
    vectorize(tiny_encoder, read_manifest(synth_corpus), out, progress=False)
    return out


@pytest.fixture(scope="module")
def index_dir(synth_corpus: Path, vectors_dir: Path) -> Path:
    """The embedded index built from those vectors (``medsearch index``'s path)."""
    index = vectors_dir.parent / "index"
    index_manifest(synth_corpus, vectors_dir, index)
    return index


def test_given_an_index_then_it_records_the_weights_its_vectors_came_from(
    index_dir: Path, vectors_dir: Path, tiny_model_dir: Path, tiny_encoder: TorchEncoder
) -> None:
    recorded = open_index(index_dir).indexed_model()
    assert recorded.model_id == str(tiny_model_dir)
    assert recorded.fingerprint == tiny_encoder.fingerprint
    assert recorded.fingerprint is not None and recorded.fingerprint.startswith("sha256:")


def test_given_a_model_of_the_same_dim_and_other_weights_when_serving_then_refused_in_one_line(
    index_dir: Path, tiny_model_dir: Path, other_model_dir: Path, tiny_encoder: TorchEncoder
) -> None:
    # Given the index of the tiny model and another model of the same dimension
    index = open_index(index_dir)
    other = load_encoder(str(other_model_dir), device="cpu")
    assert other.dim == index.dim and other.fingerprint != tiny_encoder.fingerprint
    # When the service starts with it, Then it refuses, naming both models and their weights
    with pytest.raises(ConfigError) as refused:
        SearchService(index, other)
    message = str(refused.value)
    assert "\n" not in message
    assert str(tiny_model_dir) in message and str(other_model_dir) in message
    assert tiny_encoder.fingerprint in message and other.fingerprint in message


def test_given_the_same_weights_in_another_folder_when_serving_then_accepted_quietly(
    index_dir: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the model the index was built with, copied elsewhere (another model id)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    # When served
    with caplog.at_level(logging.WARNING, logger="medsearch.search"):
        service = SearchService(open_index(index_dir), load_encoder(str(copy), device="cpu"))
    # Then it is accepted without a warning, and vector search runs
    assert "fingerprint" not in caplog.text
    assert service.search("chest x-ray", mode="vector", k=3).results


def test_given_an_index_from_before_fingerprints_then_accepted_with_a_warning_dim_checked(
    synth_corpus: Path,
    vectors_dir: Path,
    other_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an index that records a model id only (as indexes were built before fingerprints)
    source = read_index_input(synth_corpus, vectors_dir)
    old = build_index(tmp_path / "old", source.documents(), model_id=source.model_id)
    assert old.indexed_model().fingerprint is None
    # When a same-dimension model serves it, Then it is accepted, with a warning
    with caplog.at_level(logging.WARNING, logger="medsearch.search"):
        SearchService(old, load_encoder(str(other_model_dir), device="cpu"))
    assert "no weight fingerprint" in caplog.text
    # And a model of another dimension is still refused
    from medsearch.model.loading import save_clip
    from medsearch.model.tiny import TinyClipSpec, build_tiny_clip

    captions = [r.caption for r in read_manifest(synth_corpus) if r.caption]
    wide = tmp_path / "wide"
    save_clip(build_tiny_clip(captions, spec=TinyClipSpec(projection_dim=64), seed=0), wide)
    with pytest.raises(ConfigError, match="holds 128-d vectors"):
        SearchService(old, load_encoder(str(wide), device="cpu"))


def test_given_the_api_factory_when_the_model_has_other_weights_then_the_service_never_starts(
    index_dir: Path, tiny_model_dir: Path, other_model_dir: Path
) -> None:
    settings = ServiceSettings(index_dir=str(index_dir), model=str(other_model_dir))
    # build_service (the CLI and the Lambda's factory) refuses
    with pytest.raises(ConfigError, match="other weights"):
        build_service(settings)
    # And the app built from the settings answers 503 with the reason, naming both models by
    # their folders' names: where they lie on the server's disk is not shown
    response = TestClient(create_app(settings)).get("/v1/health")
    assert response.status_code == 503
    detail = response.json()["error"]["message"]
    assert f"model {tiny_model_dir.name} " in detail and f"model {other_model_dir.name} " in detail
    assert str(tiny_model_dir.parent) not in detail
    # While the model the index was built with starts
    good = ServiceSettings(index_dir=str(index_dir), model=str(tiny_model_dir))
    assert TestClient(create_app(good)).get("/v1/health").json()["model"] == tiny_model_dir.name


def test_given_the_cli_when_searching_or_serving_with_other_weights_then_one_line_and_exit_2(
    index_dir: Path, tiny_model_dir: Path, other_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--index", str(index_dir), "--model", str(other_model_dir)]
    assert main(["search", *argv, "--mode", "vector", "chest x-ray"]) == 2
    line = one_line_error(capsys.readouterr().err, "search")
    assert str(tiny_model_dir) in line and str(other_model_dir) in line
    assert main(["serve", *argv, "--port", "0"]) == 2
    assert "other weights" in one_line_error(capsys.readouterr().err, "serve")
