"""The search page in a real headless Chromium (Debian's ``chromium`` driven by Playwright).

Screenshots go to ``$ALTCLIP_SCREENSHOTS`` when set (CI keeps them), else to the test's temporary folder.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from altclip.serve import ServeConfig, create_app
from tests.serve.conftest import running

ALL_THUMBNAILS_LOADED = (  # of the search just made: the grid is busy from the request until it is redrawn
    "() => { const images = [...document.querySelectorAll('#results img')];"
    " return !document.querySelector('#results').hasAttribute('aria-busy')"
    " && images.length > 0 && images.every((i) => i.src && i.complete && i.naturalWidth > 0); }"
)


@pytest.fixture
def page(browser: Browser, live_server: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(live_server)
    expect(page.locator("#status")).to_contain_text("images ready to search")
    yield page
    context.close()


def names(page: Page) -> list[str]:
    return page.locator("#results .name").all_inner_texts()


def test_a_chinese_query_shows_thumbnails(page: Page, screenshots: Path):
    page.fill("#query", "一个红色的圆形")
    page.press("#query", "Enter")
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    assert page.locator("#results img").count() == 15  # k defaults to 24; the index has 15
    expect(page.locator("#status")).to_contain_text("15 results “一个红色的圆形” in photos")
    scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    widths = page.eval_on_selector_all("#results img", "images => images.map((i) => i.naturalWidth)")
    assert set(widths) == {256}  # 400 x 300 photos, thumbnails of 256 x 192
    page.screenshot(path=str(screenshots / "search-chinese.png"), full_page=True)


def test_search_by_uploaded_image(page: Page, photo_folder: Path, screenshots: Path):
    page.set_input_files("#image-input", str(photo_folder / "yellow-square.jpg"))
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    assert names(page)[0] == "yellow-square.jpg"
    expect(page.locator("#status")).to_contain_text("by the image yellow-square.jpg")
    shot = screenshots / "search-by-image.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_search_by_a_dropped_image(page: Page, photo_folder: Path):
    data = base64.b64encode((photo_folder / "blue-circle.jpg").read_bytes()).decode()
    transfer = page.evaluate_handle(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
            return transfer;
        }""",
        data,
    )
    page.dispatch_event("main", "drop", {"dataTransfer": transfer})
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    assert names(page)[0] == "blue-circle.jpg"


def test_full_image_and_more_like_this(page: Page):
    page.fill("#query", "green triangle")
    page.press("#query", "Enter")
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    third = names(page)[2]
    page.locator("#results .card").nth(2).click()
    expect(page.locator("#viewer")).to_be_visible()
    page.wait_for_function("() => document.querySelector('#viewer-image').naturalWidth === 400")
    expect(page.locator("#viewer-caption")).to_contain_text(third)
    page.click("#more-like-this")
    expect(page.locator("#viewer")).to_be_hidden()
    expect(page.locator("#status")).to_contain_text(f"like {third}")
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    assert names(page)[0] in {third, third.replace(".jpg", "-copy.jpg"), third.replace("-copy", "")}


def test_why_toggle_draws_the_map_of_the_query(page: Page, screenshots: Path):
    page.fill("#query", "red circle")
    page.press("#query", "Enter")
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    first_image = "document.querySelector('#results img')"
    thumbnail = page.evaluate(f"{first_image}.src")
    why = page.locator("#results .why").first
    expect(why).to_have_attribute("aria-pressed", "false")
    why.click()
    expect(why).to_have_attribute("aria-pressed", "true")
    page.wait_for_function(f"() => {first_image}.src.startsWith('blob:') && {first_image}.complete")
    assert page.evaluate(f"{first_image}.naturalWidth") == 256  # the map over the 256 x 192 thumbnail
    page.screenshot(path=str(screenshots / "why.png"))
    why.click()
    expect(why).to_have_attribute("aria-pressed", "false")
    assert page.evaluate(f"{first_image}.src") == thumbnail
    page.locator("#results .card").first.click()  # the card still opens the viewer
    expect(page.locator("#viewer")).to_be_visible()


def test_k_dedup_and_the_index_picker(page: Page):
    expect(page.locator("#index-label")).to_be_visible()  # two indexes
    page.fill("#k", "15")
    page.check("#dedup")
    page.fill("#query", "red circle")
    page.press("#query", "Enter")
    expect(page.locator("#status")).to_contain_text("near-duplicates hidden")
    deduped = page.locator("#results .card").count()
    assert deduped < 15
    page.uncheck("#dedup")
    page.fill("#k", "3")
    page.select_option("#index", "mixed")
    page.press("#query", "Enter")
    expect(page.locator("#status")).to_contain_text("3 results “red circle” in mixed")
    sources = page.eval_on_selector_all("#results img", "images => images.map((i) => i.getAttribute('src'))")
    assert all(src.startswith("/api/thumbnail/mixed/") for src in sources)


def test_zero_shot_panel(page: Page, photo_folder: Path, screenshots: Path):
    page.click("#zeroshot summary")
    page.set_input_files("#classify-image", str(photo_folder / "red-square.jpg"))
    page.fill("#labels", "红色方形\n蓝色圆形，绿色三角形")
    page.select_option("#lang", "zh")
    page.click("#classify-form button[type=submit]")
    expect(page.locator("#predictions li")).to_have_count(3)
    percents = [float(t.strip().rstrip("%")) for t in page.locator("#predictions .score").all_inner_texts()]
    assert sum(percents) == pytest.approx(100, abs=0.5) and percents == sorted(percents, reverse=True)
    page.screenshot(path=str(screenshots / "zero-shot.png"))


def test_near_duplicates_panel(page: Page, screenshots: Path):
    page.click("#duplicates summary")
    page.fill("#threshold", "0.999")
    page.click("#duplicates-form button")
    expect(page.locator("#duplicates-status")).to_contain_text("near-duplicates among 15 images in photos")
    groups = [g.split("\n") for g in page.locator("#groups .group").all_inner_texts()]
    for name in ("red-circle", "blue-square", "green-triangle"):  # each photo and its copy, side by side
        assert any(any(name + ".jpg" in c for c in g) and any(name + "-copy.jpg" in c for c in g) for g in groups)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#groups img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=str(screenshots / "near-duplicates.png"), full_page=True)


def test_errors_are_shown_in_the_page(page: Page, tmp_path: Path):
    page.press("#query", "Enter")
    expect(page.locator("#error")).to_have_text("Type something to search for.")
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not an image at all")
    page.set_input_files("#image-input", str(not_an_image))
    expect(page.locator("#error")).to_contain_text("not an image Pillow can read")
    page.fill("#k", "5000")
    page.fill("#query", "cat")
    page.press("#query", "Enter")
    expect(page.locator("#error")).to_contain_text("k must be between 1 and 1000")
    page.fill("#k", "5")
    page.press("#query", "Enter")
    expect(page.locator("#error")).to_be_hidden()


def test_arabic_query_on_a_phone_width_screen(browser: Browser, live_server: str, screenshots: Path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(live_server)
    page.fill("#query", "دائرة حمراء")
    assert page.eval_on_selector("#query", "e => getComputedStyle(e).direction") == "rtl"
    page.press("#query", "Enter")
    page.wait_for_function(ALL_THUMBNAILS_LOADED)
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0  # nothing wider than the phone
    columns = page.eval_on_selector("#results", "e => getComputedStyle(e).gridTemplateColumns.split(' ').length")
    assert columns >= 2
    boxes = [page.locator("#results .card").nth(i).bounding_box() for i in range(3)]
    assert all(box and box["x"] >= 0 and box["x"] + box["width"] <= 390 for box in boxes)
    page.screenshot(path=str(screenshots / "phone-arabic.png"), full_page=True)
    context.close()


def test_a_token_is_asked_for_and_used(browser: Browser, embedder, catalog):
    with running(create_app(embedder, catalog, ServeConfig(token="s3cret"))) as url:
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)
        expect(page.locator("#token-box")).to_be_visible()
        expect(page.locator("#error")).to_contain_text("needs a token")
        page.fill("#token", "s3cret")
        page.click("#token-box button")
        expect(page.locator("#status")).to_contain_text("images ready to search")
        page.fill("#query", "蓝色")
        page.press("#query", "Enter")
        page.wait_for_function(ALL_THUMBNAILS_LOADED)  # fetched with the token, shown from blob: URLs
        sources = page.eval_on_selector_all("#results img", "images => images.map((i) => i.src)")
        assert all(src.startswith("blob:") for src in sources)
        context.close()
