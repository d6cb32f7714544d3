"""Sprite composition in worker processes: the one CPU-heavy step of a site build.

Decoding images and encoding sprites is most of a build's CPU time, and a Python thread pool
does not help (the Python side of Pillow holds the GIL). Jobs go to processes in batches, with
a bounded number of batches in flight, so memory stays bounded by a few batches plus the units
being read. With one worker everything runs inline, which small builds and tests prefer.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from types import TracebackType

from atlas.site.sheets import Box, Placement, write_composed

BATCH = 24  # sprites per task: large enough to amortize pickling, small enough to spread work
MAX_AUTO_WORKERS = 8
SMALL_BUILD_CHANNELS = 512  # below this, starting processes costs more than it saves


def auto_workers(channels: int) -> int:
    """One inline worker for small builds, else one process per core (at most eight)."""
    if channels < SMALL_BUILD_CHANNELS:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


def _start_pool(workers: int) -> ProcessPoolExecutor | None:
    """A spawn-based pool, or None (work inline) where processes cannot be started."""
    try:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    except (OSError, NotImplementedError) as err:  # e.g. no /dev/shm for the pool's semaphores
        warnings.warn(f"composing sprites inline: cannot start worker processes ({err})", stacklevel=3)
        return None


class ComposeJobs:
    """Queue of images to compose; `drain` waits for all of them and raises the first failure."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._pool = _start_pool(workers) if workers > 1 else None
        self._limit = 2 * workers
        self._batch: list[tuple[Path, int, int, Sequence[Placement], Sequence[Box]]] = []
        self._running: deque[Future] = deque()

    def submit(
        self,
        path: Path,
        width: int,
        height: int,
        placements: Sequence[Placement],
        boxes: Sequence[Box] = (),
    ) -> None:
        self._batch.append((path, width, height, list(placements), list(boxes)))
        if len(self._batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        if self._pool is None:
            write_composed(batch)
            return
        while len(self._running) >= self._limit:
            self._running.popleft().result()
        self._running.append(self._pool.submit(write_composed, batch))

    def drain(self) -> None:
        """Finish every queued image (call before a page that shows them is considered done)."""
        self._flush()
        while self._running:
            self._running.popleft().result()

    def __enter__(self) -> ComposeJobs:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=error is not None)
