"""Dataset scans on Ray Data: decoding on every CPU, the forward pass on a GPU (or CPU) actor pool.

The pipeline, per job::

    pending shards (ids only) -> decode + resize (CPU tasks, as many as the cluster has CPUs)
        -> BatchScanner on an actor pool (one actor per GPU; loads the model once)
        -> one PartialScan per shard, staged in the store by its actor -> the driver commits it

Ray Data streams it: a bounded number of decoded shards is in flight whatever the dataset's size.
When the actors reach the store (a bucket, or a one-machine cluster; `workers_write`) each stages
its shard's tables itself and hands the driver only their small records, as render workers do;
otherwise the driver receives the tables and stages them.

The unit of resumption is today's scan unit, one dataset shard under its content key: a shard's
images travel together through both stages, so its partial is computed whole inside one actor
and committed as soon as it arrives. A killed driver loses only the shards in flight; the rerun
streams only the shards whose keys are not in the store. Partials then merge by a tree of Ray
tasks (`tree_merge`), so the driver never folds thousands of partials itself.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from functools import reduce
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from atlas.core.provenance import provenance, with_provenance
from atlas.data.skipped import KIND as SKIPPED
from atlas.data.skipped import skipped_table
from atlas.data.source import ImageSource, SkippedInput, decode_for_model
from atlas.kinds.examples import BatchScanner, PartialScan
from atlas.kinds.examples.units import ScanWork
from atlas.plan.spec import ExecuteSpec, JobSpec
from atlas.plan.units import Unit
from atlas.run.autoscale import GPUS
from atlas.run.executor import ExecuteError, WorkerPlan, connect, plan_workers, workers_write
from atlas.run.report import JobResult
from atlas.store.location import open_location
from atlas.store.store import Store, UnitRecord, write_shards

# Partials merged per task of the tree reduction: the tree has log_8(shards) levels.
MERGE_FAN_IN = 8


@dataclass(frozen=True)
class ScanPlan:
    """How the cluster is split between decoding and the forward pass."""

    actors: WorkerPlan  # the forward pass: one actor per GPU, or a few CPU actors
    decoders: int  # CPUs left for decoding tasks

    def describe(self) -> str:
        return f"{self.actors.describe()} for the forward pass, {self.decoders} CPU(s) decoding"


def plan_scan(
    execute: ExecuteSpec, resources: Mapping[str, float], node_resources: Sequence[Mapping[str, float]] = ()
) -> ScanPlan:
    """Actors for the forward pass and CPUs for decoding, from the spec and the cluster.

    With GPUs every GPU gets one actor holding one CPU, and every other CPU decodes (the GPU
    eats what many cores decode). Without GPUs the forward pass and decoding share the CPUs
    half and half, at least one each: on a laptop either may be the bottleneck.
    """
    workers = plan_workers(execute, resources, node_resources)
    total_cpus = int(resources.get("CPU", 1))
    if workers.gpus > 0:
        return ScanPlan(workers, max(1, total_cpus - workers.count))
    # Actors hold their CPUs for the whole scan: leave at least one to decode, or nothing moves.
    forward_cpus = max(1, total_cpus // 2) if total_cpus > 1 else 0
    wanted = execute.workers if isinstance(execute.workers, int) else max(1, forward_cpus // 2)
    count = max(1, min(wanted, forward_cpus))
    cpus = float(forward_cpus // count)
    return ScanPlan(WorkerPlan(count, cpus, 0.0), max(1, total_cpus - int(cpus * count)))


def cluster_scan_plan(execute: ExecuteSpec) -> ScanPlan:
    GPUS.ensure(execute)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return plan_scan(execute, ray.cluster_resources(), nodes)


def decode_shards(
    batch: dict[str, np.ndarray], source: ImageSource, size: int, batch_size: int
) -> dict[str, np.ndarray]:
    """CPU stage: each shard's images decoded and resized for the model; bad ones counted by reason.

    Images are decoded in the same chunks of `batch_size` ids as an in-process scan (`sizes`
    keeps how many good images each chunk gave), so the actors run the very same forward
    batches and the partials come out bit for bit the same. Pixels travel as raw bytes
    (n x size x size x 3), so shards of any length fit one column.
    """
    out: dict[str, list] = {"shard": [], "ids": [], "sizes": [], "pixels": [], "counts": [], "skipped": []}
    for shard, ids in zip(batch["shard"], batch["ids"], strict=True):
        good: list[str] = []
        sizes: list[int] = []
        pixels: list[bytes] = []
        counts: Counter[str] = Counter()
        skipped: list[SkippedInput] = []
        for i in range(0, len(ids), batch_size):
            chunk_ids, chunk, chunk_counts, bad = decode_for_model(
                source, list(ids[i : i + batch_size]), size
            )
            counts.update(chunk_counts)
            skipped += bad
            if chunk is not None:
                good += chunk_ids
                sizes.append(len(chunk_ids))
                pixels.append(chunk.tobytes())
        out["shard"].append(int(shard))
        out["ids"].append(json.dumps(good))
        out["sizes"].append(json.dumps(sizes))
        out["pixels"].append(b"".join(pixels))
        out["counts"].append(json.dumps(dict(counts)))
        out["skipped"].append(json.dumps([astuple(s) for s in skipped]))
    columns = {name: np.array(values, dtype=object) for name, values in out.items()}
    columns["shard"] = np.array(out["shard"], np.int64)
    return columns


def scan_directions(model: Any, work: ScanWork) -> dict | None:
    """The random directions a scan scores beside the channels (same seed as their renders)."""
    from atlas.optvis import random_directions

    if not work.directions:
        return None
    return {layer: random_directions(model, layer, work.directions, seed=work.seed) for layer in work.layers}


class ShardScanner:
    """Actor stage: holds the model and scores every shard it is handed, one partial per shard.

    With a `store_uri` it stages each shard's tables in the store and returns their records
    ("shards"); else it returns the tables ("tables") for the driver to write. Credentials for
    a bucket come from this node's own environment, never from the driver.
    """

    def __init__(
        self, spec: JobSpec, work: ScanWork, device: str, keys: Sequence[str], store_uri: str | None = None
    ):
        import torch

        from atlas.models import pick_device

        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(assigned)))
        model = spec.model.load(pick_device(device))
        if any(layer.derived for layer in spec.layers):
            from atlas.plan.dictionary import attach_layers

            attach_layers(model, spec.layers)
        self.collector = None
        if work.vectors:  # the activation atlas's vectors ride on the same forward passes
            from atlas.kinds.actatlas.collect import VectorCollector

            self.collector = VectorCollector(model, work.vectors, work.vector_samples)
        observe = self.collector.observe if self.collector else None
        self.scanner = BatchScanner(
            model, work.layers, work.k, scan_directions(model, work), on_batch=observe
        )
        self.provenance = provenance(str(model.device))
        self.size = model.input_size
        self.keys = keys
        self.location = open_location(store_uri) if store_uri else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, seconds = [], []
        for shard, ids_json, sizes_json, raw, counts_json, skipped_json in zip(
            batch["shard"],
            batch["ids"],
            batch["sizes"],
            batch["pixels"],
            batch["counts"],
            batch["skipped"],
            strict=True,
        ):
            start = time.perf_counter()
            ids = json.loads(ids_json)
            pixels = np.frombuffer(raw, np.uint8).reshape(len(ids), self.size, self.size, 3)
            running = self.scanner.running()
            if self.collector:
                self.collector.reset()
            begin = 0
            for size in json.loads(sizes_json):
                end = begin + size
                self.scanner.add(running, ids[begin:end], pixels[begin:end])
                begin = end
            partial = running.partial()
            stats = Counter(json.loads(counts_json))
            if ids:
                stats["scanned"] += len(ids)
            partial = replace(partial, stats=dict(sorted(stats.items())))
            key = self.keys[int(shard)]
            skipped = [SkippedInput(*item) for item in json.loads(skipped_json)]
            vectors = self.collector.sample.to_table("") if self.collector else None
            tables = shard_tables(key, with_provenance(partial.to_table(), self.provenance), skipped, vectors)
            if self.location is None:
                outputs.append(pickle.dumps(("tables", tables)))
            else:
                outputs.append(pickle.dumps(("shards", write_shards(self.location, key, tables))))
            seconds.append(time.perf_counter() - start)
        return {
            "shard": batch["shard"],
            "output": np.array(outputs, dtype=object),
            "seconds": np.array(seconds, np.float64),
        }


def shard_tables(
    key: str, scan: pa.Table, skipped: Sequence[SkippedInput], vectors: pa.Table | None
) -> dict[str, pa.Table]:
    """A scan unit's tables: its partial scan, the images it skipped and, for an activation atlas,
    its sampled vectors, all keyed to the unit (the actor's environment rides in the metadata)."""
    tables = {
        "scan": scan,
        SKIPPED: skipped_table(skipped, key).replace_schema_metadata(scan.schema.metadata),
    }
    if vectors is not None:
        keys = pa.array([key] * vectors.num_rows, pa.string())
        tables["vectors"] = vectors.set_column(vectors.schema.get_field_index("unit_key"), "unit_key", keys)
    return tables


def _decode_memory(shard_size: int, size: int) -> int:
    """Bytes one decoding task holds: a worker with torch imported, its shard's pixels twice over."""
    return 512 * 2**20 + 2 * shard_size * size * size * 3


def decoded_shards(source: ImageSource, units: Sequence[Unit], input_size: int, decoders: int) -> Any:
    """The first stage alone: a Ray Dataset of the units' shards, decoded (one row per unit, in
    `units` order by its `shard` column)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    rows = [{"shard": i, "ids": list(unit.inputs.source_ids)} for i, unit in enumerate(units)]
    return ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        decode_shards,
        batch_size=1,
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=decoders),
        # Reserving a decoded shard's memory keeps many tasks from decoding at once on a small
        # node, and (remote args differing) keeps Ray Data from fusing the decoding into the
        # actors, where it would run on their few CPUs only.
        memory=_decode_memory(len(units[0].inputs.source_ids), input_size),
        fn_kwargs={"source": source, "size": input_size, "batch_size": units[0].work.batch_size},
    )


def scan_dataset(
    spec: JobSpec,
    source: ImageSource,
    units: Sequence[Unit],
    input_size: int,
    plan: ScanPlan,
    store_uri: str | None = None,
) -> Iterable[tuple[Unit, str, dict, float]]:
    """Stream each scan unit as its shard finishes: (unit, form, output, compute seconds).

    With a `store_uri` the actors stage the unit's shards (form "shards", output their records);
    else form is "tables" and output the tables (partial scan, skipped images) to write.
    """
    import ray.data

    actors = plan.actors
    scanned = decoded_shards(source, units, input_size, plan.decoders).map_batches(
        ShardScanner,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors.count),
        num_cpus=actors.cpus,
        num_gpus=actors.gpus,
        fn_constructor_kwargs={
            "spec": spec,
            "work": units[0].work,
            "device": actors.device,
            "keys": [unit.key for unit in units],
            "store_uri": store_uri,
        },
    )
    for row in scanned.iter_rows():
        form, output = pickle.loads(row["output"])  # written by our own actors just now
        yield units[int(row["shard"])], form, output, float(row["seconds"])


def run_scans(
    spec: JobSpec,
    source: ImageSource,
    units: Sequence[Unit],
    store: Store,
    input_size: int,
    result: JobResult,
    on_progress: Callable[[Unit, str], None] | None = None,
    plan: ScanPlan | None = None,
) -> JobResult:
    """Scan the shards of `units` (the pending ones) and commit each shard's tables as they arrive.

    A scan that stops (a shard whose images crash the model, a lost cluster) records the shards
    it did not finish as failed with the reason; the rerun resumes from the committed ones.
    """
    if not units:
        return result
    connect(spec.execute)
    plan = plan or cluster_scan_plan(spec.execute)
    finished: set[str] = set()
    store_uri = store.uri if workers_write(store) else None
    try:
        for unit, form, output, seconds in scan_dataset(spec, source, units, input_size, plan, store_uri):
            shards = output if form == "shards" else store.write_shards(unit.key, output)
            store.commit(UnitRecord.done(unit.key, unit.kind, unit.layer, shards, seconds=seconds))
            finished.add(unit.key)
            result.done += 1
            if on_progress:
                on_progress(unit, "done")
    except (ray.exceptions.RayError, ExecuteError) as err:
        reason = _last_line(err)
        logging.getLogger(__name__).error("the dataset scan stopped: %s", reason)
        for unit in units:
            if unit.key not in finished:
                store.commit(UnitRecord.failed(unit.key, unit.kind, unit.layer, reason))
                result.failed.append((unit.label, reason))
                if on_progress:
                    on_progress(unit, "failed")
    finally:
        store.flush()
    return result


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


# Merges hold no CPU: they are brief, and must not wait behind workers that keep their CPUs
# for the whole job (the examples phase's actors are up while the scans merge).
@ray.remote(num_cpus=0)
def _merge(*partials: PartialScan) -> PartialScan:
    return reduce(PartialScan.merge, partials)


@ray.remote(num_cpus=0)
def _merge_tables(*tables: pa.Table) -> PartialScan:
    """A leaf of the tree: stored partial tables, merged into one."""
    return reduce(PartialScan.merge, map(PartialScan.from_table, tables))


def tree_merge(store: Store, keys: Sequence[str], fan_in: int = MERGE_FAN_IN) -> PartialScan:
    """Merge the stored partials of `keys` with a tree of Ray tasks (Ray must be connected).

    The driver only reads each shard's table and hands groups of `fan_in` to leaf tasks; merged
    results combine `fan_in` at a time, level by level, as soon as a group is complete (like
    carrying in a base-`fan_in` counter), so at most `fan_in` results wait at each level, and at
    most a few groups of tables are in flight (the driver waits for leaves before reading more).
    """
    if not keys:
        raise ValueError("nothing to merge: no finished scan units")
    levels: list[list[ray.ObjectRef]] = [[]]
    leaves: list[ray.ObjectRef] = []

    def push(ref: ray.ObjectRef, level: int) -> None:
        if level == len(levels):
            levels.append([])
        levels[level].append(ref)
        if len(levels[level]) == fan_in:
            group, levels[level] = levels[level], []
            push(_merge.remote(*group), level + 1)

    for i in range(0, len(keys), fan_in):
        if len(leaves) >= 2 * fan_in:
            _, leaves = ray.wait(leaves, num_returns=len(leaves) - fan_in)
        leaf = _merge_tables.remote(*(store.read_unit(k, "scan") for k in keys[i : i + fan_in]))
        leaves.append(leaf)
        push(leaf, 0)
    leftovers = [ref for level in levels for ref in level]
    return ray.get(leftovers[0] if len(leftovers) == 1 else _merge.remote(*leftovers))
