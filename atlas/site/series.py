"""The checkpoint series: which checkpoints a timeline holds, in which order, and how it is kept.

A spec names checkpoints as paths or globs (`[model] checkpoints`); a glob's matches are ordered
by the step or epoch number in their file names. The series is append-only and kept in the
timeline store as the `series` table, so a nightly job that adds only its new checkpoint keeps
every earlier one, even when that file has since been overwritten or deleted. A checkpoint is
identified by its weight digest: the same file rewritten with new weights is a new checkpoint.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from atlas.core.errors import AtlasError
from atlas.core.schema import SERIES_SCHEMA
from atlas.store.store import Store, UnitRecord

_NUMBER = re.compile(r"\d+")
GLOB_CHARS = set("*?[")
TIMELINE_DIR = "timeline"  # the timeline store, inside the job's output folder


class TimelineError(AtlasError):
    """A timeline that cannot be built as asked; the message names the fix."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of the series with the units that hold its results."""

    path: str
    digest: str
    step: int | None = None
    probe_key: str = ""
    match_key: str = ""  # the match with the previous checkpoint ("" for the first)
    render_keys: tuple[str, ...] = field(default_factory=tuple)
    scan_keys: tuple[str, ...] = field(default_factory=tuple)  # its dataset scans, one per shard
    examples_keys: tuple[str, ...] = field(default_factory=tuple)  # its top examples, per layer chunk
    size: int = -1  # the file's size and mtime when its digest was taken: a rerun that finds the
    mtime_ns: int = -1  # same path, size and mtime reuses the digest instead of loading the weights

    @property
    def label(self) -> str:
        name = Path(self.path).name
        return f"step {self.step}" if self.step is not None and str(self.step) not in name else name


def step_of(path: str | Path) -> int | None:
    """The last number in a file's name without its suffix: ckpt-epoch12.pt -> 12, step_000500 -> 500."""
    numbers = _NUMBER.findall(Path(path).name.split(".")[0])
    return int(numbers[-1]) if numbers else None


def expand(patterns: Iterable[str]) -> list[Path]:
    """Paths in the order given; each glob's matches ordered by step (then name)."""
    paths: list[Path] = []
    for pattern in patterns:
        if GLOB_CHARS & set(pattern):
            found = sorted(glob.glob(pattern), key=lambda p: (step_of(p) is None, step_of(p) or 0, p))
            if not found:
                raise TimelineError(
                    f"[model] checkpoints: the glob {pattern!r} matches no file; fix the pattern or "
                    "save a checkpoint first"
                )
            paths += [Path(p) for p in found]
        elif not Path(pattern).is_file():
            raise TimelineError(
                f"[model] checkpoints: {pattern} does not exist; fix the path or use a glob such as "
                f"{str(Path(pattern).parent / '*.pt')!r}"
            )
        else:
            paths.append(Path(pattern))
    return list(dict.fromkeys(paths))


def describe_order(patterns: Iterable[str]) -> list[str]:
    """What `atlas plan` prints: the spec's checkpoints in the order the series takes them."""
    paths = expand(patterns)
    if all(step_of(p) is not None for p in paths):
        paths.sort(key=step_of)
    lines = [f"timeline: {len(paths)} checkpoints, in series order (by the step in each file name):"]
    for position, path in enumerate(paths):
        step = step_of(path)
        lines.append(
            f"  {position:>3}  {'step ' + str(step) if step is not None else '(no step)':<14} {path}"
        )
    return lines


def ordered(series: Sequence[Checkpoint]) -> list[Checkpoint]:
    """By step when every checkpoint has one (a stable sort), else in the order they were added."""
    if all(c.step is not None for c in series):
        return sorted(series, key=lambda c: c.step)
    return list(series)


def series_table(series: Sequence[Checkpoint]) -> pa.Table:
    return pa.table(
        {
            "position": list(range(len(series))),
            "label": [c.label for c in series],
            "step": [-1 if c.step is None else c.step for c in series],
            "checkpoint": [c.path for c in series],
            "digest": [c.digest for c in series],
            "probe_key": [c.probe_key for c in series],
            "match_key": [c.match_key for c in series],
            "render_keys": [list(c.render_keys) for c in series],
            "scan_keys": [list(c.scan_keys) for c in series],
            "examples_keys": [list(c.examples_keys) for c in series],
            "size": [c.size for c in series],
            "mtime_ns": [c.mtime_ns for c in series],
        },
        schema=SERIES_SCHEMA,
    )


def series_from_table(table: pa.Table) -> list[Checkpoint]:
    """The checkpoints of a stored series (one written before a column existed reads its default)."""
    rows = sorted(table.to_pylist(), key=lambda r: r["position"])
    return [
        Checkpoint(
            path=r["checkpoint"],
            digest=r["digest"],
            step=None if r["step"] < 0 else r["step"],
            probe_key=r["probe_key"],
            match_key=r["match_key"],
            render_keys=tuple(r["render_keys"]),
            scan_keys=tuple(r.get("scan_keys") or ()),
            examples_keys=tuple(r.get("examples_keys") or ()),
            size=r.get("size", -1),
            mtime_ns=r.get("mtime_ns", -1),
        )
        for r in rows
    ]


def series_key(table: pa.Table) -> str:
    """The series unit's key: a hash of its rows, so each version of the series is its own unit."""
    digest = hashlib.sha256(repr(table.to_pylist()).encode()).hexdigest()[:20]
    return f"series-{digest}"


def is_done(store: Store, key: str) -> bool:
    """Whether a unit is finished, asked through the store interface (any store, local or bucket)."""
    return not store.pending([key])


def write_unit(store: Store, key: str, kind: str, tables: dict[str, pa.Table], layer: str = "*") -> None:
    """Write and commit a unit computed on the driver (matches, the series)."""
    store.commit(UnitRecord.done(key, kind, layer, store.write_shards(key, tables)))


def stored_series(store: Store) -> list[Checkpoint]:
    """The series kept in the timeline store: the longest committed one (a run keeps only its own)."""
    entries = [e for e in store.entries() if e.kind == "series" and e.status == "done"]
    if not entries:
        return []
    latest = max(entries, key=lambda e: e.rows)
    return series_from_table(store.read_unit(latest.key, "series"))
