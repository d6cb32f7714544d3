"""Dataset scans on Ray Data: partials equal an in-process scan, the tree merge equals a fold,
the split of the cluster between decoding and the forward pass, and resuming after a killed driver."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import reduce
from pathlib import Path

import pyarrow as pa
import pytest
from raytools import env_with_tests_on_path, local_ray, manifest_units, tiny_spec

from atlas.data.open import open_source
from atlas.kinds.examples import PartialScan, scan_shard
from atlas.plan.spec import ExecuteSpec, load_spec, parse_spec
from atlas.run.cost import BudgetExceeded
from atlas.run.job import prepare, run_job
from atlas.run.report import JobResult
from atlas.run.scans import cluster_scan_plan, plan_scan, run_scans, scan_directions, tree_merge
from atlas.store.store import Store

SPEC = """
[job]
name = "scan-data"
out = "{out}"
[model]
name = "{model}"
[[layers]]
name = "{layer}"
channels = "0:3"
[render]
enabled = false
[examples]
source = "{source}"
k = 3
shard_size = {shard_size}
batch_size = 3
[interactions]
random_directions = {directions}
[execute]
workers = 1
"""


def write_spec(root: Path, photos: Path, model: str = "tiny-cnn", layer: str = "conv3", **kw: int) -> Path:
    settings = {"shard_size": 5, "directions": 2} | kw
    path = root / "job.toml"
    path.write_text(SPEC.format(out=root / "out", source=photos, model=model, layer=layer, **settings))
    return path


def stored(store: Store, key: str) -> pa.Table:
    """A committed partial as `to_table` writes it (Parquet renames list items on the way)."""
    return PartialScan.from_table(store.read_unit(key, "scan")).to_table()


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module, with one GPU that Ray counts (workers compute on the CPU).

    Its workers inherit a slower `slow_cnn`, so the driver can be killed mid-scan.
    """
    saved = os.environ.get("ATLAS_TEST_SLOW_FORWARD")
    os.environ["ATLAS_TEST_SLOW_FORWARD"] = "0.3"
    try:
        with local_ray(num_cpus=2, num_gpus=1) as address:
            yield address
    finally:
        if saved is None:
            os.environ.pop("ATLAS_TEST_SLOW_FORWARD")
        else:
            os.environ["ATLAS_TEST_SLOW_FORWARD"] = saved


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    demo = open_source("demo")
    for index, source_id in enumerate(demo.ids()[::13][:16]):
        demo.load(source_id).resize((72, 56)).save(folder / f"p{index:02d}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.mark.parametrize(
    ("resources", "nodes", "actors", "gpus", "decoders"),
    [
        ({"CPU": 2}, [{"CPU": 2}], 1, 0.0, 1),
        ({"CPU": 16}, [{"CPU": 16}], 4, 0.0, 8),
        ({"CPU": 16, "GPU": 2}, [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}], 2, 1.0, 14),
    ],
)
def test_scan_plan_leaves_cpus_to_decode(resources, nodes, actors, gpus, decoders) -> None:
    plan = plan_scan(ExecuteSpec(), resources, nodes)
    assert (plan.actors.count, plan.actors.gpus, plan.decoders) == (actors, gpus, decoders)
    assert plan.actors.count * plan.actors.cpus + plan.decoders <= resources["CPU"]


def test_a_cpu_scan_never_gives_every_cpu_to_actors() -> None:
    plan = plan_scan(ExecuteSpec(workers=4, gpus_per_worker=0), {"CPU": 2}, [{"CPU": 2}])
    assert plan.actors.count * plan.actors.cpus <= 1 and plan.decoders >= 1


@pytest.mark.slow
def test_ray_data_partials_equal_an_in_process_scan_and_merge_by_tree(
    cluster: str, photos: Path, tmp_path: Path
) -> None:
    spec = load_spec(write_spec(tmp_path, photos))
    prepared = prepare(spec)
    units = [u for u in prepared.plan.units if u.kind == "scan"]
    store = Store(spec.out)
    report = run_scans(spec, prepared.source, units, store, prepared.model.input_size, JobResult())
    assert (report.done, report.failed) == (len(units), [])
    merged = tree_merge(store, prepared.plan.keys()["scan"], fan_in=2)  # 4 shards: two levels

    work = units[0].work
    directions = scan_directions(prepared.model, work)
    local = [
        scan_shard(prepared.model, work.layers, prepared.source, u.inputs, 3, 3, directions) for u in units
    ]
    for unit, partial in zip(units, local, strict=True):
        assert stored(store, unit.key).equals(partial.to_table())
    assert merged.to_table().equals(reduce(PartialScan.merge, local).to_table())
    assert merged.stats["skipped:corrupt"] == 1 and merged.stats["scanned"] == 16


@pytest.mark.slow
def test_rerun_after_a_killed_driver_scans_only_the_unfinished_shards(
    cluster: str, photos: Path, tmp_path: Path
) -> None:
    """The unit of resumption is the shard: committed shards survive the driver, the rest rescan."""
    spec_path = write_spec(
        tmp_path, photos, model="module:faultmodels:slow_cnn", layer="slow", shard_size=2, directions=0
    )
    total = 9  # 17 files in shards of 2
    log = tmp_path / "driver.log"
    env = env_with_tests_on_path() | {"RAY_ADDRESS": cluster}
    driver = subprocess.Popen(
        [sys.executable, "-m", "atlas.cli", "scan", str(spec_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    deadline = time.monotonic() + 180
    try:
        while len(manifest_units(tmp_path / "out")) < 2:
            assert driver.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the driver committed no shard in 180 s"
            time.sleep(0.1)
    finally:
        driver.kill()
        driver.wait()
    survived = {u["key"] for u in manifest_units(tmp_path / "out")}
    assert 2 <= len(survived) < total, "kill the driver mid-scan: slow the forward down if this fails"

    spec = load_spec(spec_path)
    rerun = run_job(spec, build=False, only=("scan",))
    assert (rerun.done, rerun.skipped, rerun.failed) == (total - len(survived), len(survived), [])
    store = Store(spec.out)
    prepared = prepare(spec)
    work = prepared.plan.units[0].work
    for unit in prepared.plan.units:
        local = scan_shard(prepared.model, work.layers, prepared.source, unit.inputs, k=3, batch_size=3)
        assert stored(store, unit.key).equals(local.to_table()), unit.label


@pytest.mark.slow
def test_scans_and_renders_take_turns_on_one_gpu(cluster: str, photos: Path, tmp_path: Path) -> None:
    """Phases: the scan's actor holds the GPU, then the render and examples workers do."""
    text = write_spec(tmp_path, photos, shard_size=8, directions=0).read_text()
    text = text.replace(
        "[render]\nenabled = false", '[render]\nsteps = 2\nsize = 32\nobjectives = ["channel"]'
    )
    spec = parse_spec(text.replace("workers = 1", 'gpus_per_worker = "auto"'))
    assert cluster_scan_plan(spec.execute).actors.gpus == 1
    result = run_job(spec, build=False)
    assert result.ok, result.failed
    kinds = sorted(e.kind for e in Store(spec.out).entries())
    assert kinds == [
        "examples",
        "render",
        "scan",
        "scan",
        "scan",
        "trust",
    ]  # trust: the render judged against its examples


@pytest.mark.slow
def test_a_spend_budget_stops_the_job_after_a_unit_and_the_rerun_resumes(
    cluster: str, tmp_path: Path
) -> None:
    """1 (fake) GPU held: the first finished unit passes a budget of a few milliseconds of it."""
    # One unit a call: a GPU worker packs 16 render units into one call by default, and the
    # budget is checked after each call.
    budget = "gpus_per_worker = 1\nunits_per_call = 1\n[cost]\nbudget_gpu_hours = 0.000001"
    with pytest.raises(BudgetExceeded, match="rerun with a larger budget"):
        run_job(tiny_spec(tmp_path / "out", channels="0:3", workers=1, extra=budget), build=False)
    assert [u["status"] for u in manifest_units(tmp_path / "out")] == ["done"]
    rerun = run_job(tiny_spec(tmp_path / "out", channels="0:3", workers=1), build=False)
    assert (rerun.done, rerun.skipped, rerun.failed) == (2, 1, [])
