"""The API's /docs in a real browser with nothing outside 127.0.0.1 reachable: Swagger UI comes
from the app itself (the installed ``swagger_ui_bundle``), so the operations render offline, and
behind a stage prefix too."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.web.conftest import open_tab


@pytest.fixture(scope="module")
def staged_server(web_index: Path, tiny_model_dir: Path) -> Iterator[str]:
    """The API served as behind an API Gateway stage: root path /prod."""
    from medsearch.api import background_server, create_app
    from medsearch.settings import ServiceSettings

    settings = ServiceSettings(
        index_dir=str(web_index), model=str(tiny_model_dir), root_path="prod"
    )
    with background_server(create_app(settings)) as url:
        yield url


@pytest.mark.parametrize("staged", [False, True], ids=["root", "stage"])
def test_given_no_network_when_docs_open_then_every_operation_renders_from_local_files(
    browser: Any, web_server: str, staged_server: str, artifacts: Path, staged: bool
) -> None:
    base = staged_server if staged else web_server
    requested: list[str] = []
    blocked: list[str] = []

    def only_local(route: Any) -> None:
        url = route.request.url
        requested.append(url)
        if urllib.parse.urlsplit(url).hostname != "127.0.0.1":
            blocked.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    tab_iter = open_tab(browser, base)
    page = next(tab_iter)
    page.route("**/*", only_local)
    # Given every request off 127.0.0.1 refused, when /docs opens
    page.goto("/prod/docs" if staged else "/docs")
    # Then Swagger UI renders the /v1 operations, each listed once, and nothing was blocked
    for path in ("/v1/search", "/v1/search/image", "/v1/images/{image_id}", "/v1/facets"):
        expect(page.locator(f".opblock-summary-path[data-path='{path}']").first).to_be_visible()
    expect(page.locator(".opblock")).to_have_count(7)
    # And an operation opens to its parameters and the error schema
    page.locator(".opblock-summary-path[data-path='/v1/search']").click()
    expect(page.locator(".parameters-container")).to_contain_text("offset + k")
    expect(page.locator("section.models")).to_contain_text("Error")
    page.screenshot(path=str(artifacts / f"docs-offline-{'stage' if staged else 'root'}.png"))
    assert not blocked, blocked
    assert any("/docs-assets/swagger-ui-bundle.js" in url for url in requested)
    next(tab_iter, None)
