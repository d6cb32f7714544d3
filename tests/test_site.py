"""The site builder: pages, images, escaping, slugs, the atomic switch and the build diff."""

from __future__ import annotations

import io
import json
import re
import weakref
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from synthetic import (
    PatternPool,
    SyntheticLayer,
    SyntheticOptions,
    write_synthetic_store,
)

from atlas.core.schema import RENDER_SCHEMA
from atlas.site import SiteError, build_site
from atlas.site.changes import channel_ranges
from atlas.site.sheets import compose, grid_placements, png_size
from atlas.site.slugs import layer_slugs
from atlas.site.sprites import sprite_layout
from atlas.store.store import Store

HOSTILE = '<script>alert("x")</script>/../../evil'


class _Links(HTMLParser):
    """Collects every src and href of a page, and the ids it defines."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("src"):
            self.sources.append(values["src"])
        if values.get("href"):
            self.links.append(values["href"])
        if values.get("id"):
            self.ids.add(values["id"])


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _small(**changes) -> SyntheticOptions:
    base = {
        "image_size": 16,
        "crop_size": 12,
        "examples_k": 4,
        "diversity": 2,
        "bins": 8,
        "channels_per_unit": 8,
    }
    base.update(changes)
    return SyntheticOptions(**base)


@pytest.fixture(scope="module")
def full_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    write_synthetic_store(
        out,
        [SyntheticLayer("mixed3a", 12), SyntheticLayer("mixed4a", 10, 7, 7)],
        _small(random_directions=2, pairs=(("mixed4a", 1, 5),)),
    )
    return build_site(out).parent


def test_every_page_and_every_referenced_file_exists(full_site: Path) -> None:
    pages = sorted(full_site.glob("*.html"))
    assert {p.name for p in pages} == {
        "index.html",
        "mixed3a.html",
        "mixed4a.html",
        "mixed3a.interactions.html",
        "mixed4a.interactions.html",
    }
    for page in pages:
        found = _parse(page)
        for reference in found.sources + found.links:
            assert not re.match(r"^(https?:)?//", reference), f"external reference {reference} in {page.name}"
            if reference.startswith(("#", "data:")):
                continue
            target, _, fragment = reference.partition("#")
            assert (full_site / target).is_file(), f"{page.name} refers to missing {target}"
            if fragment:
                assert fragment in _parse(full_site / target).ids, f"{reference} lands nowhere"


def test_layer_page_has_every_channel_with_its_images(full_site: Path) -> None:
    found = _parse(full_site / "mixed4a.html")
    assert {f"channel-{c}" for c in range(10)} <= found.ids
    assert "img/mixed4a/3.jpg" in found.sources
    html = (full_site / "mixed4a.html").read_text()
    row = re.search(r'<article class="row ch"[^>]* id="channel-3">(.*?)</article>', html, re.S).group(1)
    for column in (
        "channel",
        "neuron",
        "negative",
        "diversity",
        "max",
        "min",
        "slightly-negative",
        "slightly-positive",
    ):
        assert f'<div class="cell k-{column}"><img src="img/mixed4a/3.jpg"' in row
    assert html.count('<svg class="hist"') == 10


def test_layer_images_are_lazy_and_sized_so_the_page_lays_out_before_they_load(full_site: Path) -> None:
    tags = re.findall(r"<img [^>]*>", (full_site / "mixed3a.html").read_text())
    assert len(tags) == 12 * 8
    for tag in tags:
        assert 'loading="lazy"' in tag and re.search(r'width="\d+" height="\d+"', tag), tag


def test_sprites_put_each_image_in_its_region(full_site: Path) -> None:
    html = (full_site / "mixed3a.html").read_text()
    row = re.search(r'id="channel-5">(.*?)</article>', html, re.S).group(1)
    values = re.search(r'k-max"><img [^>]*data-v="([^"]+)"', row).group(1)
    numbers = [float(v) for v in values.split()]
    assert len(numbers) == 4 and numbers == sorted(numbers, reverse=True)
    layout = sprite_layout(
        ["channel", "neuron", "negative"],
        (16, 16),
        2,
        [("max", 4), ("min", 4), ("slightly_positive", 4), ("slightly_negative", 4)],
        (12, 12),
    )
    with Image.open(full_site / "img/mixed3a/5.jpg") as sprite:
        assert sprite.size == (layout.width, layout.height)
        for column in ("channel", "negative"):
            region = layout.regions[column]
            box = (region.x, region.y, region.x + region.width, region.y + region.height)
            cropped = np.asarray(sprite.convert("RGB").crop(box), dtype=float)
            png = _stored_png(full_site.parent, "mixed3a", 5, column)
            expected = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
            assert np.abs(cropped - expected).mean() < 12, column


def _stored_png(out: Path, layer: str, channel: int, objective: str) -> bytes:
    rows = Store(out).read("render", layer).to_pylist()
    return next(r["image"] for r in rows if r["channel"] == channel and r["objective"] == objective)


def test_sprite_regions_tile_without_overlap() -> None:
    layout = sprite_layout(["channel", "neuron"], (128, 128), 4, [("max", 10), ("min", 7)], (96, 96))
    boxes = list(layout.regions.items())
    for index, (name, region) in enumerate(boxes):
        assert region.x + region.width <= layout.width and region.y + region.height <= layout.height, name
        for other_name, other in boxes[index + 1 :]:
            apart = (
                region.x + region.width <= other.x
                or other.x + other.width <= region.x
                or region.y + region.height <= other.y
                or other.y + other.height <= region.y
            )
            assert apart, (name, other_name)
    assert (layout.regions["max"].columns, layout.regions["max"].rows) == (5, 2)
    assert layout.crop_style("channel").startswith(f"width:{100 * layout.width / 128:.4g}%")


def test_interactions_page_shows_directions_pairs_and_interpolation(full_site: Path) -> None:
    found = _parse(full_site / "mixed4a.interactions.html")
    assert {"direction-0", "direction-1", "pair-1-5"} <= found.ids
    assert "img/mixed4a/direction-1-max.jpg" in found.sources  # examples of channel -2
    assert "img/mixed4a/pair-1-5-interpolation.jpg" in found.sources
    strip_width, _ = _size(full_site / "img/mixed4a/pair-1-5-interpolation.jpg")
    assert strip_width == 16 * 5


def test_worker_processes_write_the_same_site_as_inline(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, [SyntheticLayer("mixed3a", 24)], _small(random_directions=1))
    inline = build_site(tmp_path, tmp_path / "inline", workers=1).parent
    pooled = build_site(tmp_path, tmp_path / "pooled", workers=2).parent
    files = sorted(p.relative_to(inline) for p in inline.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(pooled) for p in pooled.rglob("*") if p.is_file())
    for name in files:
        if name.suffix in (".jpg", ".png", ".js"):
            assert (inline / name).read_bytes() == (pooled / name).read_bytes(), name


def test_optional_parts_are_left_out_cleanly(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, [SyntheticLayer("only", 6)], _small(examples=False, histograms=False))
    site = build_site(tmp_path).parent
    html = (site / "only.html").read_text()
    assert "k-max" not in html and '<svg class="hist"' not in html
    assert not list(site.glob("*.interactions.html"))
    assert "Interactions" not in (site / "index.html").read_text()


def test_hostile_names_are_escaped_and_files_stay_inside(tmp_path: Path) -> None:
    options = _small(random_directions=1)
    store = write_synthetic_store(tmp_path, [SyntheticLayer(HOSTILE, 3)], options, job_name="<b>job</b>")
    rows = [
        {
            "layer": HOSTILE,
            "channel": -1,
            "channel_b": -1,
            "objective": "direction",
            "variant": 0,
            "label": "<img src=x onerror=alert(1)>",
            "image": PatternPool(0).png(16, 1),
            "activation": 1.0,
            "loss": [],
            "unit_key": "evil",
        }
    ]
    store.write_unit("evil", "render", HOSTILE, pa.Table.from_pylist(rows, schema=RENDER_SCHEMA))
    site = build_site(tmp_path).parent
    for page in site.glob("*.html"):
        text = page.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>job</b>" not in text
    layer_pages = [p for p in site.glob("*.html") if p.name != "index.html" and ".interactions" not in p.name]
    assert len(layer_pages) == 1 and "&lt;script&gt;" in layer_pages[0].read_text()
    for path in tmp_path.rglob("*"):
        assert path.resolve().is_relative_to(tmp_path.resolve())
    assert not (tmp_path.parent / "evil").exists()
    assert all(re.fullmatch(r"[a-z0-9.-]+\.html", p.name) for p in site.glob("*.html"))


def test_slugs_are_safe_unique_and_stable() -> None:
    names = ["Conv.1", "conv-1", "conv_1", "index", "../..", "", "mixed4a"]
    slugs = layer_slugs(names)
    assert len(set(slugs.values())) == len(names)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", s) for s in slugs.values())
    assert slugs["mixed4a"] == "mixed4a" and slugs["index"] != "index"
    assert layer_slugs(reversed(names)) == slugs


def test_colliding_layer_names_get_their_own_pages(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, [SyntheticLayer("block.1", 2), SyntheticLayer("block_1", 3)], _small())
    site = build_site(tmp_path).parent
    pages = {p.name: p.read_text() for p in site.glob("block-1-*.html")}
    assert len(pages) == 2
    titles = sorted(re.search(r"<h1>(.*?)</h1>", text).group(1) for text in pages.values())
    assert titles == ["block.1", "block_1"]


def test_failed_build_keeps_the_previous_site(tmp_path: Path) -> None:
    store = write_synthetic_store(tmp_path, [SyntheticLayer("mixed3a", 4)], _small())
    index = build_site(tmp_path)
    before = index.read_text()
    shard = tmp_path / next(e.path for e in store.entries() if e.kind == "render")
    shard.write_bytes(b"not parquet")
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises, the old site must stay
        build_site(tmp_path)
    assert index.read_text() == before
    assert (index.parent / "img/mixed3a/0.jpg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".site")) == []


def test_rebuild_replaces_the_site_and_reports_what_changed(tmp_path: Path) -> None:
    store = write_synthetic_store(tmp_path, [SyntheticLayer("mixed3a", 16)], _small())
    first = build_site(tmp_path).read_text()
    assert "first build" in first
    assert "Nothing changed" in build_site(tmp_path).read_text()
    old = next(e for e in store.entries() if e.kind == "render" and e.channels[0] == 8)
    table = pq.read_table(tmp_path / old.path)
    store.prune(e.key for e in store.entries() if e.key != old.key)
    store.write_unit("recomputed", "render", "mixed3a", table, old.channels)
    write_synthetic_store(tmp_path / "other", [SyntheticLayer("mixed4b", 2)], _small())
    text = build_site(tmp_path).read_text()
    assert "1 unit recomputed" in text and "channels 8–15" in text
    summary = json.loads((tmp_path / "site/build.json").read_text())
    assert "recomputed" in summary["layers"]["mixed3a"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".site")] == []


def test_rebuild_links_unchanged_sprites_and_redraws_changed_ones(tmp_path: Path) -> None:
    store = write_synthetic_store(tmp_path, [SyntheticLayer("mixed3a", 16)], _small())
    site = build_site(tmp_path).parent
    before = {c: (site / f"img/mixed3a/{c}.jpg").stat().st_ino for c in (0, 7, 8, 15)}
    old_bytes = (site / "img/mixed3a/8.jpg").read_bytes()
    old = next(e for e in store.entries() if e.kind == "render" and e.channels[0] == 8)
    table = pq.read_table(tmp_path / old.path)
    redrawn = table.set_column(
        table.schema.get_field_index("image"),
        "image",
        pa.array([PatternPool(seed=5).png(16, i) for i in range(table.num_rows)], pa.binary()),
    )
    store.prune(e.key for e in store.entries() if e.key != old.key)
    store.write_unit("redrawn", "render", "mixed3a", redrawn, old.channels)
    build_site(tmp_path)
    after = {c: (site / f"img/mixed3a/{c}.jpg").stat().st_ino for c in before}
    assert after[0] == before[0] and after[7] == before[7]
    assert after[8] != before[8] and after[15] != before[15]
    assert (site / "img/mixed3a/8.jpg").read_bytes() != old_bytes


def test_failed_units_are_reported_on_the_layer_page(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, [SyntheticLayer("mixed3a", 4)], _small(failed_layers=("mixed3a",)))
    site = build_site(tmp_path).parent
    html = (site / "mixed3a.html").read_text()
    assert "1 unit failed" in html and "CUDA out of memory" in html
    assert html.count('class="row ch"') == 4  # examples still shown
    assert html.count('class="cell k-channel none"') == 4  # the failed renders leave empty cells


def test_not_an_output_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="output folder"):
        build_site(tmp_path)


def test_layer_html_stays_small_per_channel(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, [SyntheticLayer("wide", 96)], _small(diversity=4, examples_k=10))
    site = build_site(tmp_path).parent
    per_channel = (site / "wide.html").stat().st_size / 96
    assert per_channel < 2900, f"{per_channel:.0f} bytes per channel: a 1,024-channel page passes 3 MB"


def test_sheet_and_png_helpers() -> None:
    pool = PatternPool(0)
    width, height, columns, rows, placements = grid_placements(
        [pool.png(8, i) for i in range(5)] + [pool.png(12, 9)]
    )
    assert (columns, rows) == (3, 2) and (width, height) == (24, 16)
    assert Image.open(io.BytesIO(compose(width, height, placements))).size == (24, 16)
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(b"GIF89a" + bytes(30))
    assert channel_ranges([5, 0, 1, 2, 7, 8]) == "0–2, 5, 7–8"
    assert channel_ranges([]) == ""


def test_store_without_job_json_still_builds(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path, [SyntheticLayer("mixed3a", 3)], _small())
    (tmp_path / "job.json").unlink()
    site = build_site(tmp_path).parent
    assert "mixed3a" in (site / "index.html").read_text()
    assert Store(tmp_path).job() == {}


def test_site_holds_about_one_unit_of_pictures_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """Every table read is watched: rows with pictures alive at once stay within a unit per kind."""
    options = _small(channels_per_unit=4)
    write_synthetic_store(tmp_path, [SyntheticLayer("mixed3a", 32)], options)
    render_rows = 4 * (len(options.objectives) + options.diversity)  # one render unit
    example_rows = 4 * 4 * options.examples_k  # one examples unit: four buckets per channel
    alive: list[tuple[weakref.ref, int]] = []
    peak = 0
    read_unit = Store.read_unit

    def watched(self, key, kind, columns=None):
        nonlocal peak
        table = read_unit(self, key, kind, columns)
        if any(pa.types.is_binary(field.type) for field in table.schema):
            alive.append((weakref.ref(table), table.num_rows))
            peak = max(peak, sum(rows for ref, rows in alive if ref() is not None))
        return table

    monkeypatch.setattr(Store, "read_unit", watched)
    site = build_site(tmp_path, workers=1).parent
    assert len(list((site / "img" / "mixed3a").glob("*.jpg"))) == 32  # every channel's sprite drawn
    assert 0 < peak <= render_rows + example_rows < (render_rows + example_rows) * 8  # the layer is 8 units


@pytest.mark.parametrize("quality", [True, False], ids=["quality-record", "before-quality-records"])
def test_optimized_pictures_say_whether_their_value_is_a_peak_or_the_objective(
    tmp_path: Path, quality: bool
) -> None:
    """A render unit with a quality record shows each picture's peak; one without (a store from
    before quality records) shows the objective, and every optimized cell says so."""
    write_synthetic_store(tmp_path, [SyntheticLayer("mixed3a", 3)], _small(quality=quality))
    html = (build_site(tmp_path).parent / "mixed3a.html").read_text()
    for channel in range(3):
        row = re.search(rf'<article class="row ch"[^>]* id="channel-{channel}">(.*?)</article>', html, re.S)
        for column in ("channel", "neuron", "negative", "diversity"):
            cell = re.search(rf'<div class="cell k-{column}"><img [^>]*>', row.group(1)).group(0)
            assert ('data-objective="1"' in cell) is not quality, (channel, column)
