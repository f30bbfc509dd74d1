"""The page's states in a real browser against the real app: the empty page's examples, the
header's service light when the API goes away and comes back, and the phone layout."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import open_tab
from playwright.sync_api import expect
from test_page import (
    DEFAULT_K,
    QUERY,
    api_get,
    expect_ids,
    expect_phase,
    ids_of,
    page_params,
    search_api,
    settle_images,
)

pytestmark = pytest.mark.slow

# Every API path the page calls; the page's own files (/, app.js, config.json...) stay served.
API_PATHS = re.compile(r"^[^?]*/(health|facets|search|images/[^?]*)(\?.*)?$")


def test_given_the_empty_page_when_an_example_query_is_clicked_then_it_is_searched(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given the page with no query
    page.goto("/")
    expect_phase(page, "intro")
    examples = page.locator("#message .examples button.example")
    expect(examples.first).to_be_visible()
    assert examples.count() >= 3
    page.screenshot(path=str(artifacts / "states-empty-page-examples.png"))
    text = examples.nth(2).inner_text()
    # When an example is clicked
    examples.nth(2).click()
    # Then it is searched like a typed query: in the box, in the URL, and the API's results shown
    expect(page.locator("#q")).to_have_value(text)
    assert page_params(page)["q"] == [text]
    expected = search_api(web_server, q=text, mode="hybrid", alpha="0.50", k=DEFAULT_K)
    expect_ids(page, ids_of(expected))


def test_given_the_api_unreachable_when_it_returns_and_retry_is_clicked_then_the_header_recovers(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given an API that cannot be reached (every API request fails at the network)
    page.route(API_PATHS, lambda route: route.abort("connectionrefused"))
    # When a search is opened
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=text")
    # Then the header's light is red, says so, and offers Retry; the search shows the error
    health = page.locator("#health")
    expect(health).to_have_class(re.compile(r"\bis-down\b"))
    expect(health).to_have_text("API unreachable")
    expect(page.locator("#retry")).to_be_visible()
    expect_phase(page, "error")
    expect(page.get_by_role("alert")).to_contain_text("Cannot reach the search API")
    page.screenshot(path=str(artifacts / "states-api-unreachable.png"))
    # When the API is back and Retry is clicked
    page.unroute(API_PATHS)
    page.click("#retry")
    # Then the light is normal again with the index's size and model, and the search runs
    status, body = api_get(web_server, "health")
    assert status == 200, body
    expect(health).not_to_have_class(re.compile(r"\bis-down\b"))
    expect(health).to_have_text(f"{body['documents']} images · model {body['model']}")
    expect(page.locator("#retry")).to_be_hidden()
    expect_ids(page, ids_of(search_api(web_server, q=QUERY, mode="text", k=DEFAULT_K)))
    expect(page.locator("fieldset.facet").first).to_be_visible()
    page.screenshot(path=str(artifacts / "states-api-back.png"))


def test_given_a_hub_model_id_when_the_header_shows_it_then_it_is_the_whole_name(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given an API that serves a model by its Hugging Face id (organisation/name)
    status, body = api_get(web_server, "health")
    assert status == 200, body
    hub = {**body, "model": "medsearch/clip-medpix-ft"}
    page.route(re.compile(r".*/health$"), lambda route: route.fulfill(json=hub))
    # When the page starts
    page.goto("/")
    # Then the header names the model as the API gives it, organisation included
    expect(page.locator("#health")).to_have_text(
        f"{body['documents']} images · model medsearch/clip-medpix-ft"
    )
    page.screenshot(path=str(artifacts / "states-header-model-name.png"), clip=_header(page))


def _header(page: Any) -> dict[str, float]:
    box = page.locator("header.topbar").bounding_box()
    assert box
    return box


@pytest.fixture
def phone(browser: Any, web_server: str) -> Iterator[Any]:
    """A tab sized and behaving like a phone (390×844, touch, mobile)."""
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
        base_url=web_server,
    )
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.set_default_timeout(15_000)
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_given_a_phone_when_results_show_then_they_are_on_screen_and_key_hints_hidden(
    phone: Any, web_server: str, artifacts: Path
) -> None:
    # Given a phone
    # When a search is opened
    phone.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=hybrid")
    expected = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k=DEFAULT_K)
    expect_ids(phone, ids_of(expected))
    # Then the first result is on screen without scrolling: search options and filters folded
    first = phone.locator(".card").first
    expect(first).to_be_in_viewport()
    expect(phone.locator("#advanced")).not_to_have_attribute("open", "")
    expect(phone.locator("#filters-details")).not_to_have_attribute("open", "")
    expect(phone.locator("#mode-group")).to_be_hidden()
    box = first.bounding_box()
    assert box and box["y"] + box["height"] / 2 < 844, box
    assert phone.evaluate("window.scrollY") == 0
    # And no keyboard shortcut hints are shown on a touch screen
    for hint in phone.locator(".key-hint").all():
        expect(hint).to_be_hidden()
    settle_images(phone)
    phone.screenshot(path=str(artifacts / "states-phone-results.png"))
    # When "Search options" is tapped, the mode switch appears
    phone.locator("#advanced summary").tap()
    expect(phone.locator("#mode-group")).to_be_visible()
    # When a result is tapped, its detail fills the screen, without keyboard hints
    phone.locator("#advanced summary").tap()
    first.locator(".card-link").tap()
    expect(phone.locator("#detail")).to_have_attribute("data-state", "done")
    expect(phone.locator("#detail .key-hint")).to_be_hidden()
    expect(phone.locator("#detail-img")).to_be_in_viewport()
    phone.screenshot(path=str(artifacts / "states-phone-detail.png"))


def test_given_a_desktop_when_the_page_opens_then_options_are_open_and_key_hints_shown(
    browser: Any, web_server: str, artifacts: Path
) -> None:
    # Given a desktop browser (mouse, wide window)
    tab_iter = open_tab(browser, web_server)
    page = next(tab_iter)
    try:
        # When the page opens
        page.goto("/")
        expect_phase(page, "intro")
        # Then the search options are open with no toggle, and the keyboard hint is shown
        expect(page.locator("#mode-group")).to_be_visible()
        expect(page.locator("#advanced summary")).to_be_hidden()
        expect(page.locator("#q-hint .key-hint")).to_be_visible()
        page.screenshot(path=str(artifacts / "states-desktop-empty-page.png"))
    finally:
        next(tab_iter, None)


def test_given_the_api_unreachable_when_it_returns_then_the_light_turns_back_unprompted(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given the page started while the API could not be reached
    page.route(API_PATHS, lambda route: route.abort("connectionrefused"))
    page.goto("/")
    health = page.locator("#health")
    expect(health).to_have_class(re.compile(r"\bis-down\b"))
    # When the API comes back, and nobody touches the page
    page.unroute(API_PATHS)
    # Then the page's own health check (every few seconds while down) turns the light back
    status, body = api_get(web_server, "health")
    assert status == 200, body
    expect(health).not_to_have_class(re.compile(r"\bis-down\b"), timeout=20_000)
    expect(health).to_have_text(f"{body['documents']} images · model {body['model']}")
    expect(page.locator("#retry")).to_be_hidden()
    page.screenshot(path=str(artifacts / "states-api-back-unprompted.png"), clip=_header(page))


def _site_csp() -> str:
    """The Content-Security-Policy the CloudFront site sends (infra/site.py), read from its
    source so that the test follows it without importing the CDK."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[2] / "infra" / "site.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "CONTENT_SECURITY_POLICY" for t in node.targets
        ):
            assert isinstance(node.value, ast.Call) and node.value.args
            return "; ".join(ast.literal_eval(node.value.args[0]))
    raise AssertionError("infra/site.py has no CONTENT_SECURITY_POLICY")


def test_given_the_site_csp_when_results_and_the_detail_show_then_nothing_is_blocked(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given the page served with the deployed site's Content-Security-Policy
    csp = _site_csp()
    assert "style-src 'self'" in csp

    def with_csp(route: Any) -> None:
        response = route.fetch()
        route.fulfill(
            response=response, headers={**response.headers, "content-security-policy": csp}
        )

    page.route(lambda url: urllib.parse.urlsplit(url).path == "/", with_csp)
    page.add_init_script(
        """window.__blocked = [];
        document.addEventListener("securitypolicyviolation",
            (e) => window.__blocked.push(`${e.violatedDirective} ${e.blockedURI}`));"""
    )
    # When a hybrid search shows its meters, and a result's detail opens and zooms
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=hybrid")
    expected = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k=DEFAULT_K)
    expect_ids(page, ids_of(expected))
    page.locator(".card-link").first.click()
    expect(page.locator("#detail")).to_have_attribute("data-state", "done")
    page.click("#detail-zoom")
    expect(page.locator("#detail-zoom")).to_have_attribute("aria-pressed", "true")
    # Then the policy blocked nothing, and the meters' widths (set through the CSSOM) apply
    assert page.evaluate("window.__blocked") == []
    fill = page.locator(".card .why-text .why-fill").first
    assert fill.evaluate("f => f.getBoundingClientRect().width") > 0
    expect(page.locator("#detail-img")).to_have_js_property("complete", True)
    assert page.locator("#detail-img").evaluate("img => img.naturalWidth") > 0
    page.screenshot(path=str(artifacts / "states-under-site-csp.png"))
