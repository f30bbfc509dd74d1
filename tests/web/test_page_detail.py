"""The image detail view and the image id search, in a real browser against the real app.

What the detail shows is compared with the API's own record (GET /images/{id}); the results
it steps through and the similar images it opens are compared with the API's answers.
"""

from __future__ import annotations

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

pytestmark = pytest.mark.slow


def record_of(base: str, image_id: str) -> dict[str, Any]:
    """The API's record of one image (it must exist)."""
    status, record = api_get(base, f"images/{image_id}")
    assert status == 200, record
    return record


def expect_detail(page: Any, image_id: str) -> None:
    """Wait until the detail dialog shows the loaded record of ``image_id``."""
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    expect(detail).to_have_attribute("data-image-id", image_id)
    expect(detail).to_have_attribute("data-state", "done")


def test_given_results_when_a_result_is_clicked_then_its_detail_shows_the_full_record(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given hybrid results whose first hit's caption the API cut short (as it does past 1000
    # characters: caption_truncated), so the full caption is only in the image's record
    def cut_first_caption(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        first = body["results"][0]
        if first["caption"]:
            first["caption"] = first["caption"][:8] + "…"
            first["caption_truncated"] = True
        route.fulfill(response=response, json=body)

    page.route(re.compile(r".*/search\?.*"), cut_first_caption)
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=hybrid")
    expected = search_api(web_server, q=QUERY, mode="hybrid", alpha="0.50", k=DEFAULT_K)
    expect_ids(page, ids_of(expected))
    first = expected["results"][0]["image_id"]
    record = record_of(web_server, first)
    assert record["caption"] and len(record["caption"]) > 9, record
    # When the first result is clicked
    page.locator(".card-link").first.click()
    # Then its detail opens at its own URL with the record's full caption and every field
    expect_detail(page, first)
    assert page_params(page)["image"] == [first]
    expect(page.locator("#detail-caption")).to_have_text(record["caption"])
    expect(page.locator("#detail-id")).to_have_text(first)
    for field, value in record["metadata"].items():
        expect(page.locator(f"#detail-meta dd[data-field='{field}']")).to_have_text(str(value))
    expect(page.locator("#detail-meta dd")).to_have_count(len(record["metadata"]) + 1)
    expect(page.locator("#detail-position")).to_have_text(f"1 of {expected['total']}")
    # And the image is the full file, downloadable, and "Full size" shows it pixel for pixel
    image = page.locator("#detail-img")
    expect(image).to_have_js_property("complete", True)
    natural = image.evaluate("img => img.naturalWidth")
    assert natural > 0
    expect(page.locator("#detail-size")).to_contain_text(f"{natural} ×")
    expect(page.locator("#download")).to_have_attribute(
        "href", re.compile(rf"/images/{re.escape(first)}/file$")
    )
    expect(page.locator("#download")).to_have_attribute("download", first)
    page.click("#detail-zoom")
    expect(page.locator("#detail-zoom")).to_have_attribute("aria-pressed", "true")
    assert image.evaluate("img => img.getBoundingClientRect().width") == pytest.approx(natural)
    page.click("#detail-zoom")
    expect(page.locator("#detail-zoom")).to_have_attribute("aria-pressed", "false")
    # And the meters say why it matched (its text and vector parts)
    expect(page.locator("#detail-why .why-row")).to_have_count(2)
    page.screenshot(path=str(artifacts / "detail-full-record.png"))


def test_given_an_image_link_when_opened_directly_then_the_detail_shows_and_esc_closes_it(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given a shared link to one image
    status, vector_page = api_get(web_server, "search", [("q", QUERY), ("mode", "vector")])
    assert status == 200, vector_page
    image_id = vector_page["results"][3]["image_id"]
    record = record_of(web_server, image_id)
    # When it is opened in a fresh tab
    page.goto(f"/?image={image_id}")
    # Then the detail shows that image's record, over the empty page
    expect_detail(page, image_id)
    expect(page.locator("#detail-caption")).to_have_text(record["caption"] or "No caption")
    expect(page.locator("#detail-title")).to_have_text(f"Image {image_id}")
    expect(page.locator("#detail-close")).to_be_focused()
    settle_images(page)
    page.screenshot(path=str(artifacts / "detail-opened-from-link.png"))
    # When Esc is pressed
    page.keyboard.press("Escape")
    # Then it closes, and the URL no longer names the image
    expect(page.locator("#detail")).to_be_hidden()
    expect(page.locator("#detail")).to_have_attribute("data-state", "closed")
    assert "image" not in page_params(page)
    expect_phase(page, "intro")


def test_given_an_open_detail_when_arrow_keys_are_pressed_then_it_steps_through_the_results(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given text results, the second one's detail open
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=text&k=10")
    expected = search_api(web_server, q=QUERY, mode="text", k="10")
    ids = ids_of(expected)
    assert len(ids) >= 3
    expect_ids(page, ids)
    page.locator(".card-link").nth(1).click()
    expect_detail(page, ids[1])
    # When the right arrow is pressed, then the left arrow twice
    page.keyboard.press("ArrowRight")
    # Then the detail moves to the next result, then back, and stops at the first
    expect_detail(page, ids[2])
    assert page_params(page)["image"] == [ids[2]]
    expect(page.locator("#detail-position")).to_have_text(f"3 of {expected['total']}")
    page.keyboard.press("ArrowLeft")
    expect_detail(page, ids[1])
    page.keyboard.press("ArrowLeft")
    expect_detail(page, ids[0])
    expect(page.locator("#detail-prev")).to_be_disabled()
    page.keyboard.press("ArrowLeft")
    expect_detail(page, ids[0])
    expect(page.locator("#detail-caption")).to_have_text(record_of(web_server, ids[0])["caption"])
    page.screenshot(path=str(artifacts / "detail-stepped-with-arrows.png"))
    # When Esc closes it, focus returns to the card now shown, and the results never reloaded
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(page.locator(".card-link").first).to_be_focused()
    expect_ids(page, ids)


def test_given_an_open_detail_when_the_copy_buttons_are_used_then_the_clipboard_holds_id_and_link(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given a detail open from a search, with clipboard access granted
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web_server)
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=text")
    expect_phase(page, "done")
    image_id = page.locator(".card").first.get_attribute("data-image-id")
    page.locator(".card-link").first.click()
    expect_detail(page, image_id)
    # When "Copy id" is clicked, then the clipboard holds the id
    page.click("#copy-id")
    expect(page.locator("#copy-status")).to_have_text("Image id copied.")
    assert page.evaluate("navigator.clipboard.readText()") == image_id
    # When "Copy link" is clicked, then the clipboard holds a link that opens this image
    page.click("#copy-link")
    expect(page.locator("#copy-status")).to_have_text("Link copied.")
    link = page.evaluate("navigator.clipboard.readText()")
    assert link == f"{web_server}/?image={image_id}"
    page.screenshot(path=str(artifacts / "detail-copied-link.png"))
    other = page.context.new_page()
    other.goto(link)
    expect(other.locator("#detail")).to_have_attribute("data-image-id", image_id)
    expect(other.locator("#detail")).to_have_attribute("data-state", "done")
    other.close()


def test_given_an_open_detail_when_similar_by_image_and_caption_then_the_api_neighbours_show(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given the detail of an image opened from its link
    status, text_page = api_get(web_server, "search", [("q", QUERY), ("mode", "text")])
    assert status == 200, text_page
    image_id = text_page["results"][0]["image_id"]
    page.goto(f"/?image={image_id}")
    expect_detail(page, image_id)
    # When "Similar by image + caption" is clicked
    page.click("#similar-image-text")
    # Then the detail closes and the grid shows the API's image + caption neighbours
    status, similar = api_get(
        web_server,
        f"images/{image_id}/similar",
        [("mode", "image_text"), ("alpha", "0.50"), ("k", DEFAULT_K)],
    )
    assert status == 200, similar
    expect(page.locator("#detail")).to_be_hidden()
    expect_ids(page, ids_of(similar))
    params = page_params(page)
    assert params["similar"] == [image_id] and params["smode"] == ["image_text"]
    assert "image" not in params
    expect(page.locator("#context .image-id")).to_have_text(image_id)
    settle_images(page)
    page.screenshot(path=str(artifacts / "detail-find-similar-image-text.png"), full_page=True)


def test_given_an_unknown_image_link_when_opened_then_the_detail_shows_the_api_404(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given a link to an image id the index does not hold
    status, missing = api_get(web_server, "images/no-such-image")
    assert status == 404
    # When it is opened
    page.goto("/?image=no-such-image")
    # Then the detail says so with the API's message, and offers nothing to download
    detail = page.locator("#detail")
    expect(detail).to_have_attribute("data-state", "error")
    expect(detail.get_by_role("alert")).to_contain_text("Image not found")
    expect(detail.get_by_role("alert")).to_contain_text(missing["error"]["message"])
    page.screenshot(path=str(artifacts / "detail-unknown-image.png"))


def test_given_an_image_id_when_typed_in_the_id_box_then_its_similar_images_show(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given the empty page and an indexed image's id
    status, text_page = api_get(web_server, "search", [("q", QUERY), ("mode", "text")])
    assert status == 200, text_page
    image_id = text_page["results"][2]["image_id"]
    page.goto("/")
    expect_phase(page, "intro")
    # When the id is typed into the image id box and Enter pressed
    page.fill("#image-ref", image_id)
    page.press("#image-ref", "Enter")
    # Then the grid shows the API's nearest images of it
    status, similar = api_get(
        web_server, f"images/{image_id}/similar", [("mode", "image"), ("k", DEFAULT_K)]
    )
    assert status == 200, similar
    expect_ids(page, ids_of(similar))
    assert page_params(page)["similar"] == [image_id]
    assert "q" not in page_params(page)
    settle_images(page)
    page.screenshot(path=str(artifacts / "id-search-typed-id.png"), full_page=True)


def test_given_a_link_to_a_corpus_image_when_pasted_in_the_id_box_then_its_id_is_searched(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given the address of an indexed image's file, as copied from a browser
    status, text_page = api_get(web_server, "search", [("q", QUERY), ("mode", "text")])
    assert status == 200, text_page
    image_id = text_page["results"][1]["image_id"]
    page.goto("/")
    expect_phase(page, "intro")
    # When it is pasted into the image id box and "Find similar" clicked
    page.fill("#image-ref", f"{web_server}/images/{image_id}/file")
    page.click("#image-ref-go")
    # Then the image's similar images show
    status, similar = api_get(
        web_server, f"images/{image_id}/similar", [("mode", "image"), ("k", DEFAULT_K)]
    )
    assert status == 200, similar
    expect_ids(page, ids_of(similar))
    assert page_params(page)["similar"] == [image_id]
    # And a page link to an image (?image=ID) works the same way
    other = text_page["results"][0]["image_id"]
    page.fill("#image-ref", f"{web_server}/?image={other}")
    page.press("#image-ref", "Enter")
    expect(page.locator("#context .image-id")).to_have_text(other)
    assert page_params(page)["similar"] == [other]
    page.screenshot(path=str(artifacts / "id-search-pasted-link.png"))


def test_given_text_that_is_no_image_id_when_searched_in_the_id_box_then_it_says_why(
    page: Any, artifacts: Path
) -> None:
    # Given the empty page
    page.goto("/")
    expect_phase(page, "intro")
    # When something that is neither an id nor an image link is entered
    page.fill("#image-ref", "not an id!")
    page.press("#image-ref", "Enter")
    # Then the box is marked invalid with the rule, and no search ran
    expect(page.locator("#image-ref-error")).to_be_visible()
    expect(page.locator("#image-ref-error")).to_contain_text("1–128 characters")
    expect(page.locator("#image-ref")).to_have_attribute("aria-invalid", "true")
    expect_phase(page, "intro")
    assert "similar" not in page_params(page)
    page.screenshot(path=str(artifacts / "id-search-invalid.png"))


def test_given_the_last_result_of_a_page_open_when_right_arrow_is_pressed_then_the_next_page_opens(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given text results ten per page, the detail of the page's last result open
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=text&k=10")
    first_page = search_api(web_server, q=QUERY, mode="text", k="10")
    second_page = search_api(web_server, q=QUERY, mode="text", k="10", offset="10")
    assert len(first_page["results"]) == 10 and second_page["results"]
    expect_ids(page, ids_of(first_page))
    page.locator(".card-link").nth(9).click()
    expect_detail(page, first_page["results"][9]["image_id"])
    # When the right arrow is pressed
    page.keyboard.press("ArrowRight")
    # Then the second page loads behind the detail, which shows its first result
    expect_ids(page, ids_of(second_page))
    expect_detail(page, second_page["results"][0]["image_id"])
    params = page_params(page)
    assert params["offset"] == ["10"] and params["image"] == [second_page["results"][0]["image_id"]]
    expect(page.locator("#detail-position")).to_have_text(f"11 of {first_page['total']}")
    page.screenshot(path=str(artifacts / "detail-stepped-to-next-page.png"))
    # When the left arrow is pressed, then the first page's last result is back
    page.keyboard.press("ArrowLeft")
    expect_ids(page, ids_of(first_page))
    expect_detail(page, first_page["results"][9]["image_id"])


def test_given_a_link_to_a_corpus_image_when_pasted_in_the_search_box_then_similar_images_show(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given the page link of an indexed image (as "Copy link" gives it)
    status, text_page = api_get(web_server, "search", [("q", QUERY), ("mode", "text")])
    assert status == 200, text_page
    image_id = text_page["results"][4]["image_id"]
    page.goto("/")
    expect_phase(page, "intro")
    # When it is pasted into the main search box and Enter pressed
    page.fill("#q", f"{web_server}/?image={image_id}")
    page.press("#q", "Enter")
    # Then the page searches images similar to it, not the link's text
    status, similar = api_get(
        web_server, f"images/{image_id}/similar", [("mode", "image"), ("k", DEFAULT_K)]
    )
    assert status == 200, similar
    expect_ids(page, ids_of(similar))
    assert page_params(page)["similar"] == [image_id]
    assert "q" not in page_params(page)
    expect(page.locator("#q")).to_have_value("")
    page.screenshot(path=str(artifacts / "id-search-link-in-search-box.png"))


def test_given_a_focused_result_when_arrow_keys_are_pressed_then_focus_moves_through_the_grid(
    page: Any, web_server: str, artifacts: Path
) -> None:
    # Given text results with the keyboard on the first card
    page.goto(f"/?q={urllib.parse.quote(QUERY)}&mode=text")
    expected = search_api(web_server, q=QUERY, mode="text", k=DEFAULT_K)
    ids = ids_of(expected)
    expect_ids(page, ids)
    per_row = page.evaluate(
        """() => { const cards = [...document.querySelectorAll('#results .card')];
                   return cards.filter((c) => c.offsetTop === cards[0].offsetTop).length; }"""
    )
    assert 1 < per_row < len(ids)
    page.locator(".card-link").first.focus()

    def focused_id() -> str:
        return page.evaluate("document.activeElement.closest('.card').dataset.imageId")

    # When right, down, left and up are pressed
    page.keyboard.press("ArrowRight")
    # Then focus walks the grid: one card right, a row down, one left, a row up
    assert focused_id() == ids[1]
    page.keyboard.press("ArrowDown")
    assert focused_id() == ids[1 + per_row]
    page.keyboard.press("ArrowLeft")
    assert focused_id() == ids[per_row]
    page.keyboard.press("ArrowUp")
    assert focused_id() == ids[0]
    page.keyboard.press("ArrowLeft")
    assert focused_id() == ids[0]
    page.screenshot(path=str(artifacts / "results-keyboard-focus.png"))
    # When Enter is pressed, the focused result's detail opens
    page.keyboard.press("Enter")
    expect_detail(page, ids[0])
