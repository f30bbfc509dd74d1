"""What a hostile probe of the served API found, pinned: links from the Host header, filters on
fields that are not facets, the OpenAPI schema against what the server does, response sizes."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import ColourEncoder, MemoryIndex, png_bytes
from fastapi.testclient import TestClient
from PIL import Image

from medsearch.api import create_app, image_url_for
from medsearch.errors import ConfigError
from medsearch.index.base import Document
from medsearch.index.embedded import build_index
from medsearch.search import (
    MAX_HIT_CAPTION_CHARS,
    QUERY_PATTERN,
    SearchService,
    validate_query,
)
from medsearch.settings import ServiceSettings, load_settings

EVIL = "evil.example"


def urls_of(body: dict[str, Any]) -> list[str]:
    return [r["image_url"] for r in body["results"]]


def client_for(service: SearchService, **settings: Any) -> TestClient:
    return TestClient(create_app(ServiceSettings(**settings), service_factory=lambda: service))


# --- image links are never made from the Host header -------------------------------------------


def test_given_a_hostile_host_header_when_every_endpoint_answers_then_no_link_names_it(
    service: SearchService, make_upload: Any
) -> None:
    client = client_for(service)
    headers = {"Host": EVIL, "X-Forwarded-Host": EVIL}
    answers = [
        client.get("/v1/search?q=chest&k=5", headers=headers).json(),
        client.get("/v1/images/red-01/similar?k=5", headers=headers).json(),
        client.post(
            "/v1/search/image", files={"file": ("a.png", make_upload("red"))}, headers=headers
        ).json(),
    ]
    links = [url for body in answers for url in urls_of(body)]
    links.append(client.get("/v1/images/red-01", headers=headers).json()["image_url"])
    assert links and all(EVIL not in url for url in links)
    # without a configured public URL they are relative to the API's base URL
    assert all(url.startswith("v1/images/") and url.endswith("/file") for url in links)


def test_given_a_public_base_url_when_the_host_header_lies_then_links_use_the_configured_url(
    index: MemoryIndex, encoder: ColourEncoder
) -> None:
    settings = ServiceSettings(public_base_url="https://search.example.org/prod/")
    service = SearchService(index, encoder, image_url=image_url_for(settings))
    client = client_for(service)
    body = client.get("/v1/search?q=chest&k=3", headers={"Host": EVIL}).json()
    assert urls_of(body) == [
        f"https://search.example.org/prod/v1/images/{r['image_id']}/file" for r in body["results"]
    ]


@pytest.mark.parametrize(
    "url", ["search.example.org", "ftp://search.example.org", "https://h/p?x=1", "https://"]
)
def test_given_a_public_base_url_that_is_not_an_http_url_when_loading_then_config_error(
    url: str,
) -> None:
    with pytest.raises(ConfigError, match="public_base_url"):
        load_settings(public_base_url=url)


# --- filters on every scalar metadata field ------------------------------------------------------


def sized(corpus: list[Document]) -> list[Document]:
    """The corpus with a number and a boolean in every document's metadata (no facet takes
    them: numbers are not categorical)."""
    sizes = [4.6, 12, 0.5]
    return [
        dataclasses.replace(d, metadata={**d.metadata, "size_cm": sizes[i % 3], "ct": i % 2 == 0})
        for i, d in enumerate(corpus)
    ]


def test_given_a_numeric_field_that_is_no_facet_when_filtered_on_then_exact_values_match(
    tmp_path: Path, corpus: list[Document], encoder: ColourEncoder
) -> None:
    documents = sized(corpus)
    engine = build_index(tmp_path / "index", documents, model_id="colour-encoder")
    client = client_for(SearchService(engine, encoder))
    assert "size_cm" not in client.get("/v1/facets").json()
    for mode in ("text", "vector", "hybrid"):
        response = client.get(f"/v1/search?q=chest red&mode={mode}&size_cm=4.6&ct=true&k=100")
        assert response.status_code == 200, response.text
        want = {d.image_id for d in documents if d.metadata["size_cm"] == 4.6 and d.metadata["ct"]}
        got = {r["image_id"] for r in response.json()["results"]}
        assert got and got <= want
    # a field no document has is still a 422 naming the filterable fields, numbers included
    unknown = client.get("/v1/search?q=chest&size=4.6")
    assert unknown.status_code == 422 and "size_cm" in unknown.json()["error"]["message"]


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        ("size_cm_min=1&size_cm_max=13", lambda size: 1 <= size <= 13),
        ("size_cm_max=1", lambda size: size <= 1),
        ("size_cm_min=4.6", lambda size: size >= 4.6),
        ("size_cm_min=1&size_cm_min=5", lambda size: size >= 5),  # the tightest bound holds
        ("size_cm_min=1&size_cm=12", lambda size: size == 12),  # and an exact value with it
        ("size_cm_min=100", lambda size: False),
    ],
)
def test_given_a_numeric_field_when_filtered_by_a_range_then_the_values_inside_match(
    tmp_path: Path, corpus: list[Document], encoder: ColourEncoder, query: str, keep: Any
) -> None:
    documents = sized(corpus)
    engine = build_index(tmp_path / "index", documents, model_id="colour-encoder")
    client = client_for(SearchService(engine, encoder))
    for mode in ("text", "vector"):
        response = client.get(f"/v1/search?q=chest red mass&mode={mode}&k=100&{query}")
        assert response.status_code == 200, response.text
        got = {r["image_id"] for r in response.json()["results"]}
        allowed = {d.image_id for d in documents if keep(d.metadata["size_cm"])}
        assert got <= allowed and (got or not allowed), (mode, query)
        if mode == "vector":  # every image has a vector: all allowed ones are found
            assert got == allowed and response.json()["total"] == len(allowed)


@pytest.mark.parametrize(
    ("query", "message"),
    [("size_cm_min=abc", "must be a number"), ("size_min=1", "unknown filter field"),
     ("size_cm_max=1e", "must be a number")],
)  # fmt: skip
def test_given_a_bad_range_when_filtering_then_422_saying_why(
    tmp_path: Path, corpus: list[Document], encoder: ColourEncoder, query: str, message: str
) -> None:
    engine = build_index(tmp_path / "index", sized(corpus), model_id="colour-encoder")
    response = client_for(SearchService(engine, encoder)).get(f"/v1/search?q=chest&{query}")
    assert response.status_code == 422 and message in response.json()["error"]["message"]


@pytest.mark.live
def test_given_both_engines_when_filtering_on_a_numeric_field_then_the_same_results(
    tmp_path: Path, corpus: list[Document], encoder: ColourEncoder, node_index: Any
) -> None:
    from medsearch.index.opensearch import OpenSearchConfig

    documents = sized(corpus)
    embedded = build_index(tmp_path / "index", documents, model_id="colour-encoder")
    remote = node_index(OpenSearchConfig(replicas=0, refresh_writes=True))
    remote.create(encoder.dim)
    assert remote.upsert(documents).failed == []
    answers = []
    for engine in (embedded, remote):
        client = client_for(SearchService(engine, encoder))
        pages = [
            client.get(f"/v1/search?q=chest red mass&mode={mode}&size_cm={size}&k=100")
            for mode in ("text", "vector")
            for size in ("4.6", "12", "0.5", "0.5&size_cm_min=0", "12&size_cm_max=4.6")
        ] + [
            client.get(f"/v1/search?q=chest red mass&mode={mode}&{bounds}&k=100")
            for mode in ("text", "vector")
            for bounds in ("size_cm_min=1", "size_cm_max=4.6", "size_cm_min=0.5&size_cm_max=5")
        ]
        assert all(page.status_code == 200 for page in pages), [p.text for p in pages]
        answers.append([sorted(r["image_id"] for r in p.json()["results"]) for p in pages])
    assert answers[0] == answers[1] and any(answers[0])


def test_given_metadata_named_like_parameters_when_listing_facets_then_they_are_left_out(
    corpus: list[Document], encoder: ColourEncoder
) -> None:
    documents = [
        dataclasses.replace(d, metadata={**d.metadata, "q": "x", "k": "y", "mode": "z"})
        for d in corpus
    ]
    client = client_for(SearchService(MemoryIndex(documents), encoder))
    facets = client.get("/v1/facets").json()
    assert "modality" in facets and not {"q", "k", "mode", "alpha", "offset"} & set(facets)


# --- the schema says what the server does -------------------------------------------------------


def test_given_an_empty_mode_when_searching_then_422_as_the_schema_enum_says(
    service: SearchService,
) -> None:
    response = client_for(service).get("/v1/search?q=chest&mode=")
    assert (
        response.status_code == 422 and "mode must be one of" in response.json()["error"]["message"]
    )


def test_given_the_openapi_schema_when_read_then_it_states_the_id_and_query_rules(
    service: SearchService,
) -> None:
    schema = client_for(service).get("/openapi.json").json()
    for path in (
        "/v1/images/{image_id}",
        "/v1/images/{image_id}/file",
        "/v1/images/{image_id}/similar",
    ):
        parameter = next(p for p in schema["paths"][path]["get"]["parameters"] if p["in"] == "path")
        assert parameter["schema"]["pattern"].startswith("^(?!")
    q = next(p for p in schema["paths"]["/v1/search"]["get"]["parameters"] if p["name"] == "q")
    assert q["schema"]["pattern"] == QUERY_PATTERN
    assert "400" in schema["paths"]["/v1/search/image"]["post"]["responses"]


@pytest.mark.parametrize(
    ("q", "valid"),
    [("knee", True), (" knee\t", True), ("   ", False), ("knee\x1c", False), ("\x85x", False),
     ("a\x00b", False), ("x" * 512, True)],
)  # fmt: skip
def test_given_the_query_pattern_when_matched_then_it_agrees_with_the_rule(
    q: str, valid: bool
) -> None:
    import re

    assert bool(re.search(QUERY_PATTERN, q)) == valid
    try:
        validate_query(q)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == valid


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "PUT", "DELETE"])
def test_given_the_web_page_when_a_wrong_method_hits_an_api_path_then_405_allow_post(
    service: SearchService, tmp_path: Path, method: str
) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>medsearch</title>")
    client = client_for(service, web_dir=tmp_path)
    response = client.request(method, "/v1/search/image")
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == "POST" and response.json()["error"]["message"]
    # while the page and its files are still served, and a missing file is a JSON 404
    assert "<title>medsearch" in client.get("/").text
    missing = client.get("/no-such-file.js")
    assert missing.status_code == 404 and missing.json()["error"]["message"]


def test_given_a_malformed_multipart_body_when_uploading_then_a_documented_400(
    service: SearchService,
) -> None:
    client = client_for(service)
    for content_type, body in [
        ("multipart/form-data", b"abc"),  # no boundary
        ("multipart/form-data; boundary=x", b"garbage"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n\r\n"),
    ]:
        response = client.post(
            "/v1/search/image", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 400 and response.json()["error"]["message"]


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds almost none: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def test_given_a_huge_bomb_upload_when_searching_then_the_message_quotes_our_50_mp_limit(
    service: SearchService,
) -> None:
    # 20000 x 20000 = 400 MP: past Pillow's own bomb threshold, which answers before our check
    response = client_for(service).post(
        "/v1/search/image", files={"file": ("bomb.png", png_header(20000, 20000))}
    )
    assert response.status_code == 422
    detail = response.json()["error"]["message"]
    assert "50,000,000" in detail and "178,956,970" not in detail and "400,000,000" in detail


# --- a response has a known maximum size -------------------------------------------------------


def test_given_a_long_caption_when_it_is_a_hit_then_cut_and_flagged_and_whole_in_the_record(
    corpus: list[Document], encoder: ColourEncoder
) -> None:
    long = "chest " * 2000  # 12,000 characters
    documents = [dataclasses.replace(corpus[0], caption=long), *corpus[1:]]
    client = client_for(SearchService(MemoryIndex(documents), encoder))
    hits = client.get("/v1/search?q=chest&mode=text&k=100").json()["results"]
    first = next(r for r in hits if r["image_id"] == corpus[0].image_id)
    assert len(first["caption"]) == MAX_HIT_CAPTION_CHARS and first["caption_truncated"] is True
    assert not any(r["caption_truncated"] for r in hits if r is not first)
    similar = client.get(f"/v1/images/{corpus[0].image_id}/similar?mode=image_text").json()
    assert len(similar["query"]) == MAX_HIT_CAPTION_CHARS
    assert client.get(f"/v1/images/{corpus[0].image_id}").json()["caption"] == long


def test_given_a_plain_png_upload_when_searching_then_it_still_answers(
    service: SearchService,
) -> None:
    data = png_bytes(Image.new("RGB", (16, 16), (220, 30, 30)))
    response = client_for(service).post("/v1/search/image", files={"file": ("r.png", data)})
    assert response.status_code == 200 and response.json()["results"]


def test_given_an_invalid_query_parameter_when_its_form_field_wins_then_still_422(
    service: SearchService, make_upload: Any
) -> None:
    client = client_for(service)
    files = {"file": ("a.png", make_upload("red"))}
    for query in ("offset=1001", "k=0", "alpha=2", "q=a%01b"):
        response = client.post(
            f"/v1/search/image?{query}", files=files, data={"offset": "0", "k": "3"}
        )
        assert response.status_code == 422, (query, response.text)
    # a blank text is "no text", on the form or in the query
    blank = client.post("/v1/search/image?q=%20", files=files, data={"k": "3"})
    assert blank.status_code == 200 and blank.json()["query"] is None


def test_given_the_upload_schema_when_read_then_optional_fields_have_no_null_type(
    service: SearchService,
) -> None:
    schema = client_for(service).get("/openapi.json").json()
    body = next(v for k, v in schema["components"]["schemas"].items() if k.startswith("Body_"))
    fields = body["properties"]
    assert fields["alpha"]["type"] == "number" and "anyOf" not in fields["alpha"]
    assert (fields["k"]["minimum"], fields["k"]["maximum"]) == (1, 100)
    parameters = schema["paths"]["/v1/search/image"]["post"]["parameters"]
    assert all("anyOf" not in p["schema"] for p in parameters)


def test_given_the_cli_when_search_json_then_links_are_relative_or_under_the_public_url(
    tmp_path: Path,
    corpus: list[Document],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from medsearch.cli import main

    build_index(tmp_path / "index", corpus, model_id="colour-encoder")
    argv = ["search", "--index", str(tmp_path / "index"), "--mode", "text", "--json", "chest"]
    assert main(argv) == 0
    links = [r["image_url"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert links and all(link.startswith("v1/images/") for link in links)
    monkeypatch.setenv("MEDSEARCH_PUBLIC_BASE_URL", "https://search.example.org")
    assert main(argv) == 0
    links = [r["image_url"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert all(link.startswith("https://search.example.org/v1/images/") for link in links)


def test_given_huge_metadata_when_it_is_a_hit_then_bounded_and_flagged_and_whole_in_the_record(
    corpus: list[Document], encoder: ColourEncoder
) -> None:
    from medsearch.search import MAX_HIT_METADATA_BYTES, MAX_HIT_METADATA_VALUE_CHARS

    huge = {
        **corpus[0].metadata,
        "notes": "x" * 1_000_000,
        "series": list(range(100_000)),
        **{f"field_{i:04d}": "value" for i in range(2000)},
    }
    documents = [dataclasses.replace(corpus[0], metadata=huge), *corpus[1:]]
    client = client_for(SearchService(MemoryIndex(documents), encoder))
    response = client.get("/v1/search?q=chest&mode=text&k=100")
    hits = response.json()["results"]
    first = next(r for r in hits if r["image_id"] == corpus[0].image_id)
    shown = first["metadata"]
    assert first["metadata_truncated"] is True
    assert len(json.dumps(shown).encode()) <= MAX_HIT_METADATA_BYTES
    assert shown["modality"] == corpus[0].metadata["modality"] and "series" not in shown
    assert len(shown["notes"]) == MAX_HIT_METADATA_VALUE_CHARS
    assert not any(r["metadata_truncated"] for r in hits if r is not first)
    assert len(response.content) < 2_000_000  # the record alone is 2 MB of metadata
    record = client.get(f"/v1/images/{corpus[0].image_id}").json()
    assert (
        record["metadata"]["notes"] == huge["notes"]
        and len(record["metadata"]["series"]) == 100_000
    )
