"""`medsearch search` and `medsearch serve` through the real entry point (``main([...])``)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CORPUS, make_image
from fastapi.testclient import TestClient

from medsearch.cli import main
from medsearch.index.base import Document
from medsearch.index.embedded import build_index
from tests.support.served_api import serve_process


@pytest.fixture(scope="module")
def text_index(tmp_path_factory: pytest.TempPathFactory, request: Any) -> Path:
    """The test corpus in the embedded engine (colour vectors: for text-mode commands)."""
    folder = tmp_path_factory.mktemp("cli-index")
    build_index(folder, request.getfixturevalue("corpus"), model_id="colour-encoder")
    return folder


@pytest.fixture(scope="module")
def model_index(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The test corpus indexed with the tiny CLIP's own image vectors (for vector modes)."""
    from medsearch.model.encoder import load_encoder

    encoder = load_encoder(str(tiny_model_dir))
    images = [make_image(colour, i % 4) for i, (_, colour, *_rest) in enumerate(CORPUS)]
    vectors = encoder.encode_images(images)
    documents = [
        Document(image_id, caption, vector, metadata={"modality": modality, "region": region})
        for (image_id, _, caption, modality, region), vector in zip(CORPUS, vectors, strict=True)
    ]
    folder = tmp_path_factory.mktemp("cli-model-index")
    build_index(folder, documents, model_id=str(tiny_model_dir))
    return folder


def test_given_an_index_when_searching_text_then_a_table_of_hits(
    text_index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "--index", str(text_index), "--mode", "text", "knee meniscus"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 matches · mode text · results 1-2")
    assert out[1].split() == ["#", "score", "bm25", "cosine", "image_id", "caption"]
    assert {line.split()[4] for line in out[2:]} == {"blue-01", "blue-02"}
    assert all(line.split()[3] == "-" for line in out[2:])  # no cosine in text mode


def test_given_json_and_filters_when_searching_then_the_api_response_is_printed(
    text_index: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["search", "--index", str(text_index), "--json", "-k", "50", "--mode", "text"]
    code = main([*argv, "--filter", "modality=CT", "--filter", "modality=US", "mass lesion"])
    body = json.loads(capsys.readouterr().out)
    assert code == 0 and body["mode"] == "text" and body["k"] == 50
    assert {r["metadata"]["modality"] for r in body["results"]} <= {"CT", "US"}
    assert {r["image_id"] for r in body["results"]} == {"green-01", "green-02", "green-03"}


def test_given_a_model_when_searching_hybrid_then_both_scores_show(
    model_index: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["search", "--index", str(model_index), "--model", str(tiny_model_dir), "--json"]
    assert main([*argv, "--alpha", "0.3", "-k", "18", "knee meniscus"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["mode"] == "hybrid" and body["alpha"] == 0.3 and body["total"] == 18
    assert {"blue-01", "blue-02"} <= {r["image_id"] for r in body["results"]}
    assert all(r["vector_score"] is not None for r in body["results"])
    assert main([*argv, "--mode", "vector", "-k", "3", "captionless too"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-k", "0"], "k must be an integer from 1 to 100"),
        (["--alpha", "2"], "alpha must be between 0 and 1"),
        (["--mode", "vector"], "needs a model and none is loaded: search in mode 'text', or"),
        (["--filter", "nonsense"], "FIELD=VALUE"),
        (["--filter", "modalty=CT"], "unknown filter field"),
    ],
)
def test_given_bad_arguments_when_searching_then_one_line_and_exit_2(
    text_index: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["search", "--index", str(text_index), *extra, "knee"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medsearch search: error:")
    assert message in err
    assert "=" not in err.partition("error:")[2] or "FIELD=VALUE" in message  # no API syntax


def test_given_a_missing_index_when_searching_or_serving_then_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "--index", str(tmp_path / "none"), "knee"]) == 2
    assert "no index at" in capsys.readouterr().err
    assert main(["serve", "--index", str(tmp_path / "none"), "--model", "x", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no index at" in err


def test_given_a_busy_port_when_serving_then_one_line_and_exit_2(
    model_index: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["serve", "--index", str(model_index), "--model", str(tiny_model_dir)]
        assert main([*argv, "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_given_serve_when_started_then_the_api_and_page_answer_on_127_0_0_1(
    model_index: Path, tiny_model_dir: Path
) -> None:
    argv = ["--index", str(model_index), "--model", str(tiny_model_dir)]
    with serve_process(argv) as (url, _):
        health = httpx.get(f"{url}/health", timeout=30).json()
        # the model by its folder name: where it lies on the server is not shown
        assert health["documents"] == 18 and health["model"] == tiny_model_dir.name
        body = httpx.get(f"{url}/search", params={"q": "knee", "k": 3}, timeout=30).json()
        assert body["mode"] == "hybrid" and len(body["results"]) == 3
        page = httpx.get(f"{url}/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()


def test_given_a_fresh_process_when_searching_then_no_faiss_loader_lines(text_index: Path) -> None:
    # faiss is imported in the command's own process, as a user runs it
    run = subprocess.run(
        [sys.executable, "-m", "medsearch.cli", "search", "--index", str(text_index), "femur"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "faiss" not in run.stderr and "ModuleNotFoundError" not in run.stderr


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from medsearch.model.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("cli-onnx") / "onnx"
    export_onnx(str(tiny_model_dir), out, int8=True)
    return out


def _served_app(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `medsearch serve` up to the server start and return the app it would serve."""
    import medsearch.api

    served: list[Any] = []
    monkeypatch.setattr(medsearch.api, "run_server", lambda app, **_: served.append(app))
    assert main(["serve", *argv, "--port", "0"]) == 0
    (app,) = served
    return app


def test_given_no_model_when_serving_then_text_search_is_served(
    text_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _served_app(["--index", str(text_index)], monkeypatch)
    with TestClient(app) as client:
        health = client.get("/v1/health").json()
        # no query encoder: text search, and similar images by their stored vectors
        assert health["model"] is None and health["modes"] == ["text", "image", "image_text"]
        body = client.get("/v1/search", params={"q": "knee meniscus"}).json()
        assert body["mode"] == "text" and {r["image_id"] for r in body["results"]} == {
            "blue-01",
            "blue-02",
        }


@pytest.mark.parametrize("int8", [True, False])
def test_given_encoder_flags_when_serving_then_the_onnx_export_answers(
    model_index: Path, onnx_export: Path, int8: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medsearch.model.onnx_encoder import OnnxEncoder

    monkeypatch.delenv("MEDSEARCH_ENCODER", raising=False)
    flags = ["--encoder", "onnx", "--int8" if int8 else "--no-int8"]
    app = _served_app(
        ["--index", str(model_index), "--model", str(onnx_export), *flags], monkeypatch
    )
    service = app.state.service_provider()
    assert isinstance(service.encoder, OnnxEncoder) and service.encoder.int8 is int8
    with TestClient(app) as client:
        body = client.get("/v1/search", params={"q": "knee", "k": 3}).json()
        assert body["mode"] == "hybrid" and len(body["results"]) == 3


def test_given_help_when_asked_then_options_say_their_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    serve = " ".join(capsys.readouterr().out.split())
    assert "--port PORT 0 picks a free port (default: 8000)" in serve
    assert "--host HOST address to listen on (default: 127.0.0.1)" in serve
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train = " ".join(capsys.readouterr().out.split())
    assert "--lr LR peak learning rate (default: 5e-05; tiny: 0.001)" in train
    assert "--seed SEED seed of initialisation, shuffling and augmentation (default: 0)" in train
    assert "(default: None)" not in serve + train and "(default: False)" not in serve + train


def test_given_api_keys_in_the_environment_when_serving_then_operations_need_one(
    text_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "serve-test-key-0123456789"
    monkeypatch.setenv("MEDSEARCH_API_KEYS", key)
    app = _served_app(["--index", str(text_index)], monkeypatch)
    with TestClient(app) as client:
        assert client.get("/v1/search", params={"q": "knee"}).status_code == 401
        ok = client.get("/v1/search", params={"q": "knee"}, headers={"X-API-Key": key})
        assert ok.status_code == 200 and client.get("/v1/health").status_code == 200


def test_given_unusable_api_keys_when_serving_then_one_line_and_exit_2(
    text_index: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEDSEARCH_API_KEYS", "too-short")
    assert main(["serve", "--index", str(text_index), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "medsearch serve: error: every API key must be at least 20 characters long"
    assert "too-short" not in err
