"""Hostile inputs: every one ends in a 4xx with a message, never a 500 — through FastAPI's
TestClient and through a real uvicorn server on 127.0.0.1 (raw sockets for path tricks)."""

from __future__ import annotations

import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_image, png_bytes
from fastapi import FastAPI
from fastapi.testclient import TestClient

from medsearch.api import background_server, create_app
from medsearch.search import MAX_UPLOAD_BYTES, SearchService
from medsearch.settings import ServiceSettings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bomb_png(width: int = 8000, height: int = 8000) -> bytes:
    """A ~1 kB PNG whose header claims width x height pixels (64 MP: over the 50 MP limit)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4, 9)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def upload(data: bytes, name: str = "x.png") -> dict[str, Any]:
    return {"files": {"file": (name, data, "image/png")}}


SYNTAX = '" * : ( ) \\'
# (name, method, url, request kwargs, expected status)
HOSTILE: list[tuple[str, str, str, dict[str, Any], int | tuple[int, ...]]] = [
    ("q-10k-chars", "GET", "/v1/search", {"params": {"q": "x" * 10_000}}, 422),
    ("q-513-chars", "GET", "/v1/search", {"params": {"q": "y" * 513}}, 422),
    ("q-missing", "GET", "/v1/search", {}, 422),
    ("q-empty", "GET", "/v1/search", {"params": {"q": ""}}, 422),
    ("q-blank", "GET", "/v1/search", {"params": {"q": "   "}}, 422),
    ("q-nul", "GET", "/v1/search", {"params": {"q": "lung\x00nodule"}}, 422),
    ("q-escape", "GET", "/v1/search", {"params": {"q": "\x1b[31mred"}}, 422),
    ("q-bell-del", "GET", "/v1/search", {"params": {"q": "a\x07b\x7f"}}, 422),
    ("q-c1-control", "GET", "/v1/search", {"params": {"q": "a\x85b"}}, 422),
    ("q-bad-utf8", "GET", "/v1/search?q=%ED%A0%80%FF%00", {}, 422),
    ("k-abc", "GET", "/v1/search", {"params": {"q": "knee", "k": "abc"}}, 422),
    ("k-0", "GET", "/v1/search", {"params": {"q": "knee", "k": "0"}}, 422),
    ("k-101", "GET", "/v1/search", {"params": {"q": "knee", "k": "101"}}, 422),
    ("k-negative", "GET", "/v1/search", {"params": {"q": "knee", "k": "-5"}}, 422),
    ("k-float", "GET", "/v1/search", {"params": {"q": "knee", "k": "1.5"}}, 422),
    ("k-huge", "GET", "/v1/search", {"params": {"q": "knee", "k": "9" * 40}}, 422),
    ("k-empty", "GET", "/v1/search", {"params": {"q": "knee", "k": ""}}, 422),
    ("alpha-negative", "GET", "/v1/search", {"params": {"q": "knee", "alpha": "-1"}}, 422),
    ("alpha-over-1", "GET", "/v1/search", {"params": {"q": "knee", "alpha": "1.01"}}, 422),
    ("alpha-nan", "GET", "/v1/search", {"params": {"q": "knee", "alpha": "nan"}}, 422),
    ("alpha-inf", "GET", "/v1/search", {"params": {"q": "knee", "alpha": "inf"}}, 422),
    ("alpha-minus-inf", "GET", "/v1/search", {"params": {"q": "knee", "alpha": "-inf"}}, 422),
    ("alpha-abc", "GET", "/v1/search", {"params": {"q": "knee", "alpha": "abc"}}, 422),
    ("alpha-1e400", "GET", "/v1/search", {"params": {"q": "knee", "alpha": "1e400"}}, 422),
    ("offset-negative", "GET", "/v1/search", {"params": {"q": "knee", "offset": "-1"}}, 422),
    ("offset-huge", "GET", "/v1/search", {"params": {"q": "knee", "offset": "1000000000"}}, 422),
    ("offset-giant", "GET", "/v1/search", {"params": {"q": "knee", "offset": "9" * 50}}, 422),
    ("offset-abc", "GET", "/v1/search", {"params": {"q": "knee", "offset": "abc"}}, 422),
    ("mode-bogus", "GET", "/v1/search", {"params": {"q": "knee", "mode": "bogus"}}, 422),
    ("mode-image-on-search", "GET", "/v1/search", {"params": {"q": "knee", "mode": "image"}}, 422),
    ("filter-unknown", "GET", "/v1/search", {"params": {"q": "knee", "modalty": "CT"}}, 422),
    ("filter-too-long", "GET", "/v1/search", {"params": {"q": "knee", "modality": "C" * 300}}, 422),
    ("filter-control", "GET", "/v1/search", {"params": {"q": "knee", "modality": "C\x00T"}}, 422),
    (
        "filter-too-many-fields",
        "GET",
        "/v1/search",
        {"params": [("q", "knee")] + [(f"f{i}", "v") for i in range(30)]},
        422,
    ),
    ("similar-unknown-id", "GET", "/v1/images/no-such-image/similar", {}, 404),
    ("similar-bad-mode", "GET", "/v1/images/red-01/similar", {"params": {"mode": "text"}}, 422),
    ("similar-k-0", "GET", "/v1/images/red-01/similar", {"params": {"k": "0"}}, 422),
    ("similar-alpha-nan", "GET", "/v1/images/red-01/similar", {"params": {"alpha": "nan"}}, 422),
    ("record-unknown-id", "GET", "/v1/images/no-such-image", {}, 404),
    ("file-unknown-id", "GET", "/v1/images/no-such-image/file", {}, 404),
    ("id-nul", "GET", "/v1/images/%00", {}, 422),
    ("id-nul-file", "GET", "/v1/images/x%00.png/file", {}, 422),
    ("id-dotdot-encoded", "GET", "/v1/images/%2E%2E/file", {}, 422),
    ("id-dotdot-slash-encoded", "GET", "/v1/images/..%2Fx", {}, 404),
    ("id-backslash", "GET", "/v1/images/..%5Cx/file", {}, 422),
    ("id-too-long", "GET", "/v1/images/" + "a" * 200, {}, 422),
    ("id-unicode", "GET", "/v1/images/%C3%A9t%C3%A9/similar", {}, 422),
    ("upload-not-image", "POST", "/v1/search/image", upload(b"hello, world", "x.txt"), 415),
    ("upload-pdf", "POST", "/v1/search/image", upload(b"%PDF-1.7\n" + b"0" * 100, "x.pdf"), 415),
    ("upload-html-as-png", "POST", "/v1/search/image", upload(b"<html><script>", "x.png"), 415),
    ("upload-empty", "POST", "/v1/search/image", upload(b""), 422),
    (
        "upload-over-10MB",
        "POST",
        "/v1/search/image",
        upload(PNG_SIGNATURE + b"\0" * MAX_UPLOAD_BYTES),
        413,
    ),
    ("upload-20MB-body", "POST", "/v1/search/image", upload(b"\0" * (20 * 1024 * 1024)), 413),
    ("upload-bomb", "POST", "/v1/search/image", upload(bomb_png()), 422),
    (
        "upload-truncated-png",
        "POST",
        "/v1/search/image",
        upload(png_bytes(make_image("red"))[:60]),
        422,
    ),
    ("upload-no-file", "POST", "/v1/search/image", {"data": {"q": "knee"}}, 422),
    ("upload-file-as-text-field", "POST", "/v1/search/image", {"data": {"file": "abc"}}, 422),
    ("upload-json-body", "POST", "/v1/search/image", {"json": {"file": "abc"}}, 422),
    ("upload-bad-k", "POST", "/v1/search/image?k=abc", upload(b"x"), 422),
    (
        "upload-bad-alpha-form",
        "POST",
        "/v1/search/image",
        {**upload(b"x"), "data": {"alpha": "inf"}},
        422,
    ),
    (
        "upload-q-10k",
        "POST",
        "/v1/search/image",
        {**upload(b"x"), "data": {"q": "z" * 10_000}},
        422,
    ),
    ("search-wrong-method", "POST", "/v1/search", {"params": {"q": "knee"}}, 405),
    ("upload-wrong-method", "GET", "/v1/search/image", {}, (404, 405)),  # 404 from the web site
    ("unknown-route", "GET", "/admin", {}, 404),
]


@pytest.fixture
def hostile_app(service: SearchService, tmp_path: Path) -> FastAPI:
    web = tmp_path / "site" / "web"
    web.mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>medsearch</title>")
    # A file beside the web folder that no request may reach.
    (tmp_path / "site" / "secret.txt").write_text("TOP-SECRET")
    return create_app(ServiceSettings(web_dir=web), service_factory=lambda: service)


@pytest.fixture
def live_url(hostile_app: FastAPI) -> Iterator[str]:
    with background_server(hostile_app) as url:
        yield url


def check(response: httpx.Response, expected: int | tuple[int, ...], name: str) -> None:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert response.status_code in allowed, (name, response.status_code, response.text[:300])
    if response.status_code not in (404, 405) or name.startswith(("similar", "record", "file")):
        detail = response.json()["error"]["message"]
        assert isinstance(detail, str) and len(detail) > 5, (name, detail)


@pytest.mark.parametrize(
    ("name", "method", "url", "kwargs", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_given_a_hostile_request_when_sent_through_testclient_then_4xx_with_a_message(
    hostile_app: FastAPI,
    name: str,
    method: str,
    url: str,
    kwargs: dict[str, Any],
    expected: int | tuple[int, ...],
) -> None:
    # raise_server_exceptions: a server fault would surface here as an exception, not a status
    client = TestClient(hostile_app, raise_server_exceptions=True)
    check(client.request(method, url, **kwargs), expected, name)


def test_given_the_hostile_list_when_sent_to_a_real_uvicorn_server_then_4xx_never_500(
    live_url: str,
) -> None:
    with httpx.Client(base_url=live_url, timeout=30) as client:
        for name, method, url, kwargs, expected in HOSTILE:
            check(client.request(method, url, **kwargs), expected, name)
        # and the server still answers normally afterwards
        assert client.get("/v1/search", params={"q": "knee", "mode": "text"}).status_code == 200


def raw_get(url: str, target: str) -> tuple[int, bytes]:
    """Send a GET with the request target exactly as written (no client-side normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.parametrize(
    "target",
    [
        "/v1/images/../secret.txt",
        "/../secret.txt",
        "/v1/images/../../secret.txt",
        "/v1/images/..%2F..%2Fsecret.txt/file",
        "/v1/images/..%2Fx",
        "/v1/images/%2e%2e/file",
        "/v1/images/%00",
        "/v1/images/..",
        "/..%2Fsecret.txt",
        "/%2e%2e/secret.txt",
        "/static/..%5C..%5Csecret.txt",
        "/v1/images/x/file?../../secret.txt",
    ],
)
def test_given_path_like_ids_when_sent_raw_to_uvicorn_then_4xx_and_nothing_leaks(
    live_url: str, target: str
) -> None:
    status, body = raw_get(live_url, target)
    assert 400 <= status < 500, (target, status, body[:300])
    assert b"TOP-SECRET" not in body


@pytest.mark.parametrize("client_kind", ["testclient", "uvicorn"])
def test_given_query_syntax_characters_when_searching_then_they_are_plain_text(
    hostile_app: FastAPI, live_url: str, client_kind: str
) -> None:
    # Query-syntax characters are valid text: they are searched literally, never parsed
    client: Any = (
        TestClient(hostile_app) if client_kind == "testclient" else httpx.Client(base_url=live_url)
    )
    with client:
        plain = client.get("/v1/search", params={"q": "lung nodule", "mode": "text"})
        noisy = client.get(
            "/v1/search",
            params={"q": f'"lung" * nodule:( ) \\ AND OR NOT {SYNTAX}', "mode": "text"},
        )
        only = client.get("/v1/search", params={"q": SYNTAX, "mode": "hybrid"})
        for response in (plain, noisy, only):
            assert response.status_code == 200, response.text
        assert [r["image_id"] for r in noisy.json()["results"]] == [
            r["image_id"] for r in plain.json()["results"]
        ]
        assert only.json()["query"] == SYNTAX


@pytest.mark.parametrize("client_kind", ["testclient", "uvicorn"])
def test_given_a_chunked_body_without_length_when_over_the_limit_then_json_413(
    hostile_app: FastAPI, live_url: str, client_kind: str
) -> None:
    # Given a multipart body streamed in chunks (no Content-Length), 12 MB in all
    boundary = "medsearchboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks() -> Iterator[bytes]:
        yield head + PNG_SIGNATURE
        for _ in range(12):
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    client: Any = (
        TestClient(hostile_app) if client_kind == "testclient" else httpx.Client(base_url=live_url)
    )
    with client:
        response = client.post("/v1/search/image", content=chunks(), headers=headers)
    # Then the request is refused as it streams in, with a message, not a parse error or a 500
    assert response.status_code == 413, response.text
    assert "10 MB" in response.json()["error"]["message"]
