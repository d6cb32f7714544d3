"""Provenance in shards and job.json; when two runs of a unit count as the same."""

from __future__ import annotations

import pyarrow.compute as pc
import torch
from raytools import tiny_spec

from atlas.core.provenance import (
    computed_on,
    provenance,
    read_provenance,
    render_differences,
    run_differences,
    with_provenance,
)
from atlas.run.job import job_info, prepare
from atlas.run.worker import make_context, run_unit
from atlas.store.store import Store


def test_shards_and_job_json_name_their_environment(tmp_path):
    spec = tiny_spec(tmp_path / "out", channels="0:1", steps=2)
    prepared = prepare(spec)
    (unit,) = prepared.plan.units
    tables = run_unit(make_context(spec, "cpu"), unit)
    store = Store(spec.out)
    entry = store.write_unit_tables(unit.key, unit.kind, unit.layer, tables, unit.channels)
    info = read_provenance(spec.out / entry.path)
    assert info["torch"] == torch.__version__ and info["device"] == "cpu"
    assert Store(spec.out).entries()[0].tables["render"]["provenance"] == info  # the unit's record
    assert {"cuda", "cudnn", "driver", "device_name"} <= set(info)
    store.write_job(job_info(prepared, "now"))
    assert store.job()["provenance"]["torch"] == torch.__version__
    assert store.read("render").num_rows == tables["render"].num_rows  # metadata does not hurt reading


def test_render_differences_tolerates_noise_not_a_changed_result(tmp_path):
    spec = tiny_spec(tmp_path / "out", channels="0:2", steps=2)
    units = prepare(spec).plan.units
    table = run_unit(make_context(spec, "cpu"), units[0])["render"]
    assert render_differences(table, table) == []
    activation = table.column("activation")
    index = table.schema.get_field_index("activation")
    nudged = table.set_column(index, "activation", pc.multiply(activation, 1.01))
    assert render_differences(table, nudged) == []
    changed = table.set_column(index, "activation", pc.add(pc.multiply(activation, 2.0), 1.0))
    assert render_differences(table, changed) and "apart" in render_differences(table, changed)[0]
    assert "rows differ" in render_differences(table, table.slice(0, 0))[0]
    # On CPUs a unit is deterministic, so the same nudge means another run; from a GPU it is noise.
    assert computed_on(table) == "cpu"
    assert run_differences(table, nudged) and run_differences(table, table) == []
    on_gpu = with_provenance(nudged, {**provenance("cpu"), "device": "cuda:0"})
    assert computed_on(on_gpu) == "cuda:0" and run_differences(table, on_gpu) == []
    assert run_differences(table, with_provenance(changed, {"device": "cuda:0"}))
