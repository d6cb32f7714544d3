"""The activation-atlas stage inside a real job (local Ray): stored tables and incremental reruns."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from raytools import local_ray, tiny_spec_text

from atlas.job import job_status, run_job
from atlas.spec import parse_spec
from atlas.store import Store

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
    with local_ray():
        assert run_job(spec, build=False).ok
        store = Store(spec.out)
        points = store.read("atlas_layout", "conv3")
        cells = store.read("atlas_grid", "conv3")
        icons = store.read("icons", "conv3")
        sampled = store.read("vectors").num_rows
        assert points.num_rows == sampled > 100  # one vector per scanned image
        assert pa.compute.sum(cells.column("count")).as_py() == points.num_rows  # binning conserves counts
        kept = cells.filter(pa.compute.field("kept"))
        assert sorted(icons.column("cell").to_pylist()) == sorted(kept.column("cell").to_pylist())
        before = {kind: _units(store, kind) for kind in ("atlas_layout", "atlas_grid", "icons")}
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

        wider = _spec(tmp_path / "out", dictionary)
        wider = wider.replace(activation_atlas=replace(spec.activation_atlas, grids=(4, 6)))
        assert run_job(wider, build=False).ok
        after = {kind: _units(Store(spec.out), kind) for kind in before}
    assert after["atlas_layout"] == before["atlas_layout"]  # same layout, not recomputed
    for kind in ("atlas_grid", "icons"):
        assert set(before[kind]) < set(after[kind])  # the old grid's units kept as they were...
        assert all(after[kind][k] == v for k, v in before[kind].items())
    grids = set(Store(spec.out).read("atlas_grid", "conv3").column("grid").to_pylist())
    assert grids == {4, 6}  # ...and the new size added
