"""Logs hold no query text, caption or image content: lengths and hashes only.

Every logger is captured while a search, an upload, a failing engine and a rejected bulk
document go through the real code, and no record may contain the texts they carried.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pytest
from conftest import ColourEncoder, MemoryIndex
from fastapi.testclient import TestClient

from medsearch.api import create_app
from medsearch.errors import SearchIndexError
from medsearch.index.base import Document, SearchPage, SearchQuery
from medsearch.search import SearchService, text_fingerprint
from medsearch.settings import ServiceSettings

QUERY = "zebrafish quokka nodule"
CAPTION = "Confidential caption quokka-7731 of the left lung"


def served_record(record: logging.LogRecord) -> bool:
    """Whether a record is the server's to answer for: any of medsearch's, and any other
    library's at INFO or above that reaches the root handlers (a library's DEBUG output, request
    bodies included, and its loggers that do not propagate, such as opensearch-py's curl
    tracer, are a choice of whoever turns them on); the tests' own HTTP client is not the
    server."""
    if record.name.startswith("httpx") or not logging.getLogger(record.name).propagate:
        return False
    return record.name.startswith("medsearch") or record.levelno >= logging.INFO


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """The server's captured records, message and arguments formatted, with exception text."""
    handler = logging.Formatter()
    return "\n".join(
        record.getMessage() + (handler.formatException(record.exc_info) if record.exc_info else "")
        for record in caplog.records
        if served_record(record)
    )


class QuotingIndex(MemoryIndex):
    """An engine whose failures quote the query, as OpenSearch's parse errors can."""

    def search(self, query: SearchQuery) -> SearchPage:
        """Fail with the query text in the message."""
        raise SearchIndexError(f"OpenSearch search failed: cannot parse [{query.text}]")


def test_given_searches_and_uploads_when_served_then_no_log_holds_their_text(
    corpus: list[Document],
    encoder: ColourEncoder,
    make_upload: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    documents = [dataclasses.replace(corpus[0], caption=CAPTION), *corpus[1:]]
    service = SearchService(MemoryIndex(documents), encoder)
    client = TestClient(create_app(ServiceSettings(), service_factory=lambda: service))
    caplog.set_level(logging.DEBUG)
    assert client.get("/v1/search", params={"q": f"{QUERY} lung", "k": 50}).status_code == 200
    upload = client.post(
        "/v1/search/image", params={"q": QUERY}, files={"file": ("a.png", make_upload("red"))}
    )
    assert upload.status_code == 200
    bad = client.post("/v1/search/image", params={"q": QUERY}, files={"file": ("a.png", b"%PDF")})
    assert bad.status_code == 415
    assert client.get("/v1/search", params={"q": f"{QUERY}\x01"}).status_code == 422
    text = logged(caplog)
    assert "quokka" not in text and "zebrafish" not in text


def test_given_an_engine_error_quoting_the_query_when_logged_then_kind_and_hash_only(
    corpus: list[Document], encoder: ColourEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    service = SearchService(QuotingIndex(corpus), encoder)
    client = TestClient(create_app(ServiceSettings(), service_factory=lambda: service))
    caplog.set_level(logging.DEBUG)
    response = client.get("/v1/search", params={"q": QUERY, "mode": "text"})
    assert response.status_code == 503
    text = logged(caplog)
    assert "quokka" not in text
    # the error is logged, by its kind and a fingerprint that matches the client's message
    assert (
        "SearchIndexError" in text and text_fingerprint(response.json()["error"]["message"]) in text
    )


@pytest.mark.live
def test_given_a_bulk_document_opensearch_rejects_when_loaded_then_no_caption_or_value_is_logged(
    node_index: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from medsearch.index.opensearch import OpenSearchConfig

    index = node_index(OpenSearchConfig(replicas=0, refresh_writes=True))
    index.create(4)
    vector = np.full(4, 0.5, dtype=np.float32)
    assert index.upsert([Document("a", "plain", vector, metadata={"x": "plain"})]).failed == []
    caplog.set_level(logging.DEBUG)
    # an object where the mapping holds a keyword: OpenSearch's reason previews the value
    rejected = Document("b", CAPTION, vector, metadata={"x": {"note": CAPTION}})
    result = index.upsert([rejected])
    [(image_id, reason)] = result.failed
    assert image_id == "b" and reason.startswith("400 mapper_parsing_exception")
    assert "quokka" not in reason and "characters not shown" in reason
    assert "quokka" not in logged(caplog)
