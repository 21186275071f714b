"""The search page in a real browser: Debian's Chromium, headless, driven by playwright.

No browser is downloaded: playwright launches /usr/bin/chromium (`make test` installs the
`chromium` package when it is missing). The page is served by the real app on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.searchdata import SCRIPT_CAPTION, UNICODE_CAPTION, build_search_world, serve_search

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Set SEARCH_SCREENSHOT=docs/img/search_page.png to write the page with results there.
SCREENSHOT = os.environ.get("SEARCH_SCREENSHOT")

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not shutil.which("chromium"),
    reason="Chromium is not installed: `make test` installs it (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory, tiny_checkpoint):
    world = build_search_world(tmp_path_factory.mktemp("search"), tiny_checkpoint, videos=True)
    with serve_search(world) as url:
        yield url, world


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.on("pageerror", lambda exc: pytest.fail(f"JavaScript error on the page: {exc}"))
    yield page
    context.close()


def result_keys(page) -> list[str]:
    return page.locator("#results .hit .meta").evaluate_all(
        "els => els.filter(e => e.textContent.includes('key ')).map(e => e.textContent.split('key ')[1])"
    )


def wait_results(page, at_least: int = 1) -> None:
    page.wait_for_function(f"document.querySelectorAll('#results .hit').length >= {at_least}")
    page.wait_for_function("!document.getElementById('status').textContent.startsWith('Searching')")


def test_typed_query_more_like_this_upload_duplicates_downloads(base_url, page, tmp_path):
    url, world = base_url
    page.goto(url + "/")
    # Type a caption, search the caption index: the row with that caption comes first, picture loaded.
    page.keyboard.press("/")  # the page's shortcut focuses the query box
    page.keyboard.type(UNICODE_CAPTION)
    assert page.locator("#q").input_value() == UNICODE_CAPTION
    page.get_by_label("captions").check()
    page.locator("#q").press("Enter")
    wait_results(page)
    first = page.locator("#results .hit").first
    assert first.locator(".caption").text_content() == UNICODE_CAPTION
    assert result_keys(page)[0] == "unicode"
    first.locator("img").evaluate("img => img.decode()")
    assert first.locator("img").evaluate("img => img.naturalWidth") == 32
    assert "q=" in page.url and "index=text" in page.url  # the query is kept in the URL

    # More like this on the third result: that picture first, and the URL says so.
    page.get_by_label("pictures").check()
    wait_results(page)
    third = page.locator("#results .hit").nth(2)
    wanted = third.get_attribute("data-id")
    third.get_by_role("button", name="More like this").click()
    page.wait_for_function(f"document.querySelector('#results .hit')?.dataset.id === '{wanted}'")
    assert f"like={wanted}" in page.url

    # Upload a picture that has an exact copy in the dataset: both copies at the top, until hidden.
    picture = tmp_path / "query.jpg"
    picture.write_bytes(next(r["jpg"] for r in world.rows if r["key"] == "000000001"))
    page.set_input_files("#upload", str(picture))
    page.wait_for_function("document.getElementById('status').textContent.includes('uploaded picture')")
    wait_results(page)
    assert set(result_keys(page)[:2]) == {"000000001", "copy-1"}
    page.get_by_label("hide near-duplicates").check()
    page.wait_for_function("document.querySelectorAll('#results .hit').length > 0")
    wait_results(page)
    groups = page.locator("#results .hit").evaluate_all("els => els.map(e => e.dataset.group)")
    assert len(groups) == len(set(groups)) and len({"000000001", "copy-1"} & set(result_keys(page))) == 1

    # Download the results: JSON and Parquet hold what the page shows, in order.
    shown = page.locator("#results .hit").evaluate_all("els => els.map(e => Number(e.dataset.id))")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download JSON").click()
    saved = json.loads(Path(download.value.path()).read_text())
    assert [h["id"] for h in saved["results"]][: len(shown)] == shown and saved["hide_duplicates"] is True
    with page.expect_download() as download:
        page.get_by_role("button", name="Download Parquet").click()
    assert pq.read_table(download.value.path())["id"].to_pylist()[: len(shown)] == shown


def test_markup_in_captions_is_text_scrolling_loads_more_and_videos_show(base_url, page):
    url, _ = base_url
    page.goto(url + "/?q=" + "a red circle moves left")
    wait_results(page, 24)
    assert page.locator("#results .hit").count() == 24
    page.locator("#sentinel").scroll_into_view_if_needed()
    page.wait_for_function("document.querySelectorAll('#results .hit').length > 24")
    strips = page.locator("#videos .video")
    assert strips.count() == 4 and strips.first.locator(".strip img").count() >= 1
    assert " s" in strips.first.locator("figcaption").first.text_content()
    if SCREENSHOT:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=SCREENSHOT)

    # A caption with <script> and an onerror attribute: shown as text, nothing runs.
    page.goto(url + "/?index=text")
    page.locator("#q").fill(SCRIPT_CAPTION)
    page.locator("#q").press("Enter")
    # The status line repeats the query (as text): wait for it, then look at what the caption shows.
    page.wait_for_function("document.getElementById('status').textContent.includes('results for “<script>')")
    assert page.locator("#results .hit .caption").first.text_content() == SCRIPT_CAPTION
    assert page.evaluate("window.__xss") is None
    assert page.locator("#results script").count() == 0

    # Keyboard only: Tab reaches the first result's button, Enter runs "more like this".
    page.locator("#q").focus()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('like')"):
            break
    wanted = page.evaluate("document.activeElement.closest('.hit').dataset.id")
    page.keyboard.press("Enter")
    page.wait_for_function(f"new URL(location.href).searchParams.get('like') === '{wanted}'")
