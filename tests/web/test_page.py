"""The web page in a real browser against the real app (API, embedded index, tiny model).

Every check compares what the page shows with what the API itself answers for the same request,
so a page that drops, reorders or misreads results fails; the data comes from the real engine.
Screenshots land in tests/web/artifacts/ (gitignored) for a look at the design.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from medsearch.data.manifest import read_manifest

pytestmark = pytest.mark.slow

QUERY = "chest nodule"
DEFAULT_K = "20"  # the page's default page size


def api_get(base: str, path: str, params: Sequence[tuple[str, str]] = ()) -> tuple[int, Any]:
    """Call the API directly: the reference the page's results are compared with."""
    query = urllib.parse.urlencode(list(params))
    url = f"{base}/v1/{path.lstrip('/')}" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def expect_phase(page: Any, phase: str) -> None:
    """Wait until the results area reports ``phase`` (done, empty, error, intro, loading)."""
    expect(page.locator("#results-region")).to_have_attribute("data-state", phase)


def expect_ids(page: Any, ids: list[str]) -> None:
    """Wait until the grid shows exactly ``ids``, in this order."""
    expect_phase(page, "done")
    expect(page.locator("#results")).to_have_attribute("data-ids", " ".join(ids))


def settle_images(page: Any) -> None:
    """Load every thumbnail now (they are lazy), so a full-page screenshot shows them all."""
    page.evaluate(
        """() => Promise.all([...document.images].map((img) => {
            img.loading = "eager";
            return img.complete ? null : new Promise((done) => {
                img.addEventListener("load", done, { once: true });
                img.addEventListener("error", done, { once: true });
            });
        }))"""
    )


def ids_of(body: dict[str, Any]) -> list[str]:
    """Image ids of an API search response, in rank order."""
    return [hit["image_id"] for hit in body["results"]]


def search_api(base: str, **params: str) -> dict[str, Any]:
    """Run a search on the API directly and return its body (it must succeed)."""
    status, body = api_get(base, "search", list(params.items()))
    assert status == 200, body
    return body


def page_params(page: Any) -> dict[str, list[str]]:
    """The page's own URL parameters."""
    return urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)


def test_text_search_shows_the_api_results(page: Any, web_server: str) -> None:
    # Given the page with no query
    status, health = api_get(web_server, "health")
    assert status == 200, health
    page.goto("/")
    expect_phase(page, "intro")
    expect(page.locator("#health")).to_contain_text(f"{health['documents']} images")
    # When the user picks text mode, types a query and presses Enter
    page.click("label[for=mode-text]")
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    # Then the grid shows the API's BM25 ranking, and the URL carries the search
    expected = search_api(web_server, q=QUERY, mode="text", k=DEFAULT_K, offset="0")
    assert expected["total"] > 0, "the synthetic corpus must have captions matching the query"
    expect_ids(page, ids_of(expected))
    shown = len(expected["results"])
    expect(page.locator("#status")).to_contain_text(f"1–{shown} of {expected['total']}")
    assert page_params(page)["q"] == [QUERY] and page_params(page)["mode"] == ["text"]
    # BM25 cannot match an image without a caption, and text mode has no alpha
    expect(page.locator(".card.captionless")).to_have_count(0)
    expect(page.locator("#alpha-control")).to_be_hidden()
    first = expected["results"][0]
    expect(page.locator(".card").first.locator(".caption")).to_have_text(first["caption"])
    expect(page.locator(".card").first.locator(".components")).to_contain_text("BM25")


def test_switching_to_hybrid_and_moving_alpha_update_results(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given a text search
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=text")
    expect_phase(page, "done")
    # When the user switches to hybrid
    page.click("label[for=mode-hybrid]")
    # Then the alpha slider appears and the results are the API's fused ranking at alpha 0.5
    expect(page.locator("#alpha-control")).to_be_visible()
    hybrid = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k=DEFAULT_K)
    expect_ids(page, ids_of(hybrid))
    assert page_params(page)["mode"] == ["hybrid"]
    expect(page.locator("#status")).to_contain_text("α 0.50")
    settle_images(page)
    page.screenshot(path=str(artifacts / "search.png"), full_page=True)
    # When the slider moves to the vector end (keyboard: End)
    page.focus("#alpha")
    page.keyboard.press("End")
    # Then the search reruns with alpha 1 and the URL records it
    vector_end = search_api(web_server, q=QUERY, mode="hybrid", alpha="1.00", k=DEFAULT_K)
    expect_ids(page, ids_of(vector_end))
    expect(page.locator("#alpha-value")).to_have_text("1.00")
    assert page_params(page)["alpha"] == ["1.00"]


def test_vector_mode_marks_captionless_images(page: Any, web_server: str) -> None:
    # Given a vector search that returns the whole small corpus
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=vector&k=100")
    expected = search_api(web_server, q=QUERY, mode="vector", k="100")
    expect_ids(page, ids_of(expected))
    # Then every captionless hit (which BM25 could never find) is marked as such
    captionless = [hit["image_id"] for hit in expected["results"] if hit["caption"] is None]
    assert captionless, "the synthetic corpus must contain captionless images"
    cards = page.locator(".card.captionless")
    expect(cards).to_have_count(len(captionless))
    for i, image_id in enumerate(captionless):
        card = cards.nth(i)
        expect(card).to_have_attribute("data-image-id", image_id)
        expect(card.locator(".caption")).to_contain_text("No caption")
        expect(card.locator("img")).to_have_attribute("alt", f"Captionless image {image_id}")
    # And the thumbnails really load from the API
    first_img = page.locator(".card img").first
    expect(first_img).to_have_js_property("complete", True)
    assert first_img.evaluate("img => img.naturalWidth") > 0


def test_similar_images_with_mode_switch_and_back_forward(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given hybrid results
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=hybrid")
    search = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k=DEFAULT_K)
    expect_ids(page, ids_of(search))
    source = search["results"][0]["image_id"]
    # When the user opens the first result and asks for similar images
    page.locator(".card-link").first.click()
    expect(page.locator("#detail")).to_have_attribute("data-state", "done")
    page.click("#similar-image")
    # Then the detail closes and the page shows the API's nearest images of it, without the
    # image itself
    status, similar = api_get(
        web_server, f"images/{source}/similar", [("mode", "image"), ("k", DEFAULT_K)]
    )
    assert status == 200, similar
    expect_ids(page, ids_of(similar))
    assert source not in ids_of(similar)
    assert page_params(page)["similar"] == [source]
    banner = page.locator("#context")
    expect(banner).to_contain_text("Images similar to")
    expect(banner.locator(".image-id")).to_have_text(source)
    settle_images(page)
    page.screenshot(path=str(artifacts / "similar.png"), full_page=True)
    # When the user switches to image + text
    page.click("label[for=smode-image_text]")
    status, mixed = api_get(
        web_server,
        f"images/{source}/similar",
        [("mode", "image_text"), ("alpha", "0.50"), ("k", DEFAULT_K)],
    )
    assert status == 200, mixed
    expect_ids(page, ids_of(mixed))
    assert page_params(page)["smode"] == ["image_text"]
    # Then back and forward walk through the views
    page.go_back()
    expect_ids(page, ids_of(similar))
    page.go_back()
    expect_ids(page, ids_of(search))
    expect(page.locator("#context")).to_be_hidden()
    page.go_forward()
    expect_ids(page, ids_of(similar))
    # And the source image's details are one click away, and close back onto these results
    page.click("#context .banner-details")
    expect(page.locator("#detail")).to_have_attribute("data-image-id", source)
    expect(page.locator("#detail")).to_have_attribute("data-state", "done")
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect_ids(page, ids_of(similar))


def test_uploaded_image_finds_itself_first(page: Any, web_server: str, synth_corpus: Path) -> None:
    # Given an image of the corpus, uploaded through the file chooser
    record = read_manifest(synth_corpus)[0]
    page.goto("/")
    expect_phase(page, "intro")
    page.set_input_files("#file", record.image)
    # Then the results are its neighbours, led by the same image (its own vector, cosine 1)
    expect_phase(page, "done")
    expect(page.locator(".card").first).to_have_attribute("data-image-id", record.image_id)
    expect(page.locator("#context")).to_contain_text("Images similar to your image")
    expect(page.locator("#context .banner-thumb img")).to_be_visible()
    # When text is added and Enter pressed, the upload search becomes hybrid
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    expect(page.locator("#context")).to_contain_text(f"Hybrid with the text “{QUERY}”")
    expect_phase(page, "done")
    expect(page.locator("#status")).to_contain_text("α 0.50")
    assert page_params(page)["q"] == [QUERY]
    # When the user goes back, the image-only search returns (the file is kept in history)
    page.go_back()
    expect(page.locator("#context")).to_contain_text("Image only")
    expect_phase(page, "done")
    expect(page.locator(".card").first).to_have_attribute("data-image-id", record.image_id)


def test_copied_url_shows_the_same_results_in_a_new_tab(page: Any, web_server: str) -> None:
    # Given a search typed into the page, with a filter ticked
    page.goto("/")
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    expect_phase(page, "done")
    page.locator("fieldset.facet input[type=checkbox]").first.check()
    expect_phase(page, "done")
    shown = page.locator("#results").get_attribute("data-ids")
    assert shown
    # When its address is opened in another tab
    other = page.context.new_page()
    other.goto(page.url)
    # Then that tab shows the same results
    expect(other.locator("#results-region")).to_have_attribute("data-state", "done")
    expect(other.locator("#results")).to_have_attribute("data-ids", shown)
    other.close()


def test_dropped_image_is_searched(page: Any, web_server: str, synth_corpus: Path) -> None:
    # Given an image of the corpus dragged onto the drop zone as a file
    record = read_manifest(synth_corpus)[5]
    page.goto("/")
    expect_phase(page, "intro")
    transfer = page.evaluate_handle(
        """async (url) => {
            const blob = await (await fetch(url)).blob();
            const transfer = new DataTransfer();
            transfer.items.add(new File([blob], "dropped.png", { type: blob.type }));
            return transfer;
        }""",
        f"{web_server}/images/{record.image_id}/file",
    )
    page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": transfer})
    expect(page.locator("#dropzone")).to_have_class(re.compile("is-dragover"))
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    # Then it is searched like a chosen file: the same image comes first
    expect_phase(page, "done")
    expect(page.locator(".card").first).to_have_attribute("data-image-id", record.image_id)
    expect(page.locator("#context")).to_contain_text("dropped.png")
    expect(page.locator("#dropzone")).not_to_have_class(re.compile("is-dragover"))


def test_shared_url_reproduces_the_search(page: Any, web_server: str) -> None:
    # Given a shared link with a query, mode, alpha, page size, offset and a filter
    status, facets = api_get(web_server, "facets")
    assert status == 200 and facets, facets
    field = "modality" if "modality" in facets else next(iter(facets))
    value = max(facets[field], key=facets[field].get)
    params = [
        ("q", QUERY),
        ("mode", "hybrid"),
        ("alpha", "0.30"),
        ("k", "10"),
        ("offset", "10"),
        (field, value),
    ]
    # When it is opened directly
    page.goto("/?" + urllib.parse.urlencode(params))
    # Then the page shows what the API answers for those parameters, and the controls agree
    status, expected = api_get(web_server, "search", params)
    assert status == 200, expected
    assert expected["total"] > 10, "the filter must leave a second page"
    expect_ids(page, ids_of(expected))
    for hit in expected["results"]:
        assert hit["metadata"][field] == value
    expect(page.locator("#q")).to_have_value(QUERY)
    expect(page.locator("#mode-hybrid")).to_be_checked()
    expect(page.locator("#alpha-value")).to_have_text("0.30")
    expect(page.locator("#k")).to_have_value("10")
    shown = len(expected["results"])
    expect(page.locator("#range")).to_have_text(f"11–{10 + shown} of {expected['total']}")
    group = page.locator(f"fieldset.facet[data-field='{field}']")
    expect(group.locator(f"input[value='{value}']")).to_be_checked()


def test_paging_and_filters_follow_the_api(page: Any, web_server: str) -> None:
    # Given hybrid results, ten per page
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=hybrid&k=10")
    first = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k="10")
    expect_ids(page, ids_of(first))
    expect(page.locator("#prev")).to_be_disabled()
    # When the user goes to the next page and back
    page.click("#next")
    second = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k="10", offset="10")
    expect_ids(page, ids_of(second))
    expect(page.locator("#range")).to_have_text(f"11–20 of {second['total']}")
    assert second["total"] == first["total"]
    page.click("#prev")
    expect_ids(page, ids_of(first))
    # When the user ticks two values of one filter field
    group = page.locator("fieldset.facet").first
    field = group.get_attribute("data-field")
    boxes = group.locator("input[type=checkbox]")
    values = [boxes.nth(0).get_attribute("value"), boxes.nth(1).get_attribute("value")]
    boxes.nth(0).check()
    expect_phase(page, "done")
    page.locator(f"fieldset.facet[data-field='{field}'] input[value='{values[1]}']").check()
    # Then the results are the API's for (value 1 OR value 2), and the URL carries both
    status, filtered = api_get(
        web_server,
        "search",
        [("q", QUERY), ("mode", "hybrid"), ("alpha", "0.50"), ("k", "10")]
        + [(field, v) for v in values],
    )
    assert status == 200, filtered
    expect_ids(page, ids_of(filtered))
    assert sorted(page_params(page)[field]) == sorted(values)
    assert {hit["metadata"][field] for hit in filtered["results"]} <= set(values)
    expect(page.locator("#filter-count")).to_have_text("2 active")


def test_errors_show_the_api_message(page: Any, web_server: str) -> None:
    # Given an over-long query (the API allows 512 characters)
    long_query = "x" * 600
    status, body = api_get(web_server, "search", [("q", long_query), ("mode", "text")])
    assert status == 422
    page.goto("/")
    page.click("label[for=mode-text]")
    page.fill("#q", long_query)
    page.press("#q", "Enter")
    # Then the page shows the API's own message in an alert
    expect_phase(page, "error")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(body["error"]["message"])
    expect(page.locator(".card")).to_have_count(0)
    # And a file that is not an image shows the API's 415 message
    page.fill("#q", "")
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}]
    )
    expect_phase(page, "error")
    expect(page.get_by_role("alert")).to_contain_text("not an accepted image")
    # And an unknown image id shows the API's 404 message
    status, missing = api_get(web_server, "images/no-such-image/similar")
    assert status == 404
    page.goto("/?similar=no-such-image")
    expect_phase(page, "error")
    expect(page.get_by_role("alert")).to_contain_text(missing["error"]["message"])
    expect(page.get_by_role("alert")).to_contain_text(re.compile("not found", re.IGNORECASE))


def test_query_with_no_match_shows_the_empty_state(page: Any, web_server: str) -> None:
    # Given a text query whose terms appear in no caption
    assert search_api(web_server, q="zyxwvut", mode="text")["total"] == 0
    page.goto("/?q=zyxwvut&mode=text")
    # Then the page says so and suggests modes that also reach captionless images
    expect_phase(page, "empty")
    expect(page.locator("#message")).to_contain_text("No images found")
    expect(page.locator("#message")).to_contain_text("vector or hybrid")
    expect(page.locator("#pager")).to_be_hidden()


def test_keyboard_alone_searches_filters_and_opens_similar(page: Any, web_server: str) -> None:
    # Given the page, used with the keyboard only
    page.goto("/")
    expect_phase(page, "intro")
    # When "/" jumps to the search box, a query is typed and Enter pressed
    page.locator("body").press("/")
    expect(page.locator("#q")).to_be_focused()
    page.keyboard.type(QUERY)
    page.keyboard.press("Enter")
    expect_phase(page, "done")
    # And Space ticks a filter
    box = page.locator("fieldset.facet input[type=checkbox]").first
    field = box.evaluate("b => b.closest('fieldset').dataset.field")
    value = box.get_attribute("value")
    box.focus()
    page.keyboard.press("Space")
    # Then the filter applies and focus stays on that box for the next key
    expect_phase(page, "done")
    assert page_params(page)[field] == [value]
    focused = page.locator("fieldset.facet input[type=checkbox]:focus")
    expect(focused).to_have_attribute("value", value)
    expect(focused).to_be_checked()
    # When Enter is pressed on the first result, then on "Find similar images" in its detail
    first = page.locator(".card").first.get_attribute("data-image-id")
    page.locator(".card-link").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_have_attribute("data-state", "done")
    page.locator("#similar-image").focus()
    page.keyboard.press("Enter")
    # Then its similar images open
    expect(page.locator("#detail")).to_be_hidden()
    expect_phase(page, "done")
    expect(page.locator("#context .image-id")).to_have_text(first)


def test_page_hosted_apart_from_the_api_uses_config_json(
    browser: Any, static_site: tuple[str, str]
) -> None:
    # Given the same files on a plain static host whose config.json names the API elsewhere
    site, api = static_site
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        # When a search is opened there
        page.goto(f"{site}/?q={urllib.parse.quote(QUERY)}&mode=hybrid")
        # Then the page calls that API (cross-origin) and shows its results and thumbnails
        expected = search_api(api, q=QUERY, mode="hybrid", alpha="0.50", k=DEFAULT_K)
        expect_ids(page, ids_of(expected))
        first_img = page.locator(".card img").first
        expect(first_img).to_have_attribute("src", re.compile("^" + re.escape(api)))
        expect(first_img).to_have_js_property("complete", True)
        assert first_img.evaluate("img => img.naturalWidth") > 0
        expect(page.locator("fieldset.facet").first).to_be_visible()
    finally:
        context.close()
    assert not errors, errors


def test_query_typed_while_the_page_starts_is_kept(page: Any) -> None:
    # Given a page whose config.json has not arrived yet (the request is held)
    held: list[Any] = []
    page.route("**/config.json", lambda route: held.append(route))
    page.goto("/")
    # When the user types before the page has started, and the page then starts
    page.fill("#q", QUERY)
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator("#health")).not_to_be_empty()  # written once start-up is done
    # Then the typed query is still there, and Enter searches for it
    expect(page.locator("#q")).to_have_value(QUERY)
    page.press("#q", "Enter")
    expect_phase(page, "done")
    assert page_params(page)["q"] == [QUERY]


def test_a_total_counted_to_a_bound_shows_as_a_lower_bound(page: Any, web_server: str) -> None:
    # Given an engine that stopped counting at 10,000 (OpenSearch's bound: total_relation gte)
    def bounded(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body.update(total=10_000, total_relation="gte")
        route.fulfill(response=response, json=body)

    page.route(re.compile(r".*/search\?.*"), bounded)
    # When a text search is shown
    page.goto("/")
    page.click("label[for=mode-text]")
    page.fill("#q", "fracture")
    page.press("#q", "Enter")
    expect_phase(page, "done")
    # Then the page says "10,000+", not a false exact number, and paging stays open
    expect(page.locator("#status")).to_contain_text("of 10,000+")
    expect(page.locator("#range")).to_contain_text("of 10,000+")
    expect(page.locator("#next")).to_be_enabled()
