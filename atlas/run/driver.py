"""The one driver loop, and the one preamble of every command that writes to a store.

`Driver` asks the store what is pending, runs it (on the executor's workers, or in-process for a
stage's own units), has every finished unit committed to the store, and ticks the progress
callback: jobs (atlas.run.job), timelines (atlas.run.timeline) and activation-atlas stages
(atlas.run.actatlas) all drive their units through it.

`checked` applies the output-folder rules before any work; `writing` claims the output, opens the
store and holds its lease for the body, releasing it (and the GPU nodes asked of the autoscaler)
however the body ends.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from atlas.plan.spec import JobSpec
from atlas.plan.units import Unit
from atlas.run.report import JobResult
from atlas.store.location import is_uri
from atlas.store.outdir import check_output, claim_output
from atlas.store.store import Store, open_store

if TYPE_CHECKING:
    from atlas.run.executor import Executor

Tick = Callable[[Unit, str], None]


@dataclass
class Driver:
    """Runs exactly the pending units; starts Ray only when something is pending.

    A local store's checksums are checked once per run, here: a finished job reruns in a second,
    a damaged shard is recomputed. A bucket's shards are trusted by size (no download of every
    shard: `atlas verify OUT` reads them).
    """

    spec: JobSpec
    store: Store
    result: JobResult = field(default_factory=JobResult)
    force: bool = False
    tick: Tick | None = None
    executor: Executor | None = None

    def _report(self, unit: Unit, outcome: str) -> None:
        if self.tick:
            self.tick(unit, outcome)

    def pending(self, units: Sequence[Unit]) -> list[Unit]:
        """The units still to compute; the others are counted (and reported) as skipped."""
        verify = self.store.location.local
        todo = set(self.store.pending([u.key for u in units], force=self.force, verify=verify))
        for unit in units:
            if unit.key not in todo:
                self.result.skipped += 1
                self._report(unit, "skipped")
        return [u for u in units if u.key in todo]

    def execute(self, units: Sequence[Unit], spec: JobSpec | None = None) -> None:
        """Run `units` on the executor's workers (started at the first need, from `spec`, by
        default the driver's) and commit each one's tables as it arrives."""
        if not units:
            return
        if self.executor is None:
            from atlas.run.executor import Executor

            self.executor = Executor(spec or self.spec)
        self.executor.run(units, self.store, on_progress=self.tick, result=self.result)
        self.store.flush()

    def run(self, units: Sequence[Unit]) -> None:
        self.execute(self.pending(units))

    def needed(self, unit: Unit) -> bool:
        """Whether a unit the driver computes itself (a stage's layout or grid) is to be computed."""
        return bool(self.pending([unit]))

    def write(self, unit: Unit, tables: dict[str, pa.Table]) -> None:
        """Commit a unit the driver computed itself."""
        self.store.write_unit_tables(unit.key, unit.kind, unit.layer, tables)
        self.result.done += 1
        self._report(unit, "done")

    def announce(self, units: Sequence[Unit]) -> None:
        """Units that became known during the run, beyond the progress total ("planned")."""
        for unit in units:
            self._report(unit, "planned")

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()
            self.executor = None


def checked(spec: JobSpec) -> JobSpec:
    """The spec with its output folder checked by the output-folder rules (atlas.store.outdir),
    before any work (even loading the model); a bucket prefix has no such rules."""
    return spec if is_uri(spec.out) else spec.replace(out=check_output(spec.out, spec.name))


@contextmanager
def writing(spec: JobSpec, store_at: Callable[[str], Store] = open_store) -> Iterator[Store]:
    """Claim the (checked) output folder, open its store and hold the store's lease for the body.

    The lease is released however the body ends, and so are the GPU nodes the job asked the
    autoscaler for (idle nodes added for it may go). One driver per store: leftovers of a killed
    driver are cleaned up when the lease is taken.
    """
    if not is_uri(spec.out):
        claim_output(spec.out, spec.name)  # only now: a spec that fails its checks leaves no folder
    store = store_at(spec.out)
    store.acquire()
    try:
        yield store
    finally:
        store.release()
        _release_gpus()


def _release_gpus() -> None:
    """Hand back the GPUs asked of the autoscaler, if anything asked (importing the autoscaler
    module would start talking to Ray, so a job that never used it does not)."""
    autoscale = sys.modules.get("atlas.run.autoscale")
    if autoscale is not None:
        autoscale.GPUS.release()
