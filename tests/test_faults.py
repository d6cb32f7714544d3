"""Faults on a real local Ray: killed workers, killed drivers, corrupt shards, units that fail.

One Ray cluster serves the whole module, and one pool of two workers most tests. The models come from tests/faultmodels.py:
`slow_cnn` sleeps in forward so units can be interrupted, `poisoned_cnn` has a NaN channel.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from click.testing import CliRunner
from faultmodels import POISONED_CHANNEL
from raytools import env_with_tests_on_path, local_ray, manifest_units, tiny_spec, write_spec

from atlas.cli import main
from atlas.core.provenance import run_differences
from atlas.plan.spec import load_spec
from atlas.run.driver import Driver
from atlas.run.executor import MAX_LOST_BEFORE_START_PER_WORKER, ExecuteError, Executor, WorkerPlan
from atlas.run.job import prepare, run_job
from atlas.run.report import JobResult
from atlas.store.store import Store

pytestmark = pytest.mark.slow


SLOW = {"model": "module:faultmodels:slow_cnn", "layer": "slow"}


@pytest.fixture(scope="module")
def cluster():
    with local_ray(num_cpus=4) as address:  # logical CPUs: room for the shared pool and one more
        yield address


@pytest.fixture(scope="module")
def executor(cluster, tmp_path_factory):
    """Two slow_cnn workers shared by the tests below: starting actors is the slow part on 2 cores."""
    pool = Executor(tiny_spec(tmp_path_factory.mktemp("unused"), **SLOW), WorkerPlan(2, cpus=1, gpus=0))
    yield pool
    pool.shutdown()


def run_units(executor: Executor, spec, store: Store | None = None):
    """Run a spec's pending units on the shared pool, as `atlas run --no-site` would."""
    runner = Driver(spec, store or Store(spec.out), JobResult(spec.out), executor=executor)
    runner.run(prepare(spec).plan.units)
    return runner.result


class CountingStore(Store):
    """A store that remembers how often each unit was written."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.writes: dict[str, int] = {}

    def commit(self, record):
        self.writes[record.key] = self.writes.get(record.key, 0) + 1
        return super().commit(record)


def shard_digests(out: Path) -> dict[str, str]:
    """unit key -> sha256 of its render shard, read from disk (not from the manifest)."""
    store = Store(out)
    return {
        e.key: hashlib.sha256((out / e.path).read_bytes()).hexdigest()
        for e in store.entries()
        if e.status == "done"
    }


def read_shards(out: Path) -> dict:
    """unit key -> its render table."""
    return {e.key: pq.read_table(out / e.path) for e in Store(out).entries() if e.status == "done"}


def test_calls_in_flight_stay_bounded_and_results_stream_in(executor, tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path / "out", channels="0:8", steps=4, **SLOW)
    in_flight_seen: list[int] = []
    manifest_seen: list[int] = []
    submit = executor._submit

    def recording_submit(pending, in_flight, limit, shipped):
        submit(pending, in_flight, limit, shipped)
        in_flight_seen.append(len(in_flight))

    monkeypatch.setattr(executor, "_submit", recording_submit)
    puts: list[object] = []
    monkeypatch.setattr(ray, "put", lambda value, _put=ray.put: puts.append(value) or _put(value))
    shared = {"merged scan": list(range(1000))}  # as every examples unit carries the same partial
    units = [replace(u, inputs=shared) for u in prepare(spec).plan.units]
    report = executor.run(
        units, Store(spec.out), on_progress=lambda u, o: manifest_seen.append(len(manifest_units(spec.out)))
    )
    assert report.done == 8
    assert max(in_flight_seen) == 2 * len(executor.workers)  # the default bound, reached
    assert manifest_seen == list(range(1, 9))  # each unit is on disk when it is reported
    assert puts == [shared]  # shared inputs travel once, not once per call


def test_killed_worker_is_replaced_and_each_unit_written_once(executor, tmp_path):
    spec = tiny_spec(tmp_path / "out", channels="0:6", steps=6, **SLOW)
    units = prepare(spec).plan.units
    store = CountingStore(spec.out)
    victim = executor.worker_pids(timeout=120)[0]
    killed: list[int] = []

    def kill_once(unit, outcome):
        if not killed:  # both workers hold calls now: the victim dies mid-unit
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    report = executor.run(units, store, on_progress=kill_once)
    pids_after = executor.worker_pids(timeout=120)
    assert report.failed == []
    assert report.done == len(units) == 6
    assert report.retried >= 1
    assert store.writes == {u.key: 1 for u in units}
    assert victim not in pids_after and len(pids_after) == 2
    reread = Store(spec.out)
    assert all(reread.has(u.key) for u in units)
    assert max(e.attempts for e in reread.entries()) == 2


@ray.remote
class DiesBeforeStart:
    """A worker whose process ends while it starts, as one on a node that goes away would."""

    def __init__(self, *_args) -> None:
        os._exit(1)

    def pid(self) -> int:
        return os.getpid()


def test_workers_lost_before_they_start_stop_the_job_after_the_bound(cluster, tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path / "out", channels="0:2", steps=2, workers=1)
    monkeypatch.setattr("atlas.run.executor.UnitWorker", DiesBeforeStart)
    pool = Executor(spec, WorkerPlan(1, cpus=1, gpus=0), start_timeout=120)
    created = []
    new_worker = pool._new_worker
    monkeypatch.setattr(pool, "_new_worker", lambda: created.append(1) or new_worker())
    lost = MAX_LOST_BEFORE_START_PER_WORKER + 1
    try:
        with pytest.raises(ExecuteError, match=rf"{lost} workers were lost before they started") as err:
            pool.run(prepare(spec).plan.units, Store(spec.out))
    finally:
        pool.shutdown()
    assert "their nodes keep going away" in str(err.value)  # the problem
    assert "idle_timeout_minutes" in str(err.value)  # and where the fix lies
    assert len(created) == MAX_LOST_BEFORE_START_PER_WORKER  # replaced that often, then stopped
    assert manifest_units(spec.out) == []  # nothing ran, nothing recorded as failed


def test_nan_unit_is_recorded_failed_and_the_others_finish(cluster, tmp_path):
    spec_path = write_spec(
        tmp_path / "poison.toml",
        tmp_path / "out",
        model="module:faultmodels:poisoned_cnn",
        layer="poisoned",
        channels=f"{POISONED_CHANNEL - 1}:{POISONED_CHANNEL + 2}",
    )
    result = CliRunner().invoke(main, ["run", str(spec_path), "--no-site"])
    assert result.exit_code == 1, result.output
    assert "2 units done" in result.output and "1 failed" in result.output
    assert f"failed: render poisoned {POISONED_CHANNEL}" in result.output
    store = Store(tmp_path / "out")
    failed = [e for e in store.entries() if e.status == "failed"]
    assert [e.channels for e in failed] == [(POISONED_CHANNEL,)]
    assert failed[0].attempts == 1  # deterministic: not retried
    assert "nan" in failed[0].reason.lower() or "diverged" in failed[0].reason
    status = CliRunner().invoke(main, ["status", str(spec_path)])
    assert "done: 2" in status.output and "failed: 1" in status.output
    assert f"render poisoned {POISONED_CHANNEL}:" in status.output


def test_corrupt_and_truncated_shards_are_recomputed(executor, tmp_path):
    spec = tiny_spec(tmp_path / "out", channels="0:3", **SLOW)
    first = run_units(executor, spec)
    assert first.failed == [] and first.done == 3
    before = shard_digests(spec.out)
    entries = sorted(Store(spec.out).entries(), key=lambda e: e.channels)
    truncated, flipped, intact = (spec.out / e.path for e in entries)
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    store = Store(spec.out)
    assert [store.has(e.key) for e in entries] == [False, False, True]
    keys = [e.key for e in entries]
    assert store.pending(keys) == keys[:1]  # a rerun trusts sizes: only the truncated shard shows
    assert sorted(store.verify()) == sorted(keys[:2])  # `atlas verify` reads every checksum
    store.forget(store.verify())

    second = run_units(executor, spec)
    assert (second.done, second.skipped, second.failed) == (2, 1, [])
    assert shard_digests(spec.out) == before
    assert all(pq.read_table(path).num_rows == 1 for path in (truncated, flipped, intact))


def test_killed_driver_rerun_computes_only_missing_units(cluster, executor, tmp_path):
    total = 6
    spec_path = write_spec(
        tmp_path / "slow.toml", tmp_path / "killed", channels=f"0:{total}", steps=8, **SLOW
    )
    log = tmp_path / "driver.log"
    env = env_with_tests_on_path() | {"RAY_ADDRESS": cluster, "ATLAS_TEST_SLOW_FORWARD": "0.15"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "atlas.cli", "run", str(spec_path), "--no-site"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    deadline = time.monotonic() + 180
    try:
        while len(manifest_units(tmp_path / "killed")) < 2:
            assert driver.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the driver finished no unit in 180 s"
            time.sleep(0.2)
    finally:
        driver.kill()
        driver.wait()
    survived = len(manifest_units(tmp_path / "killed"))
    assert 2 <= survived < total, "kill the driver mid-run: slow the units down if this fails"

    spec = load_spec(spec_path)
    rerun = run_job(spec, build=False)
    assert (rerun.done, rerun.skipped, rerun.failed) == (total - survived, survived, [])

    clean = run_units(executor, spec.replace(out=tmp_path / "clean"))
    assert clean.done == total
    killed, reference = read_shards(tmp_path / "killed"), read_shards(tmp_path / "clean")
    assert killed.keys() == reference.keys()
    for key, table in reference.items():
        assert run_differences(killed[key], table) == [], f"unit {key} differs from the uninterrupted run"
