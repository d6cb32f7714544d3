"""The job runner asks the store once what is pending and hands exactly that to the executor."""

from __future__ import annotations

import pyarrow as pa

from atlas.plan.spec import parse_spec
from atlas.plan.units import ModelFacts, make_plan
from atlas.run.driver import Driver
from atlas.run.report import JobResult
from atlas.store.store import Store, UnitRecord

SPEC = """
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
channels = "0:6"
[render]
channels_per_unit = 2
[examples]
enabled = false
"""


class RecordingExecutor:
    """Stands in for atlas.run.executor.Executor: records what it is given and stores each unit."""

    def __init__(self) -> None:
        self.given: list[list[str]] = []

    def run(self, units, store, on_progress=None, result=None):
        self.given.append([u.key for u in units])
        for unit in units:
            store.write_unit(unit.key, unit.kind, unit.layer, pa.table({"x": [1]}), unit.channels)
            result.done += 1
            if on_progress:
                on_progress(unit, "done")
        return result


def test_only_pending_units_reach_the_executor_and_the_rest_count_as_skipped(tmp_path):
    spec = parse_spec(SPEC)
    units = list(make_plan(spec, ModelFacts("digest", {"conv2": 32})).units)
    store = Store(tmp_path)
    store.write_unit(units[0].key, "render", "conv2", pa.table({"x": [1]}))
    store.write_unit(units[1].key, "render", "conv2", pa.table({"x": [1]}))
    shard = tmp_path / store.entry(units[1].key).path
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))  # same size, wrong checksum: recomputed
    store.commit(UnitRecord.failed(units[2].key, "render", "conv2", "NaN"))  # retried
    outcomes: list[tuple[str, str]] = []
    executor = RecordingExecutor()
    runner = Driver(
        spec, store, JobResult(), tick=lambda u, o: outcomes.append((u.key, o)), executor=executor
    )
    runner.run(units)
    assert executor.given == [[u.key for u in units[1:]]]
    assert (runner.result.done, runner.result.skipped) == (2, 1)
    assert sorted(outcomes) == sorted([(units[0].key, "skipped")] + [(u.key, "done") for u in units[1:]])

    runner.run(units)  # everything is done now: the executor is not called again
    assert len(executor.given) == 1 and runner.result.skipped == 4
    Driver(spec, store, JobResult(), force=True, executor=executor).run(units)
    assert executor.given[-1] == [u.key for u in units]
