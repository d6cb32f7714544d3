"""The whole path on the demo spec with tiny settings: spec -> plan -> Ray -> Parquet -> site."""

import io
import re
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from atlas.data.source import demo_photos
from atlas.plan.spec import load_spec
from atlas.run.job import run_job
from atlas.store.store import Store

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo.toml"
RENDER_COLUMNS = [
    "layer",
    "channel",
    "channel_b",
    "objective",
    "variant",
    "label",
    "image",
    "activation",
    "loss",
    "unit_key",
]
CHANNEL_OBJECTIVES = ("channel", "neuron", "negative", "diversity")
EXAMPLE_COLUMNS = [
    "layer",
    "channel",
    "bucket",
    "rank",
    "activation",
    "source_id",
    "x",
    "y",
    "crop",
    "thumb",
    "unit_key",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The demo job, shrunk: few steps, small images, a dozen real photos as the dataset."""
    root = tmp_path_factory.mktemp("demo")
    photos = root / "photos"
    photos.mkdir()
    for path in demo_photos()[:12]:
        Image.open(path).convert("RGB").resize((96, 96)).save(photos / f"{path.stem}.png")
    spec = load_spec(DEMO)
    spec = spec.replace(
        out=root / "out",
        render=replace(spec.render, steps=3, size=48, diversity=2),
        examples=replace(spec.examples, source=str(photos), k=3, shard_size=6),
        interactions=replace(spec.interactions, interpolation_steps=3),
    )
    return spec, run_job(spec)


def test_job_finishes_and_reports(built):
    spec, result = built
    assert result.ok, result.failed
    assert result.done > 0 and result.skipped == 0
    assert result.site == spec.out / "site" / "index.html"


def test_render_shards_have_every_objective_per_channel(built):
    spec, _ = built
    store = Store(spec.out)
    render_files = list((spec.out / "shards" / "render").glob("*.parquet"))
    table = pq.read_table(render_files[0])
    assert table.schema.names == RENDER_COLUMNS
    rows = store.read("render").to_pylist()
    for layer in spec.layers:
        for channel in layer.channels:
            objectives = sorted(
                r["objective"]
                for r in rows
                if r["layer"] == layer.name
                and r["channel"] == channel
                and r["objective"] in CHANNEL_OBJECTIVES
            )
            assert objectives == sorted(
                ["channel", "neuron", "negative"] + ["diversity"] * spec.render.diversity
            )
    image = Image.open(io.BytesIO(rows[0]["image"]))
    assert image.size == (spec.render.size, spec.render.size) and image.mode == "RGB"
    kinds = {r["objective"] for r in rows}
    assert {"direction", "pair", "interpolation"} <= kinds


def test_examples_and_histograms_per_requested_channel(built):
    spec, _ = built
    store = Store(spec.out)
    examples = store.read("examples")
    assert examples.schema.names == EXAMPLE_COLUMNS
    seen = {(r["layer"], r["channel"]) for r in examples.select(["layer", "channel"]).to_pylist()}
    wanted = {(layer.name, c) for layer in spec.layers for c in layer.channels}
    assert wanted <= seen
    assert store.read("histogram").num_rows >= len(wanted)


def test_site_pages_and_every_image_exist(built):
    spec, result = built
    site = result.site.parent
    pages = list(site.glob("*.html"))
    assert len(pages) >= 1 + len(spec.layers)
    for page in pages:
        html = page.read_text()
        for ref in re.findall(r'(?:src|href)="([^"#:]+\.(?:png|jpg|webp|css|js|html))"', html):
            assert (site / ref).is_file(), f"{page.name} references missing {ref}"


def test_rerun_skips_everything(built):
    spec, first = built
    again = run_job(spec, build=False)
    assert again.done == 0 and again.skipped == first.done and again.ok
