"""The HTTP API through FastAPI's TestClient: endpoints, filters, uploads, stage paths, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import ColourEncoder, MemoryIndex, dicom_bytes, make_image
from fastapi import FastAPI
from fastapi.testclient import TestClient

from medsearch.api import ERROR_STATUS, create_app, get_service, status_for
from medsearch.errors import (
    ConfigError,
    ImageTooLargeError,
    InvalidInputError,
    ManifestError,
    NotFoundError,
    PayloadTooLargeError,
    SearchIndexError,
    UnsupportedMediaTypeError,
)
from medsearch.index.base import Document
from medsearch.search import SearchService
from medsearch.settings import ServiceSettings, load_settings


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "web"
    folder.mkdir()
    (folder / "index.html").write_text("<!doctype html><title>medsearch</title>")
    (folder / "config.json").write_text('{"apiBaseUrl": ""}')
    return folder


@pytest.fixture
def app(service: SearchService, web_dir: Path) -> FastAPI:
    return create_app(ServiceSettings(web_dir=web_dir), service_factory=lambda: service)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


def ids(body: dict[str, Any]) -> list[str]:
    return [r["image_id"] for r in body["results"]]


def test_given_the_app_when_health_then_status_count_and_model(client: TestClient) -> None:
    response = client.get("/v1/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "documents": 18,
        "model": "colour-encoder",
        "dim": 12,
        "modes": ["text", "vector", "hybrid", "image", "image_text", "upload"],
    }


def test_given_a_query_when_search_then_the_response_has_every_field(client: TestClient) -> None:
    response = client.get("/v1/search", params={"q": "knee meniscus", "mode": "hybrid", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"query", "mode", "alpha", "image_id", "total", "total_relation", "offset",
                         "k", "took_ms", "results", "best_match", "vector_floor"}  # fmt: skip
    assert (body["query"], body["mode"], body["alpha"], body["offset"]) == (
        "knee meniscus",
        "hybrid",
        0.5,
        0,
    )
    assert ids(body)[0] in {"blue-01", "blue-02"} and len(body["results"]) == 3
    hit = body["results"][0]
    assert set(hit) == {"image_id", "caption", "caption_truncated", "score", "bm25_score",
                        "vector_score", "text_part", "vector_part", "highlights", "low_confidence",
                        "metadata", "metadata_truncated", "image_url"}  # fmt: skip
    # without a configured public URL, image links are relative to the API's base URL
    assert hit["image_url"] == f"v1/images/{hit['image_id']}/file"


def test_given_query_parameters_when_not_the_endpoints_own_then_they_filter(
    client: TestClient,
) -> None:
    body = client.get("/v1/search?q=mass&mode=text&modality=CT&modality=MRI&k=100").json()
    assert {r["metadata"]["modality"] for r in body["results"]} == {"CT", "MRI"}
    anded = client.get("/v1/search?q=red&mode=vector&modality=CT&region=chest&k=100").json()
    assert anded["total"] == 3
    # an emptied form field sets no constraint
    unfiltered = client.get("/v1/search?q=mass&mode=text").json()["total"]
    assert client.get("/v1/search?q=mass&mode=text&modality=").json()["total"] == unfiltered == 3
    unknown = client.get("/v1/search?q=mass&modalty=CT")
    assert unknown.status_code == 422
    assert (
        "'modalty'" in unknown.json()["error"]["message"]
        and "modality" in unknown.json()["error"]["message"]
    )


def test_given_paging_when_requesting_page_two_then_it_continues_page_one(
    client: TestClient,
) -> None:
    first = client.get("/v1/search?q=chest x-ray&mode=hybrid&k=5").json()
    second = client.get("/v1/search?q=chest x-ray&mode=hybrid&k=5&offset=5").json()
    whole = client.get("/v1/search?q=chest x-ray&mode=hybrid&k=10").json()
    assert ids(first) + ids(second) == ids(whole)
    assert first["total"] == second["total"] == whole["total"]


def test_given_an_image_id_when_record_file_and_similar_then_each_answers(
    client: TestClient,
) -> None:
    record = client.get("/v1/images/red-03").json()
    assert record == {
        "image_id": "red-03",
        "caption": "Right lung nodule on chest CT",
        "metadata": {"modality": "CT", "region": "chest", "colour": "red"},
        "image_url": "v1/images/red-03/file",
        "has_vector": True,
    }
    file = client.get("/v1/images/red-03/file")
    assert file.status_code == 200 and file.headers["content-type"] == "image/png"
    assert file.content.startswith(b"\x89PNG")
    similar = client.get("/v1/images/red-03/similar?mode=image&k=3").json()
    assert "red-03" not in ids(similar) and {i.split("-")[0] for i in ids(similar)} == {"red"}
    image_text = client.get("/v1/images/red-03/similar?mode=image_text&alpha=0.2&k=3").json()
    assert image_text["query"] == "Right lung nodule on chest CT" and image_text["alpha"] == 0.2
    filtered = client.get("/v1/images/red-03/similar?k=100&modality=XR").json()
    assert {r["metadata"]["modality"] for r in filtered["results"]} == {"XR"}


def test_given_facets_when_asked_then_fields_values_and_counts(client: TestClient) -> None:
    facets = client.get("/v1/facets").json()
    assert facets["modality"] == {"XR": 7, "CT": 5, "MRI": 4, "US": 2}
    assert set(facets) == {"modality", "region", "colour"}


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        ("copy.png", "png", "yellow-03"),
        ("copy.jpg", "jpeg", "yellow-03"),
    ],
)
def test_given_an_upload_when_searching_then_its_copy_ranks_first(
    client: TestClient, make_upload: Any, name: str, payload: str, expected: str
) -> None:
    data = make_upload("yellow", 2, payload)
    response = client.post(
        "/v1/search/image", files={"file": (name, data, "application/x-anything")}
    )
    assert response.status_code == 200, response.text
    assert ids(response.json())[0] == expected and response.json()["mode"] == "upload"


def test_given_a_dicom_upload_when_searching_then_the_grey_copy_ranks_first(
    client: TestClient,
) -> None:
    data = dicom_bytes(make_image("grey", 2))
    response = client.post("/v1/search/image", files={"file": ("scan.dcm", data)})
    assert response.status_code == 200, response.text
    assert ids(response.json())[0] == "grey-03"


def test_given_upload_parameters_as_form_or_query_when_searching_then_both_work(
    client: TestClient, make_upload: Any
) -> None:
    data = make_upload("grey")
    as_form = client.post(
        "/v1/search/image",
        files={"file": ("a.png", data)},
        data={"q": "pleural effusion", "alpha": "0.25", "k": "2"},
    ).json()
    as_query = client.post(
        "/v1/search/image?q=pleural%20effusion&alpha=0.25&k=2", files={"file": ("a.png", data)}
    ).json()
    assert as_form == {**as_query, "took_ms": as_form["took_ms"]}
    assert as_form["alpha"] == 0.25 and as_form["query"] == "pleural effusion"
    assert len(as_form["results"]) == 2
    filtered = client.post("/v1/search/image?modality=CT&k=100", files={"file": ("a.png", data)})
    assert {r["metadata"]["modality"] for r in filtered.json()["results"]} == {"CT"}


def test_given_a_stage_path_when_served_behind_it_then_routes_docs_and_urls_include_it(
    service: SearchService,
) -> None:
    app = create_app(ServiceSettings(root_path="prod/"), service_factory=lambda: service)
    # Mangum hands the app the path with the stage stripped, and no root_path
    client = TestClient(app)
    body = client.get("/v1/search?q=knee&k=1").json()
    # relative to the API's base URL, which holds the stage: no Host header needed
    assert body["results"][0]["image_url"].startswith("v1/images/")
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/prod/docs/openapi-3.0.json" in docs.text
    assert client.get("/docs/openapi-3.0.json").json()["servers"] == [{"url": "/prod"}]
    assert "/v1/search" in client.get("/openapi.json").json()["paths"]
    # a server that keeps the prefix in the path (uvicorn --root-path) works too
    behind = TestClient(app, root_path="/prod")
    assert (
        behind.get("/prod/v1/search?q=knee&k=1")
        .json()["results"][0]["image_url"]
        .startswith("v1/images/")
    )


def test_given_no_web_dir_when_root_requested_then_redirect_to_docs(
    service: SearchService,
) -> None:
    client = TestClient(create_app(ServiceSettings(), service_factory=lambda: service))
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/docs"


def test_given_a_web_dir_when_root_requested_then_the_page_and_config_are_served(
    client: TestClient,
) -> None:
    assert "<title>medsearch</title>" in client.get("/").text
    assert client.get("/config.json").json() == {"apiBaseUrl": ""}
    assert client.get("/docs").status_code == 200
    assert client.get("/no-such-page.html").status_code == 404


def test_given_cors_origins_when_a_browser_asks_then_only_those_are_allowed(
    service: SearchService,
) -> None:
    settings = ServiceSettings(cors_origins=["https://app.example.org"])
    client = TestClient(create_app(settings, service_factory=lambda: service))
    allowed = client.get("/v1/health", headers={"Origin": "https://app.example.org"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.org"
    other = client.get("/v1/health", headers={"Origin": "https://evil.example.org"})
    assert "access-control-allow-origin" not in other.headers


def test_given_a_factory_when_the_app_is_created_then_the_service_is_built_lazily_once(
    service: SearchService,
) -> None:
    calls: list[int] = []

    def factory() -> SearchService:
        calls.append(1)
        return service

    client = TestClient(create_app(ServiceSettings(), service_factory=factory))
    assert calls == []
    assert client.get("/openapi.json").status_code == 200 and calls == []
    client.get("/v1/health")
    client.get("/v1/search?q=knee")
    assert calls == [1]


def test_given_an_override_when_testing_then_dependency_overrides_replace_the_service(
    index: MemoryIndex,
) -> None:
    app = create_app(ServiceSettings(), service_factory=lambda: pytest.fail("factory used"))
    app.dependency_overrides[get_service] = lambda: SearchService(index, None)
    body = TestClient(app).get("/v1/health").json()
    assert body["model"] is None and body["documents"] == 18


def test_given_a_missing_index_when_requests_arrive_then_503_not_a_crash(tmp_path: Path) -> None:
    # Given settings naming an index that does not exist: creating the app does no disk work
    app = create_app(ServiceSettings(index_dir=str(tmp_path / "missing")))
    client = TestClient(app)
    # Then requests get a 503 that says why, and the docs still work
    response = client.get("/v1/health")
    assert response.status_code == 503
    assert "not available" in response.json()["error"]["message"]
    assert client.get("/v1/search?q=knee").status_code == 503
    assert client.get("/docs").status_code == 200


def test_given_a_genuine_server_fault_when_it_happens_then_a_logged_json_500(
    index: MemoryIndex, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(MemoryIndex):
        def count(self) -> int:
            raise RuntimeError("disk on fire")

    app = create_app(ServiceSettings(), service_factory=lambda: SearchService(Broken(), None))
    response = TestClient(app, raise_server_exceptions=False).get("/v1/health")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal", "message": "internal server error", "field": None}
    }
    assert "disk on fire" in caplog.text


def test_error_table_maps_each_core_error_once() -> None:
    assert status_for(PayloadTooLargeError("x")) == 413
    assert status_for(UnsupportedMediaTypeError("x")) == 415
    assert status_for(NotFoundError("x")) == 404
    assert status_for(InvalidInputError("x")) == 422
    assert status_for(ManifestError("x")) == 422
    assert status_for(ImageTooLargeError("x")) == 422
    assert status_for(ConfigError("x")) == 422
    assert status_for(SearchIndexError("x")) == 503
    assert status_for(RuntimeError("x")) == 500
    assert len({error for error, _ in ERROR_STATUS}) == len(ERROR_STATUS)


def test_given_environment_when_settings_load_then_prefixed_values_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDSEARCH_INDEX_DIR", "/data/index")
    monkeypatch.setenv("MEDSEARCH_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MEDSEARCH_ENCODER", "onnx")
    settings = load_settings(model="/models/clip")
    assert settings.index_dir == "/data/index" and settings.model == "/models/clip"
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.encoder == "onnx" and settings.engine == "embedded"
    monkeypatch.setenv("MEDSEARCH_ENGINE", "solr")
    with pytest.raises(ConfigError, match="engine"):
        load_settings()
    monkeypatch.setenv("MEDSEARCH_ENGINE", "opensearch")
    with pytest.raises(ConfigError, match="OPENSEARCH_URL"):
        load_settings()


def test_given_local_opensearch_with_basic_auth_then_the_index_client_logs_in() -> None:
    from medsearch.api import open_index

    settings = ServiceSettings(
        engine="opensearch",
        opensearch_url="https://search.example.org",
        opensearch_auth="basic",
        opensearch_username="editor",
        opensearch_password="pw",  # type: ignore[arg-type]
    )
    index = open_index(settings)
    assert index._client.transport.get_connection().session.auth == ("editor", "pw")  # type: ignore[attr-defined]
    # without a user, credentials may still come in the URL (https://user:pw@host)
    plain = settings.model_copy(update={"opensearch_username": None})
    assert plain.opensearch_basic_auth() is None


def test_given_an_image_base_url_when_searching_then_urls_point_there(
    index: MemoryIndex, encoder: ColourEncoder
) -> None:
    from medsearch.api import image_url_for

    for template, expected in [
        ("https://cdn.example.org/img", "https://cdn.example.org/img/red-01.png"),
        ("https://cdn.example.org/{image_id}.jpg", "https://cdn.example.org/red-01.jpg"),
    ]:
        url = image_url_for(ServiceSettings(image_base_url=template))
        service = SearchService(index, encoder, image_url=url)
        client = TestClient(create_app(ServiceSettings(), service_factory=lambda s=service: s))
        assert client.get("/v1/images/red-01").json()["image_url"] == expected


def test_given_a_failed_start_when_retried_later_then_the_service_comes_up(
    service: SearchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medsearch.api

    attempts: list[int] = []

    def flaky() -> SearchService:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("model download interrupted")
        return service

    client = TestClient(create_app(ServiceSettings(), service_factory=flaky))
    assert client.get("/v1/health").status_code == 503
    # within the retry window the failure is remembered, not retried on every request
    assert client.get("/v1/health").status_code == 503 and len(attempts) == 1
    monkeypatch.setattr(medsearch.api, "RETRY_START_SECONDS", 0.0)
    assert client.get("/v1/health").status_code == 200 and len(attempts) == 2


def test_given_torch_unimportable_when_the_api_serves_then_it_works(tmp_path: Path) -> None:
    # The API Lambda ships without torch: the app, service and settings must not need it.
    import subprocess
    import sys

    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'transformers', 'boto3', 'uvicorn'}:\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from fastapi.testclient import TestClient\n"
        "from medsearch.api import create_app\n"
        "from medsearch.settings import ServiceSettings\n"
        f"app = create_app(ServiceSettings(index_dir={str(tmp_path / 'none')!r}))\n"
        "client = TestClient(app)\n"
        "assert client.get('/openapi.json').status_code == 200\n"
        "assert client.get('/v1/health').status_code == 503\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_given_metadata_with_nan_when_returned_then_json_stays_valid(
    index: MemoryIndex, encoder: ColourEncoder
) -> None:
    # A JSON Lines manifest may carry NaN (Python's json accepts it); strict JSON cannot.
    vector = index.get("red-01").vector  # type: ignore[union-attr]
    index.upsert([Document("odd", "odd nodule", vector, metadata={"age": float("nan")})])
    client = TestClient(
        create_app(ServiceSettings(), service_factory=lambda: SearchService(index, encoder))
    )
    assert client.get("/v1/images/odd").json()["metadata"] == {"age": None}
    assert client.get("/v1/search?q=odd&mode=text").status_code == 200
