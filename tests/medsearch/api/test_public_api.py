"""The API as a product: one error body everywhere, /v1 paths with deprecated aliases, the OpenAPI
document (examples, error schema, paging), and the opt-in API keys and rate limit of a local
server. Requests go over HTTP to a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from medsearch.api import BackgroundServer, background_server, create_app
from medsearch.api_errors import ERROR_CODES
from medsearch.errors import ConfigError, SearchIndexError
from medsearch.index.base import MAX_K, Document
from medsearch.search import MAX_OFFSET, SearchService
from medsearch.settings import ServiceSettings
from tests.medsearch.api.conftest import MemoryIndex

REPO = Path(__file__).resolve().parents[3]
KEY = "k" * 12 + "-local-test-key-0001"
OTHER_KEY = "o" * 12 + "-local-test-key-0002"


@pytest.fixture
def serve(service: SearchService) -> Iterator[Any]:
    """Start the app with the given settings on a real server; yield a function returning its
    base URL (servers stop at the end of the test)."""
    servers: list[BackgroundServer] = []

    def start(**settings: Any) -> str:
        app = create_app(ServiceSettings(**settings), service_factory=lambda: service)
        server = BackgroundServer(app).start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


def assert_error(response: httpx.Response, status: int, code: str, field: str | None) -> None:
    """The response is ``status`` with the stable error body of ``code`` naming ``field``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["code"] == code and body["error"]["field"] == field, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


# --- one error body -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "field"),
    [
        ("GET", "/v1/search?q=chest&k=500", {}, 422, "invalid_parameter", "k"),
        ("GET", "/v1/search?q=chest&k=abc", {}, 422, "invalid_parameter", "k"),
        ("GET", "/v1/search", {}, 422, "invalid_parameter", "q"),
        ("GET", "/v1/search?q=chest&offset=5000", {}, 422, "invalid_parameter", "offset"),
        ("GET", "/v1/search?q=chest&mode=nope", {}, 422, "invalid_parameter", "mode"),
        ("GET", "/v1/search?q=chest&modalty=CT", {}, 422, "invalid_parameter", "modalty"),
        ("GET", "/v1/images/no-such-image", {}, 404, "not_found", None),
        ("GET", "/v1/no-such-path", {}, 404, "not_found", None),
        ("POST", "/v1/search?q=chest", {}, 405, "method_not_allowed", None),
        ("GET", "/v1/search/image", {}, 405, "method_not_allowed", None),
        (
            "POST",
            "/v1/search/image",
            {"files": {"file": ("big.png", b"\0" * (11 * 1024 * 1024))}},
            413,
            "payload_too_large",
            "file",
        ),
        (
            "POST",
            "/v1/search/image",
            {"files": {"file": ("a.txt", b"plain text, not an image")}},
            415,
            "unsupported_media_type",
            "file",
        ),
        (
            "POST",
            "/v1/search/image",
            {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}},
            400,
            "invalid_parameter",
            None,
        ),
    ],
)
def test_given_a_bad_request_when_served_then_the_stable_error_body_names_code_and_field(
    serve: Any, method: str, path: str, kwargs: dict[str, Any], status: int, code: str, field: str
) -> None:
    base = serve()
    response = httpx.request(method, f"{base}{path}", timeout=30, **kwargs)
    assert_error(response, status, code, field)


def test_given_a_service_that_cannot_start_when_served_then_503_unavailable_body() -> None:
    def broken() -> SearchService:
        raise SearchIndexError("the index folder is gone")

    with background_server(create_app(ServiceSettings(), service_factory=broken)) as base:
        response = httpx.get(f"{base}/v1/health", timeout=30)
    assert_error(response, 503, "unavailable", None)
    assert "the index folder is gone" in response.json()["error"]["message"]


def test_given_a_server_fault_when_served_then_500_internal_body_without_details(
    corpus: list[Document],
) -> None:
    class Broken(MemoryIndex):
        def count(self) -> int:
            raise RuntimeError("disk on fire")

    app = create_app(ServiceSettings(), service_factory=lambda: SearchService(Broken(corpus), None))
    with background_server(app) as base:
        response = httpx.get(f"{base}/v1/health", timeout=30)
    assert_error(response, 500, "internal", None)
    assert "disk on fire" not in response.text


def test_given_the_openapi_document_when_read_then_every_error_response_is_the_error_schema(
    serve: Any,
) -> None:
    from openapi_spec_validator import validate

    schema = httpx.get(f"{serve()}/openapi.json", timeout=30).json()
    validate(schema)
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert error["properties"]["code"]["enum"] == list(ERROR_CODES)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
            assert {"404", "405", "422", "429", "500", "503"} <= set(errors), (path, method)
            for response in errors.values():
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (path, method)
    for code in ERROR_CODES:
        assert f"`{code}`" in schema["info"]["description"]


def test_given_the_openapi_document_when_read_then_operations_have_examples_and_paging_rules(
    serve: Any,
) -> None:
    schema = httpx.get(f"{serve()}/openapi.json", timeout=30).json()
    # every operation is under /v1; the aliases of earlier releases are not listed
    assert schema["paths"] and all(path.startswith("/v1/") for path in schema["paths"])
    for path, operations in schema["paths"].items():
        if path == "/v1/search/image":
            continue  # examples would be sent as a case, and a schema cannot give an image
        for operation in operations.values():
            ok = operation["responses"]["200"]["content"]
            if "application/json" in ok:
                assert "example" in ok["application/json"], path
            for parameter in operation.get("parameters", []):
                assert parameter.get("examples"), (path, parameter["name"])
    search = schema["paths"]["/v1/search"]["get"]
    k = next(p for p in search["parameters"] if p["name"] == "k")
    assert f"offset + k <= {MAX_OFFSET + MAX_K}" in k["description"]
    description = schema["info"]["description"]
    assert "total_relation" in description and "GET /v1/facets" in description
    relation = schema["components"]["schemas"]["SearchResponse"]["properties"]["total_relation"]
    assert relation["enum"] == ["eq", "gte"] and "lower bound" in relation["description"]


# --- versioned paths ------------------------------------------------------------------------------


def test_given_an_unversioned_path_when_asked_then_it_answers_as_v1_marked_deprecated(
    serve: Any,
) -> None:
    base = serve(root_path="/prod")
    current = httpx.get(f"{base}/v1/search", params={"q": "chest", "k": 3}, timeout=30)
    alias = httpx.get(f"{base}/search", params={"q": "chest", "k": 3}, timeout=30)
    assert current.status_code == alias.status_code == 200
    assert "deprecation" not in current.headers
    assert alias.json()["results"] == current.json()["results"]
    assert alias.headers["deprecation"] == "true"
    assert alias.headers["link"] == '</prod/v1/search>; rel="successor-version"'
    image = httpx.get(f"{base}/images/red-01/file", timeout=30)
    assert image.status_code == 200 and image.headers["deprecation"] == "true"
    assert image.content == httpx.get(f"{base}/v1/images/red-01/file", timeout=30).content


# --- API keys and the rate limit of a local server ---------------------------------------------


def test_given_api_keys_when_a_request_has_none_or_a_wrong_one_then_401_and_health_stays_open(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    base = serve(api_keys=f"{KEY},{OTHER_KEY}", web_dir=REPO / "web")
    with caplog.at_level(logging.DEBUG):
        missing = httpx.get(f"{base}/v1/search", params={"q": "chest"}, timeout=30)
        wrong = httpx.get(
            f"{base}/search", params={"q": "chest"}, headers={"X-API-Key": KEY[:-1]}, timeout=30
        )
        right = httpx.get(
            f"{base}/v1/search", params={"q": "chest"}, headers={"X-API-Key": KEY}, timeout=30
        )
        other = httpx.get(f"{base}/v1/facets", headers={"x-api-key": OTHER_KEY}, timeout=30)
    assert_error(missing, 401, "unauthorized", None)
    assert_error(wrong, 401, "unauthorized", None)
    assert right.status_code == 200 and other.status_code == 200
    # health, the docs, the schema and the page's files need no key
    for path in ("/health", "/v1/health", "/docs", "/openapi.json", "/", "/app.js"):
        assert httpx.get(f"{base}{path}", timeout=30).status_code == 200, path
    # the schema states the key on the operations, not on health
    schema = httpx.get(f"{base}/openapi.json", timeout=30).json()
    assert schema["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert schema["paths"]["/v1/search"]["get"]["security"] == [{"ApiKey": []}]
    assert "security" not in schema["paths"]["/v1/health"]["get"]
    assert KEY not in caplog.text and KEY[:-1] not in caplog.text


def test_given_a_file_of_key_digests_when_serving_then_the_key_it_hashes_is_accepted(
    serve: Any, tmp_path: Path
) -> None:
    digests = tmp_path / "keys.txt"
    digests.write_text(f"# ops, 2026\n{hashlib.sha256(KEY.encode()).hexdigest()}\n\n")
    base = serve(api_keys=str(digests))
    ok = httpx.get(f"{base}/v1/facets", headers={"X-API-Key": KEY}, timeout=30)
    refused = httpx.get(f"{base}/v1/facets", headers={"X-API-Key": OTHER_KEY}, timeout=30)
    assert ok.status_code == 200
    assert_error(refused, 401, "unauthorized", None)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("short-key", "at least 20 characters"),
        (" , ", "is empty"),
        ("/no/such/keys.txt", "keys.txt does not exist"),
    ],
)
def test_given_unusable_api_keys_when_the_app_is_made_then_a_config_error_says_why(
    service: SearchService, setting: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(ServiceSettings(api_keys=setting), service_factory=lambda: service)


def test_given_a_key_file_with_a_bad_line_when_the_app_is_made_then_its_line_is_named(
    service: SearchService, tmp_path: Path
) -> None:
    digests = tmp_path / "keys.txt"
    digests.write_text(f"{hashlib.sha256(KEY.encode()).hexdigest()}\n{KEY}\n")
    with pytest.raises(ConfigError, match=r"keys\.txt, line 2: not a SHA-256 hex digest") as error:
        create_app(ServiceSettings(api_keys=str(digests)), service_factory=lambda: service)
    assert KEY not in str(error.value)


def test_given_a_rate_limit_when_a_key_is_over_its_burst_then_429_with_retry_after(
    serve: Any,
) -> None:
    # One request per 100 s, two at once: the third request within 100 s is over the rate
    base = serve(api_keys=f"{KEY},{OTHER_KEY}", rate_limit=0.01, rate_burst=2)
    mine = {"X-API-Key": KEY}
    answers = [httpx.get(f"{base}/v1/facets", headers=mine, timeout=30) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    assert_error(answers[2], 429, "rate_limited", None)
    assert 1 <= int(answers[2].headers["retry-after"]) <= 100
    # another key has its own bucket, and health is not counted
    other = httpx.get(f"{base}/v1/facets", headers={"X-API-Key": OTHER_KEY}, timeout=30)
    assert other.status_code == 200
    assert httpx.get(f"{base}/v1/health", timeout=30).status_code == 200


def test_given_a_rate_limit_without_keys_when_a_client_is_over_it_then_429(serve: Any) -> None:
    base = serve(rate_limit=0.01, rate_burst=1, cors_origins="https://site.example.org")
    origin = {"Origin": "https://site.example.org"}
    first = httpx.get(f"{base}/v1/search", params={"q": "chest"}, headers=origin, timeout=30)
    second = httpx.get(f"{base}/v1/search", params={"q": "chest"}, headers=origin, timeout=30)
    assert first.status_code == 200
    assert_error(second, 429, "rate_limited", None)
    # a page on another origin may read when to retry
    assert second.headers["access-control-allow-origin"] == "https://site.example.org"
    assert "retry-after" in second.headers["access-control-expose-headers"].lower()


# --- the docs page -----------------------------------------------------------------------------


def test_given_the_docs_page_when_served_then_it_names_no_cdn_and_reads_a_valid_3_0_document(
    serve: Any,
) -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.validators import OpenAPIV30SpecValidator

    base = serve(api_keys=KEY)
    page = httpx.get(f"{base}/docs", timeout=30).text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "/docs-assets/swagger-ui.css" in page
    assert "cdn" not in page.lower() and "https://" not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert httpx.get(f"{base}/docs-assets/{asset}", timeout=30).status_code == 200, asset
    # Swagger UI 4 renders OpenAPI 3.0: the page reads the same operations written as 3.0
    document = httpx.get(f"{base}/docs/openapi-3.0.json", timeout=30).json()
    validate(document, cls=OpenAPIV30SpecValidator)
    original = httpx.get(f"{base}/openapi.json", timeout=30).json()
    assert document["openapi"] == "3.0.3" and original["openapi"].startswith("3.1")
    assert document["paths"].keys() == original["paths"].keys()
    upload = document["components"]["schemas"]["Body_search_image_v1_search_image_post"]
    assert upload["properties"]["file"]["format"] == "binary"
    # only the three files: nothing else of the package is served
    assert httpx.get(f"{base}/docs-assets/index.html", timeout=30).status_code == 404


def test_given_a_bound_server_socket_when_a_client_connects_before_serving_then_it_is_queued(
    service: SearchService,
) -> None:
    import socket

    # Given the server's socket, bound and its URL told (on_ready), but not yet served
    server = BackgroundServer(create_app(ServiceSettings(), service_factory=lambda: service))
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    try:
        # When a client connects at once, then it is queued, not refused
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        # And served once the server runs
        server.start()
        assert httpx.get(f"{server.url}/v1/health", timeout=30).status_code == 200
    finally:
        server.stop()


def test_given_the_response_examples_when_read_then_each_is_a_whole_valid_answer() -> None:
    from medsearch.api import FACETS_EXAMPLE, HEALTH_EXAMPLE, RECORD_EXAMPLE, SEARCH_EXAMPLE
    from medsearch.search import Health, ImageRecord, SearchResponse, SearchResult

    # Every field shown (an example that leaves fields out documents a smaller answer)
    for model, example in [
        (SearchResponse, SEARCH_EXAMPLE),
        (ImageRecord, RECORD_EXAMPLE),
        (Health, HEALTH_EXAMPLE),
    ]:
        assert model.model_validate(example).model_dump(mode="json") == example, model.__name__
        assert set(example) == set(model.model_fields), model.__name__
    for hit in SEARCH_EXAMPLE["results"]:
        assert set(hit) == set(SearchResult.model_fields)
    assert all(
        isinstance(count, int) for values in FACETS_EXAMPLE.values() for count in values.values()
    )
