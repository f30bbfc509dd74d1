"""The search API Lambda on API Gateway events: OpenSearch (in-memory fake) + ONNX model from S3."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from opensearchpy import OpenSearch
from PIL import Image

from medsearch import storage
from medsearch.data.manifest import read_manifest
from medsearch.errors import ConfigError
from medsearch.index.base import Document
from medsearch.model.onnx_encoder import OnnxEncoder
from tests.support.aws_events import LambdaContextStub
from tests.support.fake_opensearch import FakeCluster, client_for, fake_index

REPO = Path(__file__).resolve().parents[2]
HOST = "abc123.execute-api.us-east-1.amazonaws.com"
N_DOCS = 12


def http_api_event(
    path: str, query: dict[str, str] | None = None, *, stage: str = "$default", rid: str = "r-1"
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) GET event, as the execute-api URL delivers it."""
    raw_path = path if stage == "$default" else f"/{stage}{path}"
    raw_query = urlencode(query or {})
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": {"host": HOST, "x-forwarded-proto": "https", "x-forwarded-port": "443"},
        "queryStringParameters": dict(parse_qsl(raw_query)) or None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": HOST,
            "domainPrefix": "abc123",
            "http": {
                "method": "GET",
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.10",
                "userAgent": "pytest",
            },
            "requestId": rid,
            "routeKey": "$default",
            "stage": stage,
            "time": "26/Nov/2026:23:00:00 +0000",
            "timeEpoch": 1795734000000,
        },
        "isBase64Encoded": False,
    }


def rest_api_event(path: str, query: dict[str, str], *, stage: str, rid: str) -> dict[str, Any]:
    """An API Gateway REST API (payload 1.0) proxy event."""
    headers = {"Host": HOST, "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"}
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "GET",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()},
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": "GET",
            "path": f"/{stage}{path}",
            "stage": stage,
            "requestId": rid,
            "accountId": "123456789012",
            "apiId": "abc123",
            "identity": {"sourceIp": "192.0.2.10", "userAgent": "pytest"},
        },
        "body": None,
        "isBase64Encoded": False,
    }


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    # Imported here: the torch-free subprocess test imports this module's helpers.
    from medsearch.model.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("api-onnx") / "onnx"
    export_onnx(str(tiny_model_dir), out, exporter="torchscript", model_id="tiny-api")
    return out


def populate(cluster: FakeCluster, encoder: OnnxEncoder, manifest: Path) -> list[Document]:
    """Index the first corpus records (vectors from ``encoder``) as run index + alias."""
    records = read_manifest(manifest)[:N_DOCS]
    vectors = encoder.encode_images([Image.open(r.image) for r in records])
    docs = [
        Document(r.image_id, r.caption, v, Path(r.image).name, dict(r.metadata))
        for r, v in zip(records, vectors, strict=True)
    ]
    index = fake_index(cluster, "medsearch-run-1")
    index.create(encoder.dim)
    with index.loading():
        assert not index.upsert(docs).failed
    index.swap_alias("medsearch")
    return docs


@pytest.fixture
def api(
    monkeypatch: pytest.MonkeyPatch,
    s3_bucket: str,
    onnx_dir: Path,
    synth_corpus: Path,
    tmp_path: Path,
) -> Iterator[tuple[ModuleType, FakeCluster, list[Document]]]:
    """A cold-started handler module: model in moto S3, index in the fake cluster."""
    storage.upload_dir(onnx_dir, f"s3://{s3_bucket}/models/run-1/onnx")
    cluster = FakeCluster(seed=1)
    docs = populate(cluster, OnnxEncoder(onnx_dir), synth_corpus)
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_URL", "https://search-medsearch.example.com")
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_AUTH", "none")
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_INDEX", "medsearch")
    monkeypatch.setenv("MEDSEARCH_MODEL", f"s3://{s3_bucket}/models/run-1/onnx/")
    core = logging.getLogger("medsearch")  # the handler routes it through Powertools; undo after
    for attribute in ("propagate", "handlers", "level"):
        monkeypatch.setattr(core, attribute, getattr(core, attribute))
    handler = cold_start(monkeypatch, cluster, tmp_path / "tmp-model")
    yield handler, cluster, docs


def cold_start(
    monkeypatch: pytest.MonkeyPatch, target: FakeCluster | OpenSearch, cache: Path
) -> ModuleType:
    """Import the handler afresh (as a new container would), wired to ``target`` (a fake cluster
    or a real cluster's client) and ``cache``."""
    import lambdas.search_api.handler as module

    handler = importlib.reload(module)
    monkeypatch.setattr(handler, "make_client", lambda settings: client_for(target))
    monkeypatch.setattr(handler, "MODEL_CACHE", cache)
    return handler


def call(handler: ModuleType, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    response = handler.handler(event, LambdaContextStub(function_name="medsearch-search-api"))
    body = response["body"]
    headers = response.get("headers") or {}
    is_json = headers.get("content-type", "").startswith("application/json")
    return response["statusCode"], headers, json.loads(body) if is_json else body


def test_given_http_api_events_then_health_and_ranked_search_results(api) -> None:
    handler, _, docs = api
    # When /health is called through an HTTP API (v2) event
    status, headers, body = call(handler, http_api_event("/v1/health", rid="req-health"))
    # Then the service reports the index and the ONNX model, with the correlation id
    assert status == 200, body
    assert body["documents"] == N_DOCS and body["model"] == "tiny-api"
    assert headers["x-request-id"] == "req-health"
    # When a caption is searched in text, vector and hybrid modes
    target = next(d for d in docs if d.caption)
    for mode in ("text", "vector", "hybrid"):
        query = {"q": target.caption or "", "mode": mode, "k": "5"}
        status, _, body = call(handler, http_api_event("/v1/search", query))
        # Then results come back ranked by score
        assert status == 200, body
        scores = [r["score"] for r in body["results"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert {r["image_id"] for r in body["results"]} <= {d.image_id for d in docs}
        if mode != "vector":
            assert body["results"][0]["image_id"] == target.image_id


def test_given_named_stage_then_routes_links_and_docs_carry_the_stage(api) -> None:
    handler, _, docs = api
    query = {"q": docs[0].caption or "scan", "mode": "text"}
    event = http_api_event("/v1/search", query, stage="prod")
    event["headers"]["host"] = "evil.example"  # a client's Host header never makes the links
    status, _, body = call(handler, event)
    assert status == 200, body
    # image links are relative to the API's base URL, which holds the stage
    assert body["results"][0]["image_url"].startswith("v1/images/")
    status, _, page = call(handler, http_api_event("/docs", stage="prod"))
    assert status == 200 and "/prod/docs/openapi-3.0.json" in page
    # the docs' own Swagger UI files are served under the stage too (no CDN)
    assert "/prod/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    status, _, css = call(handler, http_api_event("/docs-assets/swagger-ui.css", stage="prod"))
    assert status == 200 and ".swagger-ui" in css
    # And a REST API (v1) event, whose path excludes the stage, is served the same way
    event = rest_api_event("/v1/search", query, stage="prod", rid="rest")
    status, headers, body = call(handler, event)
    assert status == 200 and headers["x-request-id"] == "rest"
    assert body["results"][0]["image_url"].startswith("v1/images/")


def test_given_rest_api_events_when_an_alias_or_unknown_path_is_asked_then_deprecated_or_404(
    api,
) -> None:
    handler, _, docs = api
    query = {"q": docs[0].caption or "scan", "mode": "text"}
    # Given the gateway's proxy resource, when the unversioned path of earlier releases is asked
    status, headers, body = call(handler, rest_api_event("/search", query, stage="api", rid="a"))
    # Then it answers as /v1 does, marked deprecated with its successor
    assert status == 200 and body["results"], body
    assert headers["deprecation"] == "true"
    assert headers["link"] == '</api/v1/search>; rel="successor-version"'
    # And a path the API does not have is the stable 404 body
    status, _, body = call(handler, rest_api_event("/v2/search", query, stage="api", rid="b"))
    assert status == 404 and body["error"]["code"] == "not_found", body
    assert body["error"]["field"] is None


def test_given_a_second_cold_start_then_the_model_is_not_downloaded_again(
    api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_bucket: str
) -> None:
    handler, cluster, _ = api
    assert call(handler, http_api_event("/v1/health"))[0] == 200
    # Given the model objects are gone from S3 after the first container fetched them
    store = storage.object_store()
    for key in list(store.list(s3_bucket, "models/")):
        store._client.delete_object(Bucket=s3_bucket, Key=key)  # type: ignore[attr-defined]
    # When a new container starts on the same /tmp
    handler = cold_start(monkeypatch, cluster, tmp_path / "tmp-model")
    # Then it serves from the copy in /tmp
    status, _, body = call(handler, http_api_event("/v1/search", {"q": "ct", "mode": "vector"}))
    assert status == 200, body


def test_given_missing_settings_then_import_works_and_api_answers_503(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MEDSEARCH_OPENSEARCH_URL", raising=False)
    core = logging.getLogger("medsearch")
    for attribute in ("propagate", "handlers", "level"):
        monkeypatch.setattr(core, attribute, getattr(core, attribute))
    handler = cold_start(monkeypatch, FakeCluster(), tmp_path)
    status, _, body = call(handler, http_api_event("/v1/health"))
    assert status == 503 and "MEDSEARCH_OPENSEARCH_URL" in json.dumps(body)


@pytest.mark.parametrize(
    ("event", "root"),
    [
        ({"rawPath": "/prod/search", "requestContext": {"stage": "prod"}}, "/prod"),
        ({"rawPath": "/prod", "requestContext": {"stage": "prod"}}, "/prod"),
        ({"rawPath": "/search", "requestContext": {"stage": "prod"}}, ""),  # custom domain
        ({"rawPath": "/production/x", "requestContext": {"stage": "prod"}}, ""),
        ({"rawPath": "/search", "requestContext": {"stage": "$default"}}, ""),
        ({"path": "/search", "requestContext": {"stage": "v1", "path": "/v1/search"}}, "/v1"),
        ({}, ""),
    ],
)
def test_given_events_then_stage_root_path_is_derived(event: dict, root: str) -> None:
    from lambdas.search_api.handler import stage_root_path

    assert stage_root_path(event) == root


def test_given_torch_unimportable_then_handler_imports_and_serves_a_vector_search(
    onnx_dir: Path, synth_corpus: Path, tmp_path: Path
) -> None:
    # Given a fresh interpreter where torch and transformers cannot be imported
    script = textwrap.dedent(
        f"""
        import json, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {{'torch', 'transformers'}}:
                    raise ImportError(name + ' is blocked')
        sys.meta_path.insert(0, Block())
        import lambdas.search_api.handler as handler
        from pathlib import Path
        from medsearch.model.onnx_encoder import OnnxEncoder
        from tests.lambdas.test_search_api import http_api_event, populate
        from tests.support.aws_events import LambdaContextStub
        from tests.support.fake_opensearch import FakeCluster, fake_client
        cluster = FakeCluster()
        populate(cluster, OnnxEncoder({str(onnx_dir)!r}), Path({str(synth_corpus)!r}))
        handler.make_client = lambda settings: fake_client(cluster)
        event = http_api_event('/search', {{'q': 'lung nodule', 'mode': 'vector'}})
        response = handler.handler(event, LambdaContextStub())
        assert response['statusCode'] == 200, response['body']
        assert len(json.loads(response['body'])['results']) == 10
        assert not {{'torch', 'transformers'}} & set(sys.modules), 'torch was imported'
        """
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MEDSEARCH_OPENSEARCH_URL": "https://search.example.com",
        "MEDSEARCH_OPENSEARCH_AUTH": "none",
        "MEDSEARCH_MODEL": str(onnx_dir),
    }
    # When the handler module is imported and answers a vector search there
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env
    )
    # Then it works without torch
    assert result.returncode == 0, result.stderr[-3000:]


def test_given_torch_blocked_and_no_settings_then_the_handler_module_still_imports() -> None:
    # `python -c "import lambdas.search_api.handler"` in an interpreter where torch cannot load
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'transformers'}:\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import lambdas.search_api.handler\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_given_basic_auth_settings_then_the_client_sends_the_user_and_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a domain with fine-grained access control (internal user, basic auth)
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_URL", "https://search.example.org")
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_AUTH", "basic")
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_USERNAME", "search-api")
    monkeypatch.setenv("MEDSEARCH_OPENSEARCH_PASSWORD", "s3cret")
    from lambdas.search_api.handler import make_client
    from medsearch.settings import load_settings

    settings = load_settings(engine="opensearch", encoder="onnx")
    assert "s3cret" not in repr(settings)  # a secret, never logged with the settings
    # When the handler makes its client
    client = make_client(settings)
    # Then every request carries those credentials
    assert client.transport.get_connection().session.auth == ("search-api", "s3cret")
    # and without a user name, basic auth is a clear configuration error
    monkeypatch.delenv("MEDSEARCH_OPENSEARCH_USERNAME")
    with pytest.raises(ConfigError, match="MEDSEARCH_OPENSEARCH_USERNAME"):
        make_client(load_settings(engine="opensearch", encoder="onnx"))
