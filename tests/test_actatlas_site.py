"""The activation-atlas page in a real browser, from file://: zoom, cell details, channel links."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from browsers import CHROMIUM, chromium
from synthetic import PatternPool, SyntheticLayer, SyntheticOptions, write_synthetic_store

from atlas.actatlas.stage import cells_table
from atlas.schema import ICONS_SCHEMA
from atlas.site import build_site
from atlas.store import Store

pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]
CHANNELS = 12


def _write_atlas(out: Path, layer: str) -> None:
    """A layout with two planted clusters, grids of 3 and 6, one icon per kept cell."""
    rng = np.random.default_rng(0)
    coords = np.concatenate([rng.normal(0, 0.3, (60, 2)), rng.normal(3, 0.3, (60, 2))])
    vectors = np.zeros((120, CHANNELS), np.float32)
    vectors[:60, 2], vectors[60:, 7] = 5.0, 5.0  # cluster 1 is channel 2, cluster 2 is channel 7
    ids = np.array([f"img{i:03d}.png" for i in range(120)])
    store = Store(out)
    pool = PatternPool(seed=1)
    for size in (3, 6):
        key = f"atlas_grid-test{size}"
        cells = cells_table(layer, ids, coords, vectors, size, 2, key)
        store.write_unit(key, "atlas_grid", layer, cells)
        kept = cells.filter(pa.compute.field("kept")).column("cell").to_pylist()
        icons = {
            "layer": [layer] * len(kept),
            "grid": [size] * len(kept),
            "cell": kept,
            "image": [pool.png(24, i) for i in range(len(kept))],
            "activation": [1.0] * len(kept),
            "cosine": [0.9] * len(kept),
            "class": [int(c) % 2 for c in kept],
            "class_gain": [1.0] * len(kept),
            "unit_key": [f"icons-test{size}"] * len(kept),
        }
        store.write_unit(f"icons-test{size}", "icons", layer, pa.table(icons, schema=ICONS_SCHEMA))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("atlas-site")
    options = SyntheticOptions(
        image_size=24, crop_size=16, examples_k=2, diversity=2, bins=8, channels_per_unit=12
    )
    write_synthetic_store(out, [SyntheticLayer("mixed3a", CHANNELS)], options)
    _write_atlas(out, "mixed3a")
    return build_site(out).parent


def test_atlas_page_zooms_and_shows_a_cells_icon_channels_and_images(site: Path) -> None:
    assert 'href="mixed3a.atlas.html"' in (site / "mixed3a.html").read_text()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors, requests = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: requests.append(r.url))
        page.goto((site / "mixed3a.atlas.html").as_uri())
        assert page.locator(".atlas-grid[data-grid='3']").is_visible()
        assert not page.locator(".atlas-grid[data-grid='6']").is_visible()
        assert page.locator(".atlas-grid[data-grid='6'] img[loading=lazy]").count() > 0
        page.click(".atlas-zoom button[data-grid='6']")
        assert page.locator(".atlas-grid[data-grid='6']").is_visible()
        cells = page.locator(".atlas-grid[data-grid='6'] .atlas-cell")
        assert cells.count() >= 2
        page.select_option(".atlas-grid[data-grid='6'] .atlas-class", "1")  # the class-filtered view
        dimmed = page.locator(".atlas-grid[data-grid='6'] .atlas-cell.dimmed")
        assert (
            dimmed.count()
            == page.locator(".atlas-grid[data-grid='6'] .atlas-cell[data-class='0']").count()
            > 0
        )
        page.select_option(".atlas-grid[data-grid='6'] .atlas-class", "")
        assert dimmed.count() == 0
        cells.first.click()
        detail = page.locator("#atlas-detail")
        assert detail.is_visible()
        page.wait_for_function("document.getElementById('atlas-detail-icon').naturalWidth > 0")
        links = page.locator("#atlas-detail-channels a")
        top = links.first.get_attribute("href")
        assert top in ("mixed3a.html#channel-2", "mixed3a.html#channel-7")  # the planted channel leads
        assert page.locator("#atlas-detail-images li").first.inner_text().startswith("img")
        links.first.click()
        page.wait_for_url("**/mixed3a.html#channel-*")
        browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
