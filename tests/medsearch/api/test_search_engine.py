"""The service and API over the real embedded engine (tantivy + faiss on disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ColourEncoder
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_search_hostile import HOSTILE, check

from medsearch.api import background_server, create_app
from medsearch.index.base import Document
from medsearch.index.embedded import EmbeddedIndex, build_index
from medsearch.search import SearchService
from medsearch.settings import ServiceSettings


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, request: Any) -> EmbeddedIndex:
    corpus: list[Document] = request.getfixturevalue("corpus")
    return build_index(tmp_path_factory.mktemp("engine"), corpus, model_id="colour-encoder")


@pytest.fixture
def app(engine: EmbeddedIndex, encoder: ColourEncoder) -> FastAPI:
    service = SearchService(engine, encoder)
    return create_app(ServiceSettings(), service_factory=lambda: service)


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app)


def ids(body: dict[str, Any]) -> list[str]:
    return [r["image_id"] for r in body["results"]]


def test_given_the_engine_when_text_search_then_stemmed_bm25_matches(client: TestClient) -> None:
    body = client.get("/v1/search?q=lung nodules&mode=text").json()
    assert set(ids(body)) == {"red-01", "red-03"} and body["total"] == 2
    assert all(r["bm25_score"] > 0 and r["vector_score"] is None for r in body["results"])


def test_given_the_engine_when_vector_search_then_captionless_images_are_found(
    client: TestClient,
) -> None:
    assert client.get("/v1/search?q=red&mode=text").json()["total"] == 0
    body = client.get("/v1/search?q=red&mode=vector&k=4").json()
    assert set(ids(body)) == {"red-01", "red-02", "red-03", "red-04"}
    assert {r["image_id"] for r in body["results"] if r["caption"] is None} == {"red-02", "red-04"}


def test_given_the_engine_when_similar_then_self_excluded_and_caption_used(
    client: TestClient,
) -> None:
    image = client.get("/v1/images/green-01/similar?mode=image&k=3").json()
    assert "green-01" not in ids(image)
    assert set(ids(image)) == {"green-02", "green-03", "green-04"}
    full = client.get("/v1/images/green-01/similar?mode=image&k=100").json()
    assert full["total"] == 17 and "green-01" not in ids(full)
    image_text = client.get("/v1/images/yellow-01/similar?mode=image_text&alpha=0&k=3").json()
    assert image_text["query"] == "Fracture of the distal radius on wrist x-ray"
    assert ids(image_text)[0] == "yellow-02" and "yellow-01" not in ids(image_text)
    captionless = client.get("/v1/images/blue-04/similar?mode=image_text&k=5").json()
    assert captionless["query"] is None and captionless["alpha"] is None


@pytest.mark.parametrize("mode", ["text", "vector", "hybrid"])
def test_given_the_engine_when_paging_then_pages_continue_without_overlap(
    client: TestClient, mode: str
) -> None:
    q = "chest x-ray red effusion"
    whole = client.get(f"/v1/search?q={q}&mode={mode}&k=10").json()
    first = client.get(f"/v1/search?q={q}&mode={mode}&k=5").json()
    second = client.get(f"/v1/search?q={q}&mode={mode}&k=5&offset=5").json()
    assert ids(first) + ids(second) == ids(whole)
    assert not set(ids(first)) & set(ids(second))
    assert first["total"] == second["total"] == whole["total"]


def test_given_the_engine_when_filtering_then_values_or_and_fields_and(client: TestClient) -> None:
    body = client.get("/v1/search?q=red&mode=vector&k=100&modality=CT&modality=MRI").json()
    assert {r["metadata"]["modality"] for r in body["results"]} == {"CT", "MRI"}
    assert body["total"] == 9
    anded = client.get("/v1/search?q=red&mode=vector&k=100&modality=CT&region=chest").json()
    assert set(ids(anded)) == {"red-03", "red-04", "grey-03"} and anded["total"] == 3
    assert client.get("/v1/search?q=red&modalty=CT").status_code == 422
    facets = client.get("/v1/facets").json()
    assert facets["modality"] == {"XR": 7, "CT": 5, "MRI": 4, "US": 2}


def test_given_the_engine_when_an_image_is_uploaded_then_its_copy_ranks_first(
    client: TestClient, make_upload: Any
) -> None:
    response = client.post(
        "/v1/search/image", files={"file": ("c.jpg", make_upload("yellow", 1, "jpeg"))}
    )
    assert response.status_code == 200, response.text
    assert ids(response.json())[0] == "yellow-02"


def test_given_the_engine_when_hostile_inputs_arrive_then_4xx_never_500(app: FastAPI) -> None:
    client = TestClient(app)
    for name, method, url, kwargs, expected in HOSTILE:
        check(client.request(method, url, **kwargs), expected, name)


def test_given_settings_when_the_app_builds_its_own_service_then_it_serves_the_engine(
    engine: EmbeddedIndex, tmp_path: Path
) -> None:
    # Given only settings (no factory): the app opens the index itself on first use, over HTTP
    app = create_app(ServiceSettings(index_dir=str(engine.path)))
    with background_server(app) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["documents"] == 18 and health["model"] is None
        body = httpx.get(f"{url}/search", params={"q": "knee meniscus"}).json()
        assert body["mode"] == "text" and ids(body)[0] in {"blue-01", "blue-02"}
        assert httpx.get(f"{url}/search", params={"q": "knee", "mode": "vector"}).status_code == 422
        # image links are relative to the API's base URL
        file = httpx.get(f"{url}/{body['results'][0]['image_url']}")
        assert file.status_code == 200 and file.headers["content-type"] == "image/png"
