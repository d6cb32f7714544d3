"""No stalls between units: a unit's host-side work (PNG encoding, tables) runs on the worker's
writer thread while the next pass, or the next call, optimizes, and changes nothing in what is
written; a failure there is that unit's failure."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from raytools import tiny_spec

import atlas.kinds.render as render_kind
import atlas.optvis.recipes as recipes
from atlas.kinds.render import DirectionsWork
from atlas.models import load_model
from atlas.plan.kinds import UNIT_KINDS
from atlas.plan.units import ModelFacts, make_plan, make_unit
from atlas.run.worker import UnitFailed, WorkerCalls, WorkerContext, make_context, run_unit, run_units

WAIT_S = 60.0  # a wait that ends only if the two sides really run at once


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-cnn")


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    spec = tiny_spec(tmp_path_factory.mktemp("overlap") / "out", channels="0:6", steps=3)
    render = replace(spec.render, objectives=("channel", "negative", "diversity"), diversity=2)
    return spec.replace(render=replace(render, channels_per_unit=2))


@pytest.fixture(scope="module")
def units(spec, model):
    return list(make_plan(spec, ModelFacts(model.digest, {"conv2": 32})).units)


def context(spec, model, overlap: bool, images_per_pass: int = 4) -> WorkerContext:
    """4 images a pass: each unit (2 channels x 4 images) takes two passes of its own."""
    return WorkerContext(
        model=model, examples=spec.examples, images_per_pass=images_per_pass, overlap=overlap
    )


def test_the_tables_are_byte_for_byte_those_of_the_serial_run(spec, model, units) -> None:
    directions = make_unit(model.digest, "conv2", (), DirectionsWork(spec.render, 2))
    serial = run_units(context(spec, model, overlap=False), [*units, directions])
    overlapped = run_units(context(spec, model, overlap=True), [*units, directions])
    for unit, alone, beside in zip([*units, directions], serial, overlapped, strict=True):
        assert set(alone) == set(beside) == set(UNIT_KINDS.get(unit.kind).tables)
        for kind in alone:
            assert beside[kind].equals(alone[kind]), (unit.label, kind)
            assert beside[kind].column("unit_key").to_pylist() == [unit.key] * alone[kind].num_rows
        images = beside["render"].column("image").to_pylist()
        assert all(png.startswith(b"\x89PNG") for png in images)


def test_a_finished_unit_is_encoded_while_the_next_pass_optimizes(spec, model, units, monkeypatch) -> None:
    second_pass = threading.Event()
    passes = []
    encoded_beside: list[bool] = []
    render_pass, build = recipes._render, render_kind.rendered_table

    def counted_pass(*args):
        passes.append(1)
        if len(passes) == 3:  # the first pass of the second unit
            second_pass.set()
        return render_pass(*args)

    def waiting_table(images, key):
        if key == units[0].key:  # waits for the second unit's optimization to begin
            encoded_beside.append(second_pass.wait(WAIT_S))
        return build(images, key)

    monkeypatch.setattr(recipes, "_render", counted_pass)
    monkeypatch.setattr(render_kind, "rendered_table", waiting_table)
    outcomes = run_units(context(spec, model, overlap=True), units[:2])
    assert encoded_beside == [True] and all(isinstance(o, dict) for o in outcomes)


def test_a_failure_in_the_writer_fails_that_unit_only(spec, model, units, monkeypatch) -> None:
    build = render_kind.rendered_table

    def planted(images, key):
        if key == units[1].key:
            raise OSError("disk full while encoding")
        return build(images, key)

    monkeypatch.setattr(render_kind, "rendered_table", planted)
    for overlap in (False, True):
        ctx = context(spec, model, overlap=overlap)
        outcomes = run_units(ctx, units)
        assert isinstance(outcomes[1], UnitFailed), outcomes[1]
        assert (
            str(outcomes[1])
            == f"{units[1].label}: its render table failed: OSError: disk full while encoding"
        )
        assert all(isinstance(outcomes[i], dict) and outcomes[i]["render"].num_rows == 8 for i in (0, 2))
        with pytest.raises(UnitFailed, match="disk full"):
            run_unit(ctx, units[1])


def test_a_call_finishes_its_host_work_while_the_next_call_optimizes(spec, model, units, monkeypatch) -> None:
    """Two calls on one worker (an actor's threads): the second optimizes while the first's
    PNGs are encoded, and both get what they get one after the other."""
    serial = run_units(context(spec, model, overlap=False, images_per_pass=64), units)
    calls = WorkerCalls(context(spec, model, overlap=True, images_per_pass=64))
    second_call, encoding = threading.Event(), threading.Event()
    encoded_beside: list[bool] = []
    render_pass, build = recipes._render, render_kind.rendered_table

    def flagged_pass(model, parts, settings):
        if threading.current_thread().name == "second call":
            second_call.set()
        return render_pass(model, parts, settings)

    def waiting_table(images, key):
        if key == units[0].key:
            encoding.set()
            encoded_beside.append(second_call.wait(WAIT_S))
        return build(images, key)

    monkeypatch.setattr(recipes, "_render", flagged_pass)
    monkeypatch.setattr(render_kind, "rendered_table", waiting_table)
    results = {}
    first = threading.Thread(target=lambda: results.update(first=calls.outcomes(units[:1])[0]))
    first.start()
    assert encoding.wait(WAIT_S)  # the first call took the device first and has a unit to encode
    second = threading.Thread(
        target=lambda: results.update(second=calls.outcomes(units[1:])[0]), name="second call"
    )
    second.start()
    first.join(2 * WAIT_S)
    second.join(2 * WAIT_S)
    assert encoded_beside == [True]
    for alone, beside in zip(serial, results["first"] + results["second"], strict=True):
        assert all(beside[kind].equals(alone[kind]) for kind in alone)


def test_the_writer_thread_is_on_only_where_an_accelerator_is(spec) -> None:
    assert make_context(spec, "cpu").overlap is False


@pytest.mark.slow
def test_a_gpu_worker_runs_two_calls_at_once_and_commits_the_serial_tables(
    spec, model, units, tmp_path
) -> None:
    """A Ray actor with a GPU that Ray counts (it computes on the CPU) takes two calls at once;
    every unit is committed with the tables a serial run gives."""
    from raytools import local_ray

    from atlas.run.executor import Executor, WorkerPlan
    from atlas.store.store import Store

    serial = run_units(context(spec, model, overlap=False), units)
    job = spec.replace(out=tmp_path / "out", execute=replace(spec.execute, units_per_call=1, workers=1))
    with local_ray(num_cpus=2, num_gpus=1):
        pool = Executor(job, WorkerPlan(1, cpus=1, gpus=1))
        try:
            result = pool.run(units, Store(job.out))
        finally:
            pool.shutdown()
    assert result.done == len(units) and not result.failed
    store = Store(job.out)
    for unit, alone in zip(units, serial, strict=True):
        assert (
            store.read_unit(unit.key, "render").select(alone["render"].column_names).equals(alone["render"])
        )
