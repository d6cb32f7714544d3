"""The activation-atlas page in a real browser, from file://: zoom, cell details, channel links,
the cell's images and a dictionary's named directions linked both ways with the atlas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from browsers import CHROMIUM, chromium
from synthetic import PatternPool, SyntheticLayer, SyntheticOptions, write_synthetic_store

from atlas.core.schema import ATLAS_IMAGES_SCHEMA, ATLAS_PLACES_SCHEMA, ICONS_SCHEMA
from atlas.kinds.actatlas.places import places
from atlas.kinds.actatlas.stage import PLACES_COLUMNS, cells_table
from atlas.site import build_site
from atlas.store.store import Store

pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]
CHANNELS = 12
DICTIONARY = "mixed3a@sae:0a1b2c3d"
# Directions 0 and 1 point at the planted clusters' channels; 2 at a channel no cluster uses.
NAMES = ["fur texture", "dog snout", "unused"]
DIRECTIONS = np.eye(CHANNELS, dtype=np.float32)[[2, 7, 11]]


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
        listed = cells.filter(pa.compute.field("kept")).select(["cell", "source_ids"]).to_pylist()
        rows = [(r["cell"], i) for r in listed for i in r["source_ids"]]
        thumbs = {
            "layer": [layer] * len(rows),
            "grid": [size] * len(rows),
            "cell": [c for c, _ in rows],
            "source_id": [i for _, i in rows],
            "position": [0] * len(rows),
            "image": [pool.png(16, int(i[3:6])) for _, i in rows],
            "unit_key": [f"atlas_images-test{size}"] * len(rows),
        }
        store.write_unit(
            f"atlas_images-test{size}", "atlas_images", layer, pa.table(thumbs, schema=ATLAS_IMAGES_SCHEMA)
        )
        kept = cells.filter(pa.compute.field("kept"))
        means = np.array(kept.column("mean").to_pylist(), np.float32)
        ranked = places(kept.column("cell").to_numpy(), means, DIRECTIONS)
        count = len(ranked.cell)
        rows = {
            "layer": [DICTIONARY] * count,
            "atlas_layer": [layer] * count,
            "grid": [size] * count,
            **{name: getattr(ranked, name) for name in PLACES_COLUMNS},
            "unit_key": [f"atlas_places-test{size}"] * count,
        }
        store.write_unit(
            f"atlas_places-test{size}", "atlas_places", DICTIONARY, pa.table(rows, schema=ATLAS_PLACES_SCHEMA)
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("atlas-site")
    options = SyntheticOptions(
        image_size=24, crop_size=16, examples_k=2, diversity=2, bins=8, channels_per_unit=12
    )
    layers = [SyntheticLayer("mixed3a", CHANNELS), SyntheticLayer(DICTIONARY, len(NAMES))]
    store = write_synthetic_store(out, layers, options)
    job = store.job()
    job["layers"][1]["names"] = NAMES  # as atlas.run.job writes a dictionary layer's entry
    store.write_job(job)
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


def test_a_cells_images_load_when_it_is_opened(site: Path) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto((site / "mixed3a.atlas.html").as_uri())
        page.wait_for_load_state("load")
        assert not [u for u in requests if "/atlas/cells/" in u]  # no thumbnail before a cell is opened
        cell = page.locator(".atlas-grid[data-grid='3'] .atlas-cell").first
        cell.click()
        listed = [name for name, _ in json.loads(cell.get_attribute("data-images"))]
        thumbs = page.locator("#atlas-detail-images img")
        assert thumbs.count() == len(listed) > 0
        assert [thumbs.nth(i).get_attribute("alt") for i in range(thumbs.count())] == listed
        page.wait_for_function(
            "Array.from(document.querySelectorAll('#atlas-detail-images img')).every(i => i.naturalWidth == 16)"
        )
        assert [u for u in requests if "/atlas/cells/" in u]
        browser.close()


def test_dictionary_directions_show_their_names_and_places_both_ways(site: Path) -> None:
    dictionary_page = next(p for p in site.glob("mixed3a-*.html") if "atlas" not in p.name)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(dictionary_page.as_uri())
        assert page.locator("#channel-1 .unit-name").inner_text() == "dog snout"
        page.goto(dictionary_page.as_uri() + "#channel-1")  # a deep link
        assert page.locator("#channel-view-title").inner_text() == "Channel 1 · dog snout"
        back = page.locator(".channel-view .places a[href*='#g6-c']")
        assert back.count() == 3  # its 3 best cells of the 6 x 6 grid (by cosine), best first
        target = back.first.get_attribute("href")
        assert target.startswith("mixed3a.atlas.html#g6-c")
        back.first.click()
        page.wait_for_url("**/mixed3a.atlas.html#g6-c*")
        cell = page.locator("#" + target.split("#")[1])
        assert cell.get_attribute("aria-pressed") == "true" and cell.is_visible()
        channels = json.loads(cell.get_attribute("data-channels"))
        assert channels[0][0] == 7  # the cell dog snout points to is the cluster of channel 7...
        first = page.locator("#atlas-detail-directions a").first
        assert first.inner_text() == "dog snout"  # ...and lists it first among the directions
        first.click()
        page.wait_for_url(f"**/{dictionary_page.name}#channel-1")
        assert page.locator("#channel-view-title").inner_text() == "Channel 1 · dog snout"
        browser.close()
    assert errors == []
