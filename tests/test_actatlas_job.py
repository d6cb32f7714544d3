"""The activation-atlas stage inside a real job (local Ray): stored tables and incremental reruns."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from raytools import local_ray, tiny_spec_text

from atlas.kinds.actatlas.images import THUMB_SIZE
from atlas.plan.spec import parse_spec
from atlas.run.job import job_status, prepare, run_job
from atlas.store.store import Store

pytest.importorskip("umap")
ATLAS = """
[activation_atlas]
layers = ["conv3"]
grids = [4]
n_neighbors = 10
min_count = 3
"""


def _spec(out, extra: str = ""):
    text = tiny_spec_text(out, layer="conv3", channels="0:2", extra=ATLAS + extra, workers=1)
    text = text.replace("enabled = false", 'source = "demo"\nk = 2\nshard_size = 100\nbatch_size = 50')
    spec = parse_spec(text, source="<test spec>")
    return spec.replace(render=replace(spec.render, batch=8, channels_per_unit=2))


def _units(store: Store, kind: str) -> dict[str, int]:
    """Each finished unit of a kind and when its shard was written (a recomputed unit is rewritten)."""
    return {
        e.key: (store.root / e.path).stat().st_mtime_ns
        for e in store.entries()
        if e.kind == kind and e.status == "done"
    }


@pytest.mark.slow
def test_atlas_stage_stores_layout_cells_icons_and_reruns_only_what_changed(tmp_path) -> None:
    np.save(tmp_path / "eye.npy", np.eye(32, dtype=np.float32))  # conv3 of tiny-cnn has 32 channels
    dictionary = f'[[layers]]\nname = "conv3"\nchannels = "0:2"\ndictionary = "{tmp_path / "eye.npy"}"\n'
    spec = _spec(tmp_path / "out", dictionary)
    ticks: list[tuple[str, str]] = []
    totals: list[int] = []

    def progress(total: int):
        totals.append(total)
        return lambda unit, outcome: ticks.append((unit.kind, outcome))

    with local_ray():
        assert run_job(spec, build=False, progress=progress).ok
        finished = [kind for kind, outcome in ticks if outcome in ("done", "skipped", "failed")]
        planned = [kind for kind, outcome in ticks if outcome == "planned"]
        assert len(finished) == totals[0] + len(planned)  # every unit is in the total, atlas ones too
        assert planned and set(planned) == {"icons"}  # icons are known once their grid is computed
        total, count = totals[0], 0
        for kind, outcome in ticks[:-1]:  # a progress bar never reaches its total before the end
            total += outcome == "planned"
            count += outcome != "planned"
            assert count < total, f"{count} of {total} units finished at {kind} {outcome}"
        atlas_kinds = {"atlas_layout", "atlas_grid", "atlas_images", "atlas_places", "icons"}
        assert atlas_kinds <= set(finished)
        store = Store(spec.out)
        points = store.read("atlas_layout", "conv3")
        cells = store.read("atlas_grid", "conv3")
        icons = store.read("icons", "conv3")
        sampled = store.read("vectors").num_rows
        assert points.num_rows == sampled > 100  # one vector per scanned image
        assert pa.compute.sum(cells.column("count")).as_py() == points.num_rows  # binning conserves counts
        kept = cells.filter(pa.compute.field("kept"))
        assert sorted(icons.column("cell").to_pylist()) == sorted(kept.column("cell").to_pylist())
        kinds = ("atlas_layout", "atlas_grid", "icons", "atlas_images", "atlas_places")
        before = {kind: _units(store, kind) for kind in kinds}
        status = job_status(spec)
        assert status["stale"] == [] and status["pending"] == [] and status["failed"] == []
        assert sum(label.startswith("icons conv3") for label in status["done"]) == len(before["icons"])
        examples = store.read("examples").to_pylist()
        basis = [
            (r["channel"], r["bucket"], r["rank"], r["source_id"]) for r in examples if r["layer"] == "conv3"
        ]
        named = [
            (r["channel"], r["bucket"], r["rank"], r["source_id"]) for r in examples if r["layer"] != "conv3"
        ]
        assert sorted(named) == sorted(basis) and basis  # a one-hot dictionary: the channels' examples

        thumbs = store.read("atlas_images", "conv3")
        listed = [(r["cell"], i) for r in kept.to_pylist() for i in r["source_ids"]]
        assert sorted(
            zip(thumbs["cell"].to_pylist(), thumbs["source_id"].to_pylist(), strict=True)
        ) == sorted(listed)
        assert Image.open(io.BytesIO(thumbs["image"][0].as_py())).size == (THUMB_SIZE, THUMB_SIZE)
        (name,) = [layer.name for layer in prepare(spec).spec.layers if layer.dictionary]
        placed = store.read("atlas_places", name).to_pylist()
        means = {r["cell"]: np.asarray(r["mean"]) for r in kept.to_pylist()}
        firsts = {r["cell"]: r["direction"] for r in placed if r["cell_rank"] == 0}
        assert firsts == {c: int(m.argmax()) for c, m in means.items()}  # one-hot: the top basis channel

        (tmp_path / "eye.names.txt").write_text("".join(f"unit {i}\n" for i in range(32)))  # new hash
        wider = _spec(tmp_path / "out", dictionary)
        wider = wider.replace(activation_atlas=replace(spec.activation_atlas, grids=(4, 6)))
        assert run_job(wider, build=False).ok
        after = {kind: _units(Store(spec.out), kind) for kind in before}
    assert after["atlas_layout"] == before["atlas_layout"]  # same layout, not recomputed
    for kind in ("atlas_grid", "icons", "atlas_images"):
        assert set(before[kind]) < set(after[kind])  # the old grid's units kept as they were...
        assert all(after[kind][k] == v for k, v in before[kind].items())
    assert len(after["atlas_places"]) == 2 and not set(before["atlas_places"]) & set(after["atlas_places"])
    grids = set(Store(spec.out).read("atlas_grid", "conv3").column("grid").to_pylist())
    assert grids == {4, 6}  # ...and the new size added


@pytest.mark.slow
def test_dictionaries_smaller_equal_and_64x_wider_than_the_layer_get_every_view(tmp_path) -> None:
    """K < C, K = C and K = 64 x C random dictionaries over conv3 (C = 32) in one real job."""
    sizes = (5, 32, 64 * 32)
    entries = ""
    for k in sizes:
        np.save(tmp_path / f"d{k}.npy", np.random.default_rng(k).normal(size=(k, 32)))
        names = "".join(f"feature {i}\u2028of {k}\n" for i in range(k))  # a line separator inside
        (tmp_path / f"d{k}.names.txt").write_text(names, encoding="utf-8")
        entries += (
            f'[[layers]]\nname = "conv3"\nchannels = [0, {k - 1}]\ndictionary = "{tmp_path / f"d{k}.npy"}"\n'
        )
    spec = _spec(tmp_path / "out", entries)
    with local_ray():
        result = run_job(spec, build=True)
    assert result.ok and not result.failed
    store = Store(spec.out)
    job = json.loads((spec.out / "job.json").read_text(encoding="utf-8"))
    dictionary_layers = [entry for entry in job["layers"] if "names" in entry]
    assert [entry["total_channels"] for entry in dictionary_layers] == list(sizes)
    renders, examples = store.read("render"), store.read("examples")
    histograms = store.read("histogram")
    for k, entry in zip(sizes, dictionary_layers, strict=True):
        name = entry["name"]
        assert entry["names"] == [f"feature {i}\u2028of {k}" for i in range(k)]
        for table in (renders, examples, histograms):
            rows = table.filter(pa.compute.field("layer") == name)
            assert set(rows.column("channel").to_pylist()) == {0, k - 1}, name
        placed = store.read("atlas_places", name)
        assert set(placed.column("direction").to_pylist()) == set(range(k))  # each has its places
        pages = [p.read_text(encoding="utf-8") for p in result.site.parent.glob("*.html")]
        assert any(f"feature {k - 1}\u2028of {k}" in page for page in pages), name  # shown by name
