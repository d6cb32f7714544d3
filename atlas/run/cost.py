"""What a job costs in GPU-hours (and money), before it runs and while it runs.

Before: `estimate` turns the units left to compute into GPU-hours from measured throughput, a
`Throughput` file written by `calibrate` (a short run of the job's own model and settings on the
machine that will do the work: `atlas calibrate` on a GPU node). While: `Spend` integrates the
GPUs the cluster holds over the job's wall time. A spec budget stops the job when either passes
it: before the first unit for the estimate, after the unit that crossed it for the spend. Either
way every finished unit is in the store and a rerun (with a larger budget) resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from atlas.core.errors import AtlasError
from atlas.plan.kinds import UNIT_KINDS
from atlas.plan.spec import CostSpec, JobSpec
from atlas.plan.units import Unit


class BudgetExceeded(AtlasError):
    """The job's estimated or measured cost passed its budget; finished units are kept."""


class CostError(AtlasError):
    """A throughput file that cannot be used."""


@dataclass(frozen=True)
class Throughput:
    """Measured speed of one device on one model: what GPU-hour estimates are made from."""

    device: str
    model: str
    scan_images_per_s: float  # forward + statistics, images already decoded
    render_image_steps_per_s: float  # optimization steps x images, at the spec's size and batch

    @classmethod
    def load(cls, path: Path, render_batch: int = 8) -> Throughput:
        """Figures `atlas calibrate` wrote, or the `gpu_check.json` of scripts/gpu_check.py (its
        render rate at the measured batch nearest `render_batch`, at or below it if it can)."""
        try:
            raw = json.loads(Path(path).read_text())
            if "scan" in raw and "render" in raw:
                return cls._from_gpu_check(raw, render_batch)
            return cls(**{name: raw[name] for name in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CostError(
                f"cannot read throughput figures from {path} ({err}); write them with "
                "`atlas calibrate JOB -o FILE` (or scripts/gpu_check.py) on the machine type that runs the job"
            ) from err

    @classmethod
    def _from_gpu_check(cls, raw: Mapping[str, Any], render_batch: int) -> Throughput:
        rates = {int(batch): row["image_steps_per_s"] for batch, row in raw["render"]["fp32"].items()}
        batch = max((b for b in rates if b <= render_batch), default=min(rates))
        env = raw.get("env", {})
        return cls(
            env.get("device_name", "gpu_check"),
            "torchvision:googlenet",
            raw["scan"]["images_per_s"],
            rates[batch],
        )

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")


@dataclass(frozen=True)
class Estimate:
    gpu_hours: Mapping[str, float]  # by unit kind

    @property
    def total(self) -> float:
        return sum(self.gpu_hours.values())

    def describe(self, price: float) -> str:
        parts = ", ".join(f"{kind} {hours:.3g}" for kind, hours in self.gpu_hours.items() if hours)
        cost = f" = {price * self.total:.2f} at {price:g} per GPU-hour" if price else ""
        return f"estimated {self.total:.3g} GPU-hours ({parts or 'nothing left'}){cost}"


def unit_seconds(unit: Unit, spec: JobSpec, speed: Throughput) -> float:
    """Device seconds one unit takes, by its kind's registered cost model (atlas.plan.kinds)."""
    kind = UNIT_KINDS.get(unit.kind)
    if kind.cost is None:
        raise CostError(
            f"unit kind {unit.kind!r} registers no cost model, so the job's cost cannot be estimated; "
            "give its register_kind call a `cost`, or run the job without a budget"
        )
    return kind.cost(unit, spec, speed)


def estimate(units: Iterable[Unit], spec: JobSpec, speed: Throughput) -> Estimate:
    hours: dict[str, float] = {}
    for unit in units:
        hours[unit.kind] = hours.get(unit.kind, 0.0) + unit_seconds(unit, spec, speed) / 3600
    return Estimate(hours)


def without_visualizations(units: Iterable[Unit]) -> list[Unit]:
    """`units` less the visualizations: the kinds that write rendered pictures (`render` table)."""
    return [unit for unit in units if "render" not in UNIT_KINDS.get(unit.kind).tables]


def throughput_for(spec: JobSpec) -> Throughput | None:
    return Throughput.load(spec.cost.throughput, spec.render.batch) if spec.cost.throughput else None


def check_estimate(units: Iterable[Unit], spec: JobSpec) -> Estimate | None:
    """Raise BudgetExceeded when the units left would cost more than the budget (if one is set)."""
    cost = spec.cost
    speed = throughput_for(spec)
    if speed is None:
        return None
    found = estimate(units, spec, speed)
    over = _over(cost, found.total)
    if over:
        raise BudgetExceeded(
            f"the job would pass its budget before it starts: {found.describe(cost.price_per_gpu_hour)}, "
            f"over {over}. Nothing was computed; raise cost.budget / cost.budget_gpu_hours, or "
            "plan fewer layers, channels or steps (`atlas plan` prints the estimate)"
        )
    return found


def _over(cost: CostSpec, gpu_hours: float) -> str:
    """Which budget `gpu_hours` passes, as text ('' when none)."""
    if cost.budget_gpu_hours and gpu_hours > cost.budget_gpu_hours:
        return f"the budget of {cost.budget_gpu_hours:g} GPU-hours"
    if cost.budget and cost.price_per_gpu_hour and gpu_hours * cost.price_per_gpu_hour > cost.budget:
        return f"the budget of {cost.budget:g} ({gpu_hours * cost.price_per_gpu_hour:.2f} spent or due)"
    return ""


class Spend:
    """GPU-hours the cluster held since the job started: GPUs present x wall time, summed."""

    def __init__(
        self, cost: CostSpec, gpus: Callable[[], float], clock: Callable[[], float] = time.monotonic
    ):
        self.cost, self.gpus, self.clock = cost, gpus, clock
        self.gpu_hours = 0.0
        self._last = clock()

    def check(self) -> None:
        """Add the time since the last check; raise BudgetExceeded once past the budget."""
        now = self.clock()
        self.gpu_hours += self.gpus() * (now - self._last) / 3600
        self._last = now
        over = _over(self.cost, self.gpu_hours)
        if over:
            raise BudgetExceeded(
                f"the job stopped at {self.gpu_hours:.3g} GPU-hours spent, over {over}. Every "
                "finished unit is stored: rerun with a larger budget to continue where it stopped"
            )

    def watch(self, tick: Callable[[Unit, str], None] | None) -> Callable[[Unit, str], None]:
        """A progress callback that also checks the spend after every unit."""

        def checked(unit: Unit, outcome: str) -> None:
            if tick:
                tick(unit, outcome)
            if outcome in ("done", "failed"):  # not "skipped" or "planned": nothing ran
                self.check()

        return checked


def cluster_gpus() -> float:
    """GPUs the cluster holds now (all billed while the job runs); 0 before Ray starts."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def calibrate(spec: JobSpec, model: Any, repeats: int = 3) -> Throughput:
    """Measure the job's model on this machine: scan batches and a few render steps.

    Uses the spec's batch sizes and render size, so the figures match what its units will do.
    """
    import torch

    from atlas.kinds.examples import BatchScanner
    from atlas.optvis import render_channels
    from atlas.plan.dictionary import attach_layers

    layers = [layer.name for layer in attach_layers(model, spec.layers)]  # a dictionary's K directions
    scanner = BatchScanner(model, layers, spec.examples.k)
    batch = spec.examples.batch_size
    pixels = np.random.default_rng(0).integers(
        0, 256, (batch, model.input_size, model.input_size, 3), np.uint8
    )
    ids = [f"calibration{i}" for i in range(batch)]
    scanner.scan(ids, pixels)  # warm-up: allocations, cudnn autotuning
    _sync(torch, model)
    start = time.perf_counter()
    for _ in range(repeats):
        scanner.scan(ids, pixels)
    _sync(torch, model)
    scan = repeats * batch / (time.perf_counter() - start)

    channels = tuple(range(min(spec.render.batch, model.channels(layers[0]))))
    steps = 4
    settings = replace(spec.render, steps=steps, objectives=("channel",))
    render_channels(model, layers[0], channels[:1], replace(settings, steps=1))  # warm-up
    start = time.perf_counter()
    render_channels(model, layers[0], channels, settings)
    _sync(torch, model)
    render = len(channels) * steps / (time.perf_counter() - start)
    device = torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else "cpu"
    return Throughput(device, spec.model.name, round(scan, 2), round(render, 2))


def _sync(torch: Any, model: Any) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
