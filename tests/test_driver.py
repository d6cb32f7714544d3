"""The one driver loop (atlas.run.driver): what it runs, skips, commits and reports, and the one
preamble of every command that writes (output rules, lease) however its body ends."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest
from raytools import tiny_spec

import atlas
from atlas.kinds.render import RenderWork
from atlas.plan.units import make_unit
from atlas.run.driver import Driver, checked, writing
from atlas.store.lease import LeaseError
from atlas.store.outdir import OutputFolderError
from atlas.store.store import Store

PACKAGE = Path(atlas.__file__).parent


def _units(spec, count: int):
    return [make_unit("digest", "conv2", (c,), RenderWork(spec.render)) for c in range(count)]


def _table(unit) -> dict[str, pa.Table]:
    return {"render": pa.table({"unit_key": [unit.key], "channel": [unit.channels[0]]})}


class _Recorder:
    def __init__(self) -> None:
        self.heard: list[tuple[str, str]] = []

    def __call__(self, unit, outcome: str) -> None:
        self.heard.append((unit.key, outcome))


class _FakeExecutor:
    """Stands in for the Ray executor: commits each unit it is given, as the real one does."""

    def __init__(self) -> None:
        self.given: list[list[str]] = []

    def run(self, units, store, on_progress=None, result=None):
        self.given.append([u.key for u in units])
        for unit in units:
            store.write_unit_tables(unit.key, unit.kind, unit.layer, _table(unit))
            result.done += 1
            if on_progress:
                on_progress(unit, "done")
        return result

    def shutdown(self) -> None:
        self.given.append(["shutdown"])


def test_the_loop_runs_the_pending_skips_the_stored_and_reruns_the_damaged(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path / "out")
    units = _units(spec, 4)
    store = Store(spec.out)
    store.acquire()
    for unit in units[:2]:
        store.write_unit_tables(unit.key, unit.kind, unit.layer, _table(unit))
    store.flush()
    tick, executor = _Recorder(), _FakeExecutor()
    driver = Driver(spec, store, tick=tick, executor=executor)
    driver.run(units)
    assert executor.given == [[u.key for u in units[2:]]]
    assert driver.result.skipped == 2 and driver.result.done == 2
    assert tick.heard == [(u.key, "skipped") for u in units[:2]] + [(u.key, "done") for u in units[2:]]

    shard = next(Path(spec.out).rglob("*.parquet"))  # damage one committed shard
    shard.write_bytes(shard.read_bytes()[:-4] + b"oops")
    damaged = [u for u in units if store.entry(u.key).tables["render"]["path"] in str(shard)]
    again = Driver(spec, store, executor=_FakeExecutor())
    again.run(units)
    assert again.executor.given == [[u.key for u in damaged]] and again.result.skipped == 3
    forced = Driver(spec, store, force=True, executor=_FakeExecutor())
    forced.run(units)
    assert forced.executor.given == [[u.key for u in units]]
    forced.shutdown()
    assert forced.executor is None
    store.release()


def test_units_the_driver_computes_itself_are_committed_counted_and_announced(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path / "out")
    first, second = _units(spec, 2)
    with writing(checked(spec)) as store:
        tick = _Recorder()
        driver = Driver(spec, store, tick=tick)
        assert driver.needed(first)
        driver.write(first, _table(first))
        assert not driver.needed(first)  # stored now: skipped, and heard as such
        driver.announce([second])
    assert tick.heard == [(first.key, "done"), (first.key, "skipped"), (second.key, "planned")]
    assert driver.result.done == 1 and driver.result.skipped == 1
    assert Store(spec.out).read_unit(first.key, "render").num_rows == 1


def test_the_preamble_releases_the_lease_however_the_body_ends(tmp_path: Path) -> None:
    spec = checked(tiny_spec(tmp_path / "out"))
    with pytest.raises(RuntimeError, match="body failed"), writing(spec):
        with pytest.raises(LeaseError):  # held while the body runs: a second driver is refused
            Store(spec.out).acquire()
        raise RuntimeError("body failed")
    other = Store(spec.out)
    other.acquire()  # released: the next driver takes it
    other.release()


def test_the_preamble_refuses_a_folder_that_holds_other_files_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.tex").write_text("not an atlas")
    with pytest.raises(OutputFolderError):
        checked(tiny_spec(out))
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def _classes_with_a_pending_loop() -> set[str]:
    found = set()
    for path in (PACKAGE / "run").rglob("*.py"), (PACKAGE / "kinds").rglob("*.py"):
        for file in path:
            for node in ast.walk(ast.parse(file.read_text())):
                protocol = isinstance(node, ast.ClassDef) and any(
                    isinstance(base, ast.Name) and base.id == "Protocol" for base in node.bases
                )
                if (
                    isinstance(node, ast.ClassDef)
                    and not protocol
                    and any(
                        isinstance(item, ast.FunctionDef) and item.name in ("pending", "needed")
                        for item in node.body
                    )
                ):
                    found.add(f"{file.relative_to(PACKAGE.parent)}:{node.name}")
    return found


def test_jobs_timelines_and_atlas_stages_share_the_one_loop() -> None:
    assert _classes_with_a_pending_loop() == {"atlas/run/driver.py:Driver"}
    for module in ("job.py", "timeline.py"):
        source = (PACKAGE / "run" / module).read_text()
        assert "Driver(" in source and "writing(" in source and "store.acquire()" not in source
    # the activation-atlas stage is driven by the job's driver (its Steps protocol is the Driver's)
    assert (
        "run_atlas(spec, prepared.facts.digest, driver.store, scans, driver, context)"
        in (PACKAGE / "run" / "phases.py").read_text()
    )
