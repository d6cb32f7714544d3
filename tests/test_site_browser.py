"""The site in a real browser (Debian's chromium driven by Playwright), from file:// URLs.

Checks what a reader would notice: console errors, broken images, requests leaving the
machine, fragment links, keyboard navigation, the filter; screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from browsers import CHROMIUM, chromium
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store
from synthetic_timeline import write_synthetic_timeline

from atlas.site import build_site

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    options = SyntheticOptions(
        image_size=48,
        crop_size=32,
        examples_k=6,
        diversity=4,
        bins=24,
        channels_per_unit=16,
        random_directions=3,
        pairs=(("mixed4a", 2, 7),),
    )
    write_synthetic_store(out, [SyntheticLayer("mixed3a", 40), SyntheticLayer("mixed4a", 24, 7, 7)], options)
    digest = json.loads((out / "job.json").read_text())["model_digest"]  # the scanned checkpoint
    write_synthetic_timeline(
        out, "mixed4a", checkpoints=4, channels=24, render_every=2, latest_digest=digest, scanned=(0,)
    )
    return build_site(out).parent


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


class Visit:
    """A page opened from the site with its console errors and every request it made."""

    def __init__(self, browser: object, url: str, viewport: dict) -> None:
        self.page = browser.new_page(viewport=viewport)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url)

    def load_every_image(self) -> list[str]:
        """Force lazy images to load; return the sources that did not decode."""
        self.page.evaluate("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
        self.page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=20_000)
        return self.page.evaluate(
            "Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)"
        )

    def shot(self, name: str, full_page: bool = False) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"site-{name}.png"), full_page=full_page)


@pytest.mark.parametrize(
    "page",
    [
        "index.html",
        "mixed3a.html",
        "mixed4a.html",
        "mixed4a.interactions.html",
        "mixed4a.timeline.html",
        "mixed4a.timeline.6.html",
    ],
)
def test_pages_load_cleanly_with_every_image_and_nothing_external(browser, site: Path, page: str) -> None:
    visit = Visit(browser, (site / page).as_uri(), DESKTOP)
    broken = visit.load_every_image()
    assert broken == []
    assert visit.page.evaluate("document.images.length") > 0
    assert visit.errors == []
    outside = [url for url in visit.requests if not url.startswith(("file://", "data:"))]
    assert outside == []
    visit.shot(f"desktop-{page.replace('.html', '')}", full_page=page != "mixed3a.html")
    visit.page.close()


def test_fragment_opens_the_channel_and_keys_move_between_channels(browser, site: Path) -> None:
    visit = Visit(browser, (site / "mixed3a.html").as_uri() + "#channel-17", DESKTOP)
    page = visit.page
    view = page.locator("#channel-view")
    assert view.is_visible()
    assert page.locator("#channel-view-title").inner_text() == "Channel 17"
    row = page.locator("#channel-17")
    assert "current" in row.get_attribute("class")
    box, height = row.bounding_box(), page.viewport_size["height"]
    assert box["y"] >= 0 and box["y"] + box["height"] <= height
    assert page.locator("#channel-view .big img").count() >= 6
    visit.shot("desktop-channel-view")
    page.keyboard.press("j")
    page.wait_for_function("location.hash === '#channel-18'")
    assert page.locator("#channel-view-title").inner_text() == "Channel 18"
    page.keyboard.press("k")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("location.hash === '#channel-16'")
    assert page.locator("#channel-view-title").inner_text() == "Channel 16"
    for _ in range(8):
        page.keyboard.press("Tab")
        assert page.evaluate("document.getElementById('channel-view').contains(document.activeElement)")
    page.keyboard.press("Escape")
    assert not view.is_visible()
    page.keyboard.press("]")
    page.wait_for_url("**/mixed4a.html")
    assert visit.errors == []
    page.close()


def test_timeline_alert_leads_to_the_channel_whose_match_is_followed(browser, site: Path) -> None:
    visit = Visit(browser, (site / "index.html").as_uri(), DESKTOP)
    page = visit.page
    alerts = page.locator(".tl-alerts")
    assert "1 changed" not in alerts.inner_text() and "3 died" in alerts.inner_text()
    page.click(".tl-alerts a[href='mixed4a.timeline.10.html']")  # died at the second checkpoint
    page.wait_for_url("**/mixed4a.timeline.10.html")
    assert "Died at step-200.pt" in page.locator(".dek").inner_text()
    page.keyboard.press("]")  # next channel: 11, which swapped with 12 at that checkpoint
    page.wait_for_url("**/mixed4a.timeline.11.html")
    followed = page.locator(".tl-strip tbody tr").nth(1).locator("small").all_inner_texts()
    assert followed == ["#11", "#11", "#12", "#11"]
    strip = page.locator(".tl-strip tbody tr").first.locator("img")
    assert strip.count() == 3  # rendered: every 2nd checkpoint (0 and 2) and the latest (3)
    examples = page.locator(".tl-strip tbody tr").nth(2).locator("td")
    # the timeline's own scan of the first checkpoint, the job's scan of the latest
    assert [examples.nth(i).locator("img").count() for i in range(4)] == [4, 0, 0, 4]
    assert visit.load_every_image() == []
    visit.shot("desktop-timeline-channel", full_page=True)
    page.click(".kicker a")
    page.wait_for_url("**/mixed4a.timeline.html#channel-11")
    assert page.locator("#channel-11").is_visible()
    assert visit.errors == []
    page.close()


def test_jump_filter_and_spectrum_view(browser, site: Path) -> None:
    visit = Visit(browser, (site / "mixed3a.html").as_uri(), DESKTOP)
    page = visit.page
    page.fill("#filter", "3, 10-12")
    assert page.locator("article.ch:visible").count() == 4
    page.fill("#filter", "")
    assert page.locator("article.ch:visible").count() == 40
    page.click("button[data-view=spectrum]")
    assert page.locator("#channel-5 .k-slightly-negative").is_visible()
    assert not page.locator("#channel-5 .k-neuron").is_visible()
    visit.shot("desktop-spectrum")
    page.fill("#jump", "33")
    page.press("#jump", "Enter")
    page.wait_for_function("location.hash === '#channel-33'")
    assert page.locator("#channel-view-title").inner_text() == "Channel 33"
    assert visit.errors == []
    page.close()


def test_index_search_jumps_to_a_channel(browser, site: Path) -> None:
    visit = Visit(browser, (site / "index.html").as_uri(), DESKTOP)
    page = visit.page
    page.fill("#layer-search", "4a")
    assert page.locator(".layer-card:visible").count() == 1
    page.fill("#layer-search", "mixed4a 9")
    page.press("#layer-search", "Enter")
    page.wait_for_url("**/mixed4a.html#channel-9")
    assert page.locator("#channel-view-title").inner_text() == "Channel 9"
    assert visit.errors == []
    page.close()


@pytest.mark.parametrize(
    "page", ["index.html", "mixed3a.html", "mixed3a.html#channel-4", "mixed4a.interactions.html"]
)
def test_phone_width_fits_the_screen(browser, site: Path, page: str) -> None:
    visit = Visit(
        browser,
        (site / page).as_uri()
        if "#" not in page
        else (site / page.split("#")[0]).as_uri() + "#" + page.split("#")[1],
        PHONE,
    )
    overflow = visit.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    visit.shot("phone-" + page.replace(".html", "").replace("#", "-"))
    assert visit.errors == []
    visit.page.close()


def test_phone_labels_and_channel_view_groups_follow_the_recorded_columns(browser, site: Path) -> None:
    """The short labels and the channel view's single/set/examples grouping come from job.json."""
    visit = Visit(browser, (site / "mixed3a.html").as_uri() + "#channel-4", PHONE)
    label = "(s) => getComputedStyle(document.querySelector(s), '::before').content"
    assert visit.page.evaluate(label, "#channel-4 .k-max") == '"top"'
    assert visit.page.evaluate(label, "#channel-4 .k-neuron") == '"neuron"'
    assert visit.page.locator("#channel-view .big.single").count() == 3  # channel, neuron, negative
    assert visit.errors == []
    visit.page.close()


def test_quality_record_shows_sorts_and_filters_flagged_channels(browser, site: Path) -> None:
    visit = Visit(browser, (site / "mixed3a.html").as_uri(), DESKTOP)
    page = visit.page
    flagged = page.locator("article.ch[data-flags]").count()
    assert 0 < flagged < 40
    assert page.locator("article.ch[data-flags] .flag").count() == flagged
    page.select_option("#show", "flagged")
    assert page.locator("article.ch:visible").count() == flagged
    page.select_option("#show", "trusted")
    assert page.locator("article.ch:visible").count() == 40 - flagged
    page.fill("#filter", "0-9")
    trusted_low = page.locator("article.ch:visible").count()
    assert trusted_low == page.locator("article.ch:not([data-flags])").evaluate_all(
        "rows => rows.filter(r => Number(r.id.slice(8)) <= 9).length"
    )
    page.fill("#filter", "")
    page.select_option("#show", "all")
    page.select_option("#sort", "robust_relative:asc")
    robust = page.locator("article.ch").evaluate_all(
        "rows => rows.map(r => JSON.parse(r.dataset.q).robust_relative)"
    )
    assert robust == sorted(robust) and robust[0] < robust[-1]
    first = page.locator("article.ch").first.get_attribute("id")
    page.keyboard.press("Escape")  # leave the select; keys then step through the sorted order
    page.keyboard.press("j")
    page.wait_for_function(f"location.hash === '#{first}'")
    table = page.locator("#channel-view table.quality")
    assert table.is_visible()
    assert "Kept, relative to its examples" in table.inner_text() and "Natural path" in table.inner_text()
    assert "fails" in table.inner_text()  # the least robust channel fails the relative threshold
    assert "2AFC from top examples" in table.inner_text() and "95%" in table.inner_text()
    visit.shot("desktop-quality")
    assert visit.errors == []
    page.close()
