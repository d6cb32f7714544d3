"""Provenance in shards and job.json; when two runs of a unit count as the same; atlas without Ray."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.compute as pc
import torch
from raytools import tiny_spec

from atlas.job import job_info, prepare
from atlas.provenance import read_provenance, render_differences
from atlas.store import Store
from atlas.units import make_context, run_unit

ROOT = Path(__file__).resolve().parents[1]


def test_shards_and_job_json_name_their_environment(tmp_path):
    spec = tiny_spec(tmp_path / "out", channels="0:1", steps=2)
    prepared = prepare(spec)
    (unit,) = prepared.plan.units
    tables = run_unit(make_context(spec, "cpu"), unit)
    store = Store(spec.out)
    entry = store.write_unit_tables(unit.key, unit.kind, unit.layer, tables, unit.channels)
    info = read_provenance(spec.out / entry.path)
    assert info["torch"] == torch.__version__ and info["device"] == "cpu"
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


def test_atlas_runs_units_without_ray_installed(tmp_path):
    """The GPU machine has no Ray: the unit code, the store, the job module and the CLI import without it."""
    script = textwrap.dedent(
        f"""
        import sys

        class HideRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("ray is hidden")

        sys.meta_path.insert(0, HideRay())
        for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
            del sys.modules[name]
        import atlas, atlas.api, atlas.units, atlas.store, atlas.job, atlas.cli, atlas.site
        sys.path.insert(0, {str(ROOT / "scripts")!r})
        import gpu_check
        assert not [m for m in sys.modules if m == "ray" or m.startswith("ray.")]
        print("no ray")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "no ray" in out.stdout
