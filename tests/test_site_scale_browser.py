"""Transformer-scale site in a real browser: a 4,096-unit token layer in pages, search over 100k units.

The store renders one ViT-L-sized MLP layer (4,096 units) and its job plans 24 more like it, so
the index covers 102,400 units. Figures (page weight, search time) are printed, not asserted as
timings; the 3 MB budget on the first page's weight is asserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browsers import CHROMIUM, chromium
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store

from atlas.site import build_site
from atlas.store.store import Store

UNITS = 4096
LAYERS = 25
RENDERED = "blocks.11.mlp.act"
SLUG = "blocks-11-mlp-act"
BUDGET = 3 * 1024 * 1024

pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scale")
    options = SyntheticOptions(
        image_size=24,
        crop_size=24,
        objectives=("channel",),
        diversity=2,
        examples_k=2,
        histograms=False,
        channels_per_unit=UNITS,
    )
    store = write_synthetic_store(out, [SyntheticLayer(RENDERED, UNITS, 14, 14, "tokens")], options)
    job = store.job()
    planned = [
        {**job["layers"][0], "name": f"blocks.{block}.mlp.act"} for block in range(LAYERS) if block != 11
    ]
    Store(out).write_job({**job, "layers": [*planned[:11], job["layers"][0], *planned[11:]]})
    return build_site(out).parent


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


def _open(browser: object, url: str) -> tuple[object, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    return page, errors


def test_a_4096_unit_layer_opens_in_pages_under_the_weight_budget(browser, site: Path) -> None:
    started = time.perf_counter()
    page, errors = _open(browser, (site / f"{SLUG}.html").as_uri())
    page.wait_for_load_state("load")
    opened = time.perf_counter() - started
    assert page.locator("article.ch").count() == 256
    assert "14×14 patches (tokens)" in page.locator(".dek").inner_text()
    fetched = page.evaluate(
        "Array.from(new Set(Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0)"
        ".map(i => i.getAttribute('src'))))"
    )
    assert fetched  # the rows in view show their images
    weight = (site / f"{SLUG}.html").stat().st_size + sum(
        (site / name).stat().st_size for name in ("static/atlas.css", "static/atlas.js", *fetched)
    )
    print(f"\n{UNITS}-unit layer, first page: {weight / 1e6:.2f} MB initial weight, load in {opened:.2f} s")
    assert weight <= BUDGET
    assert errors == []
    page.close()


def test_links_and_keys_reach_channels_on_other_pages(browser, site: Path) -> None:
    page, errors = _open(browser, (site / f"{SLUG}.html").as_uri() + "#channel-3000")
    page.wait_for_url(f"**/{SLUG}.p12.html#channel-3000")
    assert page.locator("#channel-view-title").inner_text() == "Channel 3000"
    page.goto((site / f"{SLUG}.html").as_uri() + "#channel-255")
    page.keyboard.press("j")
    page.wait_for_url(f"**/{SLUG}.p2.html#channel-256")
    assert page.locator("#channel-view-title").inner_text() == "Channel 256"
    page.fill("#jump", "4095")
    page.press("#jump", "Enter")
    page.wait_for_url(f"**/{SLUG}.p16.html#channel-4095")
    assert errors == []
    page.close()


def test_index_search_finds_units_across_the_whole_atlas(browser, site: Path) -> None:
    page, errors = _open(browser, (site / "index.html").as_uri())
    page.wait_for_function(f"window.atlasSearch && window.atlasSearch.length === {LAYERS}")
    total = page.evaluate("window.atlasSearch.reduce((n, l) => n + l[2], 0)")
    assert total == UNITS * LAYERS
    seconds = page.evaluate(
        "(() => { const box = document.getElementById('layer-search'); const t = performance.now();"
        " box.value = '4095'; box.dispatchEvent(new Event('input')); return (performance.now() - t) / 1000; })()"
    )
    print(f"\nsearch over {total} units: {seconds * 1000:.1f} ms")
    assert page.locator("#search-results li").count() == LAYERS
    assert page.locator("#search-status").inner_text().startswith(f"{LAYERS} units 4095")
    page.fill("#layer-search", "blocks.11.mlp.act 3000")
    page.press("#layer-search", "Enter")
    page.wait_for_url(f"**/{SLUG}.p12.html#channel-3000")
    assert page.locator("#channel-view-title").inner_text() == "Channel 3000"
    assert errors == []
    page.close()
