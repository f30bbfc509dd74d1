"""Relevance honesty in a real browser: the caption words the query matched are marked (as text,
never parsed markup), and a query nothing matches well says so, its weak hits badged.

Every mark and badge is checked against the API's own answer for the same request.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from test_page import DEFAULT_K, QUERY, expect_ids, ids_of, search_api, settle_images

pytestmark = pytest.mark.slow

NONSENSE = "zzzqqq"


def test_given_a_text_search_when_results_show_then_the_matched_caption_words_are_marked(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given a text search
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=text")
    expected = search_api(web_server, q=QUERY, mode="text", k=DEFAULT_K)
    expect_ids(page, ids_of(expected))
    # Then each card's caption reads as the API's caption, and its <mark> elements are exactly
    # the API's highlight spans (code points), in order
    cards = page.locator(".card")
    marked = 0
    for i, hit in enumerate(expected["results"]):
        caption = cards.nth(i).locator(".caption")
        expect(caption).to_have_text(hit["caption"])
        chars = list(hit["caption"])
        want = ["".join(chars[start:end]) for start, end in hit["highlights"]]
        assert want, hit  # a text match has at least one matched word
        assert caption.locator("mark").all_text_contents() == want
        marked += len(want)
    assert marked >= len(expected["results"])
    settle_images(page)
    page.screenshot(path=str(artifacts / "relevance-highlights.png"), full_page=True)


def test_given_a_caption_with_markup_when_highlighted_then_it_stays_text(
    page: Any, web_server: str
) -> None:
    # Given an answer whose first caption looks like HTML, highlighted inside and outside the
    # "tag" (the real API's answer, that one caption replaced on the way to the page)
    caption = '<img src=x onerror="window.pwned=1"> nodule'
    spans = [[1, 4], [caption.index("nodule"), len(caption)]]

    def rewrite(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["results"][0].update(caption=caption, highlights=spans)
        route.fulfill(response=response, json=body)

    page.route("**/search?*", rewrite)
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=text")
    first = page.locator(".card").first.locator(".caption")
    # Then the caption is that text, its marks are text, and no element came from it
    expect(first).to_have_text(caption)
    assert first.locator("mark").all_text_contents() == ["img", "nodule"]
    assert first.locator("img").count() == 0
    assert page.evaluate("() => window.pwned") is None


def test_given_a_nonsense_query_when_searched_by_vector_then_the_page_says_nothing_matches_well(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given the API's answer to a query no image is like (the fixture's random-init model has
    # no meaningful floor, so the answer is marked as a calibrated index marks it: every hit
    # below the floor, no match, best_match "weak"; tests/medsearch/api/test_search_relevance.py
    # checks that the service answers so)
    expected = search_api(web_server, q=NONSENSE, mode="hybrid", alpha="0.50", k=DEFAULT_K)
    assert all(hit["bm25_score"] is None for hit in expected["results"])

    def weak(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body.update(total=0, total_relation="eq", best_match="weak", vector_floor=0.99)
        for hit in body["results"]:
            hit["low_confidence"] = True
        route.fulfill(response=response, json=body)

    page.route("**/search?*", weak)
    page.goto(f"/?q={NONSENSE}&mode=hybrid")
    expect_ids(page, ids_of(expected))
    # Then the notice says nothing matches well, every card is badged a weak match, the status
    # counts no match, and there is no next page of matches
    expect(page.locator("#notice .notice-weak")).to_contain_text("Nothing matches well")
    expect(page.locator(".card.low-confidence")).to_have_count(len(expected["results"]))
    expect(page.locator(".card .badge-weak").first).to_have_text("Weak match")
    expect(page.locator("#status")).to_contain_text("no good match")
    expect(page.locator("#next")).to_be_disabled()
    settle_images(page)
    page.screenshot(path=str(artifacts / "relevance-nothing-matches-well.png"), full_page=True)
