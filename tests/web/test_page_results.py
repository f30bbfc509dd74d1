"""The results area in a real browser against the real app: why each hit matched, the active
filters, page numbers, and what the page says about the quality of a whole page of results.

Every number the page draws is checked against the API's own answer for the same request.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
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

from medsearch.data.manifest import read_manifest

pytestmark = pytest.mark.slow


def test_given_a_hybrid_search_when_results_show_then_each_card_meters_its_text_and_vector_match(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given a hybrid search at alpha 0.3
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=hybrid&alpha=0.30")
    expected = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.30", k=DEFAULT_K)
    expect_ids(page, ids_of(expected))
    hits = expected["results"]
    # Then every card has a text and a vector meter filled by the parts fusion summed (the API's
    # text_part and vector_part), marked empty where the hit is not in that list, labelled with
    # its weight, and the vector fill starts where the text fill ends: together, the score.
    cards = page.locator(".card")
    for i, hit in enumerate(hits):
        text = cards.nth(i).locator(".why-text")
        vector = cards.nth(i).locator(".why-vector")
        expect(text.locator(".why-label")).to_have_text("Text ×0.70")
        expect(vector.locator(".why-label")).to_have_text("Vector ×0.30")
        bm25, cosine = hit["bm25_score"], hit["vector_score"]
        text_part, vector_part = hit["text_part"], hit["vector_part"]
        assert text_part + vector_part == pytest.approx(hit["score"], abs=1e-9)
        if bm25 is None:
            expect(text).to_have_attribute("data-matched", "false")
            expect(text.locator(".why-value")).to_have_text("+0")
        else:
            expect(text).to_have_attribute("data-matched", "true")
            expect(text.locator("[role=meter]")).to_have_attribute(
                "aria-valuenow", str(round(text_part * 100))
            )
            expect(text.locator(".why-value")).to_have_text(f"+{text_part:.3f}")
        if cosine is None:
            expect(vector).to_have_attribute("data-matched", "false")
        else:
            expect(vector.locator("[role=meter]")).to_have_attribute(
                "aria-valuenow", str(round(vector_part * 100))
            )
            bar = vector.locator(".why-bar").bounding_box()
            fill = vector.locator(".why-fill").bounding_box()
            assert bar is not None and fill is not None
            end = (fill["x"] + fill["width"] - bar["x"]) / bar["width"]
            assert end == pytest.approx(hit["score"], abs=0.02)
    settle_images(page)
    page.screenshot(path=str(artifacts / "results-why-it-matched.png"), full_page=True)
    # When the same query runs in text mode, there is nothing fused to explain: no meters
    page.click("label[for=mode-text]")
    expect_ids(page, ids_of(search_api(web_server, q=QUERY, mode="text", k=DEFAULT_K)))
    expect(page.locator(".card .why")).to_have_count(0)
    expect(page.locator(".card").first.locator(".components")).to_contain_text("BM25")


def test_given_active_filters_when_a_chip_is_removed_then_that_filter_is_dropped(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given a search with two filter values on one field and one on another
    status, facets = api_get(web_server, "facets")
    assert status == 200, facets
    fields = [field for field, values in facets.items() if len(values) >= 2]
    assert len(fields) >= 2, facets
    first, second = fields[0], fields[1]
    values = sorted(facets[first], key=facets[first].get, reverse=True)[:2]
    other = max(facets[second], key=facets[second].get)
    params = [("q", QUERY), ("mode", "text")] + [(first, v) for v in values] + [(second, other)]
    page.goto("/?" + urllib.parse.urlencode(params))
    expect_phase(page, "done")
    # Then each active value is a removable chip above the results, with "Clear all"
    chips = page.locator("#active-filters .filter-chip")
    expect(chips).to_have_count(3)
    expect(page.locator("#active-filters")).to_contain_text("Clear all")
    chip = page.get_by_role(
        "button", name=f"Remove filter {first.replace('_', ' ').capitalize()}: {values[0]}"
    )
    expect(chip).to_be_visible()
    page.screenshot(path=str(artifacts / "results-filter-chips.png"))
    # When the chip of the first value is clicked
    chip.click()
    # Then that value is gone from the URL, the boxes and the results; the others stay
    expected_params = [("q", QUERY), ("mode", "text"), (first, values[1]), (second, other)]
    status, expected = api_get(web_server, "search", [*expected_params, ("k", DEFAULT_K)])
    assert status == 200, expected
    if expected["total"]:
        expect_ids(page, ids_of(expected))
    else:
        expect_phase(page, "empty")
    assert page_params(page)[first] == [values[1]]
    assert page_params(page)[second] == [other]
    expect(chips).to_have_count(2)
    group = page.locator(f"fieldset.facet[data-field='{first}']")
    expect(group.locator(f"input[value='{values[0]}']")).not_to_be_checked()
    expect(chips.first).to_be_focused()
    # When "Clear all" is clicked, then no filter is left
    page.get_by_role("button", name="Clear all", exact=True).click()
    expect(page.locator("#active-filters")).to_be_hidden()
    assert first not in page_params(page) and second not in page_params(page)


def test_given_many_results_when_a_page_number_is_clicked_then_that_page_shows(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given hybrid results, ten per page, spanning several pages
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=hybrid&k=10")
    first = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k="10")
    expect_ids(page, ids_of(first))
    pages = math.ceil(first["total"] / 10)
    assert pages >= 4, first["total"]
    # Then the pager numbers the first pages and the last one, the current one marked
    expect(page.get_by_role("button", name="Page 1", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    expect(page.get_by_role("button", name=f"Page {pages}", exact=True)).to_be_visible()
    # When page 3 is clicked
    page.get_by_role("button", name="Page 3", exact=True).click()
    # Then the API's third page shows, and page 3 is the current one
    third = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k="10", offset="20")
    expect_ids(page, ids_of(third))
    assert page_params(page)["offset"] == ["20"]
    expect(page.get_by_role("button", name="Page 3", exact=True)).to_have_attribute(
        "aria-current", "page"
    )
    expect(page.get_by_role("button", name="Page 1", exact=True)).not_to_have_attribute(
        "aria-current", "page"
    )
    expect(page.locator("#range")).to_have_text(
        f"21–{20 + len(third['results'])} of {first['total']}"
    )
    page.locator("#pager").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "results-page-numbers.png"))
    # When the last page number is clicked, then the last page shows and Next is off
    page.get_by_role("button", name=f"Page {pages}", exact=True).click()
    last = search_api(
        web_server, q=QUERY, mode="hybrid", alpha="0.50", k="10", offset=str((pages - 1) * 10)
    )
    expect_ids(page, ids_of(last))
    expect(page.locator("#next")).to_be_disabled()


def test_given_a_total_that_is_a_lower_bound_when_shown_then_pages_stay_open_past_the_count(
    page: Any, artifacts: Path
) -> None:
    # Given an engine that stopped counting (total_relation gte) at 30
    def bounded(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body.update(total=30, total_relation="gte")
        route.fulfill(response=response, json=body)

    page.route(re.compile(r".*/search\?.*"), bounded)
    # When a search of ten per page is shown
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=text&k=10")
    expect_phase(page, "done")
    # Then the status says the total is a lower bound, and the pager does not claim a last page
    expect(page.locator("#status")).to_contain_text("of 30+ (at least")
    expect(page.locator("#pages .page-gap").last).to_be_visible()
    expect(page.get_by_role("button", name="Page 3", exact=True)).to_be_visible()
    page.screenshot(path=str(artifacts / "results-lower-bound-total.png"))


def test_given_no_caption_matches_a_hybrid_query_when_shown_then_results_are_called_vector_only(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given a hybrid query whose words are in no caption (BM25 finds nothing)
    expected = search_api(web_server, q="zyxwvut", mode="hybrid", alpha="0.50", k=DEFAULT_K)
    assert expected["results"] and all(h["bm25_score"] is None for h in expected["results"])
    # When it is shown
    page.goto("/?q=zyxwvut&mode=hybrid")
    expect_ids(page, ids_of(expected))
    # Then the page warns that these are vector neighbours only, which may not match well
    notice = page.locator("#notice")
    expect(notice).to_be_visible()
    expect(notice.locator(".notice-weak")).to_contain_text("No caption contains the words")
    expect(page.locator(".why-text[data-matched=true]")).to_have_count(0)
    settle_images(page)
    page.screenshot(path=str(artifacts / "results-nothing-matches-well.png"), full_page=True)
    # When a query that captions do contain is searched, the warning goes
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    expect_ids(
        page, ids_of(search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k=DEFAULT_K))
    )
    expect(page.locator("#notice .notice-weak")).to_have_count(0)


def test_given_a_corpus_image_when_uploaded_then_the_page_says_it_is_already_in_the_collection(
    page: Any, web_server: str, synth_corpus: Path, artifacts: Path
) -> None:
    # Given an image of the collection, uploaded
    record = read_manifest(synth_corpus)[2]
    page.goto("/")
    expect_phase(page, "intro")
    page.set_input_files("#file", record.image)
    # Then its own vector leads the results (cosine about 1), and the page says so with a link
    expect_phase(page, "done")
    expect(page.locator(".card").first).to_have_attribute("data-image-id", record.image_id)
    duplicate = page.locator("#notice .notice-duplicate")
    expect(duplicate).to_contain_text("already in the collection")
    expect(duplicate.locator("a")).to_have_text(record.image_id)
    settle_images(page)
    page.screenshot(path=str(artifacts / "upload-already-in-collection.png"), full_page=True)
    # When the link is followed, then that image's detail opens
    duplicate.locator("a").click()
    expect(page.locator("#detail")).to_have_attribute("data-image-id", record.image_id)
    expect(page.locator("#detail")).to_have_attribute("data-state", "done")


def test_given_an_upload_not_in_the_collection_when_shown_then_no_duplicate_is_claimed(
    page: Any, web_server: str, synth_corpus: Path, artifacts: Path
) -> None:
    # Given an upload whose best cosine is 0.98 (close, but under the 0.995 of the same picture):
    # the API's real answer for the file, with the top cosine lowered (the browser's multipart
    # body cannot be replayed by a route, so the answer is fetched here)
    import httpx

    record = read_manifest(synth_corpus)[2]
    answer = httpx.post(
        f"{web_server}/search/image",
        params={"k": DEFAULT_K, "offset": "0"},
        files={"file": (Path(record.image).name, Path(record.image).read_bytes())},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["results"][0]["image_id"] == record.image_id
    assert body["results"][0]["vector_score"] >= 0.995
    body["results"][0]["vector_score"] = 0.98
    page.route(re.compile(r".*/search/image.*"), lambda route: route.fulfill(json=body))
    page.goto("/")
    expect_phase(page, "intro")
    # When it is shown
    page.set_input_files("#file", record.image)
    expect_phase(page, "done")
    # Then the page claims no duplicate
    expect(page.locator(".card").first).to_have_attribute("data-image-id", record.image_id)
    expect(page.locator("#notice .notice-duplicate")).to_have_count(0)
    page.screenshot(path=str(artifacts / "upload-not-a-duplicate.png"))
