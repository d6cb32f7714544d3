"""Timing and machine helpers shared by the benchmark scripts.

Timings on a shared machine are noisy, so every comparison runs its candidates interleaved
(A, B, A, B, ... with the order rotated each round) and reports medians: a burst of load from
another process then hits both sides instead of one.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a wall-clock timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds per call of each candidate: wall clock, and CPU time of this process.

    On a shared CPU the CPU time is the steadier figure (another process's load delays us
    without adding to our CPU time) as long as torch runs one thread: with more, its threads
    also burn CPU while they wait for each other. On a GPU only the wall clock means anything.
    """

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def medians(self, clock: str) -> dict[str, float]:
        return {name: median(values) for name, values in getattr(self, clock).items()}


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds one call of ``run`` takes, GPU work included in the wall time."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()  # user + system, all threads
    run()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    candidates: Mapping[str, Callable[[], object]], repeats: int, device: torch.device
) -> Timings:
    """Time each candidate ``repeats`` times, alternating between them; one warm-up call each first."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(candidates)
    for name in names:
        candidates[name]()
    timings = Timings({name: [] for name in names}, {name: [] for name in names})
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = timed(candidates[name], device)
            timings.wall[name].append(wall)
            timings.cpu[name].append(cpu)
    return timings


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """'median (min-max)' in seconds, for tables that show how noisy a figure was."""
    return f"{median(values):.3g} s ({min(values):.3g}-{max(values):.3g})"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: torch.device) -> dict[str, object]:
    """What the figures were measured on: they mean little without it."""
    info: dict[str, object] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
