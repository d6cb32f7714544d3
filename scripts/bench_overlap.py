"""Stalls between units: where a worker's time between two optimizations goes, and what the
writer thread and the pipelined calls give back.

Three figures, on render units of the appendix's recipe (channel, neuron, negative, 4 diverse):
- between passes: per unit, the host-side work that follows its optimization (PNG encoding and
  the `render` table, the quality record's forward passes, the Parquet shards) against one
  pass's optimization;
- one call of several units in several passes, as a worker runs it (``run_units`` and the shard
  writes), serially and with the writer thread (``WorkerContext.overlap``), against the
  optimization alone: the stall share is the part of the call's wall time outside it;
- several calls one after another, as a CPU worker runs them, against the same calls on two
  threads through ``WorkerCalls`` with the writer thread, as a GPU worker runs them (the next call
  optimizes while the last one's PNGs and shards are written).

Every comparison is interleaved (``bench_common.interleaved``), and the results of both ways are
checked equal, table for table.

    PYTHONPATH=. python scripts/bench_overlap.py --model torchvision:googlenet --layer inception4a
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

import torch
from bench_common import interleaved, machine, median

from atlas.kinds.render import rendered_table
from atlas.models import LoadedModel, load_model
from atlas.optvis.recipes import render_channel_sets
from atlas.plan.spec import ExamplesSpec, JobSpec, LayerSpec, ModelSpec, RenderSpec
from atlas.plan.units import ModelFacts, Unit, make_plan
from atlas.quality.record import quality_table
from atlas.run.worker import Outcome, WorkerCalls, WorkerContext, run_units
from atlas.store.location import Location, open_location
from atlas.store.store import write_shards

RECIPE = RenderSpec(objectives=("channel", "neuron", "negative", "diversity"), diversity=4, batch=16)


def plan_units(model: LoadedModel, layer: str, render: RenderSpec, units: int, per_unit: int) -> list[Unit]:
    """``units`` render units of ``per_unit`` channels each, planned as a job plans them."""
    spec = JobSpec(
        name="bench",
        out=tempfile.mkdtemp(),
        model=ModelSpec(model.name),
        layers=(LayerSpec(layer, tuple(range(units * per_unit))),),
        render=replace(render, channels_per_unit=per_unit),
        examples=ExamplesSpec(enabled=False),
    )
    return list(make_plan(spec, ModelFacts(model.digest, {layer: model.channels(layer)})).units)


def written(ctx: WorkerContext, units: Sequence[Unit], where: Location) -> list[Outcome]:
    """One worker call: the units' outcomes, then their shards staged, as ``UnitWorker.run_many``."""
    outcomes = run_units(ctx, units)
    for unit, tables in zip(units, outcomes, strict=True):
        write_shards(where, unit.key, tables)
    return outcomes


def pipelined(calls: WorkerCalls, batches: Sequence[Sequence[Unit]], where: Location) -> list[Outcome]:
    """The calls on two threads, as a GPU worker's actor runs the two calls the driver queues."""

    def call(units: Sequence[Unit]) -> list[Outcome]:
        outcomes, _ = calls.outcomes(units)
        for unit, tables in zip(units, outcomes, strict=True):
            write_shards(where, unit.key, tables)
        return outcomes

    with ThreadPoolExecutor(2) as pool:
        return [outcome for outcomes in pool.map(call, batches) for outcome in outcomes]


def check_equal(a: list[Outcome], b: list[Outcome]) -> None:
    for one, other in zip(a, b, strict=True):
        if set(one) != set(other) or not all(one[kind].equals(other[kind]) for kind in one):
            raise SystemExit("the overlapped run wrote other tables than the serial one")


def between_passes(model: LoadedModel, units: list[Unit], images_per_pass: int, where: Location) -> None:
    render = units[0].work.render
    requests = [(unit.layer, unit.channels) for unit in units]
    seconds: dict[str, list[float]] = {"optimize": [], "png": [], "quality": [], "parquet": []}
    for _ in range(2):  # the first round warms up
        for name in seconds:
            seconds[name].clear()
        start = time.perf_counter()
        sets = render_channel_sets(model, requests, render, images_per_pass)
        seconds["optimize"].append((time.perf_counter() - start) / len(units))
        for unit, rows in zip(units, sets, strict=True):
            tables = {}
            for name, build in (("png", rendered_table), ("quality", partial(quality_table, model))):
                start = time.perf_counter()
                tables[name] = build(rows, unit.key)
                seconds[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            write_shards(where, unit.key, tables)
            seconds["parquet"].append(time.perf_counter() - start)
    images = len(sets[0])
    ms = {name: 1000 * median(values) for name, values in seconds.items()}
    print(
        f"between passes, per unit of {images} images: PNG + render table {ms['png']:.0f} ms, quality "
        f"record {ms['quality']:.0f} ms, Parquet shards {ms['parquet']:.0f} ms; its optimization "
        f"{ms['optimize']:.0f} ms (passes of at most {images_per_pass} images)"
    )


def side_by_side(
    name: str, candidates: dict[str, Callable[[], list[Outcome]]], optimize: Callable[[], object], args
) -> None:
    """The candidates and the optimization alone, interleaved; wall and CPU medians, stall shares."""
    results: dict[str, list[Outcome]] = {}

    def kept(label: str) -> Callable[[], None]:
        return lambda: results.__setitem__(label, candidates[label]())

    timed = {label: kept(label) for label in candidates}
    timings = interleaved({**timed, "optimization alone": optimize}, args.repeats, torch.device("cpu"))
    first, *others = results.values()
    for other in others:
        check_equal(first, other)
    wall, cpu = timings.medians("wall"), timings.medians("cpu")
    alone = wall.pop("optimization alone")
    figures = [
        f"{label} {wall[label]:.2f} s wall ({cpu[label]:.2f} s CPU), stall share "
        f"{max(wall[label] - alone, 0) / wall[label]:.1%}"
        for label in candidates
    ]
    print(f"{name}: optimization alone {alone:.2f} s; " + "; ".join(figures))
    serial, overlapped = (wall[label] for label in candidates)
    print(f"{name}: overlapped / serial wall x{overlapped / serial:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-cnn")
    parser.add_argument("--layer", default=None, help="default: conv2 (tiny-cnn), inception4a")
    parser.add_argument("--units", type=int, default=4, help="render units per call")
    parser.add_argument("--channels-per-unit", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images-per-pass", type=int, default=16)
    parser.add_argument(
        "--calls", type=int, default=2, help="calls of --units units for the pipelined figure"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, weights="none") if ":" in args.model else load_model(args.model)
    layer = args.layer or ("conv2" if args.model == "tiny-cnn" else "inception4a")
    render = replace(RECIPE, steps=args.steps, size=args.size)
    units = plan_units(model, layer, render, args.units * args.calls, args.channels_per_unit)
    print(machine(model.device))
    print(
        f"{args.model} {layer}, {args.size} px, {args.steps} steps, {args.channels_per_unit} channels x "
        f"7 images a unit, {args.units} units a call, {args.images_per_pass} images a pass"
    )
    where = open_location(tempfile.mkdtemp())
    between_passes(model, units[: args.units], args.images_per_pass, where)

    def ctx(overlap: bool) -> WorkerContext:
        return WorkerContext(
            model=model,
            examples=ExamplesSpec(enabled=False),
            images_per_pass=args.images_per_pass,
            overlap=overlap,
        )

    serial, overlap = ctx(False), ctx(True)
    one_call = units[: args.units]
    requests = [(unit.layer, unit.channels) for unit in units]
    side_by_side(
        "one call",
        {
            "serial": partial(written, serial, one_call, where),
            "writer thread": partial(written, overlap, one_call, where),
        },
        partial(render_channel_sets, model, requests[: args.units], render, args.images_per_pass),
        args,
    )
    batches = [units[i : i + args.units] for i in range(0, len(units), args.units)]
    side_by_side(
        f"{args.calls} calls",
        {
            "one after another": lambda: [o for batch in batches for o in written(serial, batch, where)],
            "pipelined": partial(pipelined, WorkerCalls(overlap), batches, where),
        },
        lambda: [
            render_channel_sets(model, requests[i : i + args.units], render, args.images_per_pass)
            for i in range(0, len(units), args.units)
        ],
        args,
    )


if __name__ == "__main__":
    main()
