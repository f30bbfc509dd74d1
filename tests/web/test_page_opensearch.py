"""The web page in a real browser against `medsearch serve` on an OpenSearch alias.

The corpus is loaded with `medsearch load` into the suite's OpenSearch node (or the cluster of
``MEDSEARCH_OPENSEARCH_URL``), then `medsearch serve --opensearch-url ... --opensearch-index ...`
runs as its own process, as ML ops would start it, and the page searches through it. What the
page shows is compared with what that server's API answers for the same search.
"""

from __future__ import annotations

import contextlib
import io
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import open_tab
from playwright.sync_api import expect
from test_page import api_get, expect_ids, expect_phase, ids_of, search_api

from medsearch.cli import main
from medsearch.data.manifest import read_manifest
from medsearch.index.opensearch import OpenSearchIndex
from tests.support.served_api import serve_process

pytestmark = [pytest.mark.live, pytest.mark.slow]

QUERY = "chest nodule"
DEFAULT_K = "20"  # the page's default page size


@pytest.fixture(scope="module")
def opensearch_alias(
    tmp_path_factory: pytest.TempPathFactory,
    synth_corpus: Path,
    tiny_model_dir: Path,
    opensearch_url: str,
    opensearch_client: Any,
) -> Iterator[str]:
    """The synthetic corpus, vectorized with the tiny model, loaded behind a fresh alias."""
    from medsearch.model.encoder import load_encoder
    from medsearch.vectorize import vectorize

    vectors = tmp_path_factory.mktemp("web-os-vectors")
    vectorize(
        load_encoder(str(tiny_model_dir)), read_manifest(synth_corpus), vectors, progress=False
    )
    alias = f"medsearch-test-{uuid.uuid4().hex[:10]}"
    argv = ["load", "--data", str(synth_corpus), "--vectors", str(vectors),
            "--opensearch-url", opensearch_url, "--alias", alias, "--replicas", "0"]  # fmt: skip
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
        assert code == 0, err.getvalue()
        yield alias
    finally:
        for name in OpenSearchIndex(opensearch_client, alias).creation_dates(f"{alias}-*"):
            OpenSearchIndex(opensearch_client, name).drop()


@pytest.fixture(scope="module")
def opensearch_server(
    opensearch_alias: str,
    opensearch_url: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """`medsearch serve` on the alias, in its own process on 127.0.0.1; yields its base URL."""
    log = tmp_path_factory.mktemp("web-os-serve") / "serve.log"
    argv = ["--opensearch-url", opensearch_url, "--opensearch-index", opensearch_alias]
    with (
        log.open("w") as stderr,
        serve_process([*argv, "--model", str(tiny_model_dir)], stderr=stderr) as (url, _),
    ):
        yield url


@pytest.fixture
def opensearch_page(browser: Any, opensearch_server: str) -> Iterator[Any]:
    """A fresh tab on the OpenSearch-backed server; JavaScript errors on the page fail the test."""
    yield from open_tab(browser, opensearch_server)


def test_a_search_in_the_page_shows_the_clusters_hybrid_results(
    opensearch_page: Any, opensearch_server: str, synth_corpus: Path
) -> None:
    page = opensearch_page
    # Given the page of a server on the OpenSearch alias, which counts the loaded corpus
    status, health = api_get(opensearch_server, "health")
    assert status == 200, health
    n_records = len(read_manifest(synth_corpus))
    assert health["documents"] == n_records
    page.goto("/")
    expect_phase(page, "intro")
    expect(page.locator("#health")).to_contain_text(f"{n_records} images")
    # When the user types a query and presses Enter (the default mode: hybrid, alpha 0.5)
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    # Then the cards are the API's hybrid ranking (fused by the cluster's search pipeline)
    expected = search_api(opensearch_server, q=QUERY, mode="hybrid", alpha="0.50", k=DEFAULT_K)
    assert expected["results"], "the loaded corpus must match the query"
    expect_ids(page, ids_of(expected))
    expect(page.locator(".card")).to_have_count(len(expected["results"]))
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)["q"] == [QUERY]
    first = expected["results"][0]
    card = page.locator(".card").first
    expect(card).to_have_attribute("data-image-id", first["image_id"])
    if first["caption"] is not None:
        expect(card.locator(".caption")).to_have_text(first["caption"])
    # and the image of a card comes from the document's stored location
    image = card.locator("img")
    image.scroll_into_view_if_needed()
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") > 0
