"""Mergeable partial scans: what scanning some images of a dataset leaves behind.

Partials of all shards are merged (`PartialScan.merge` is associative and commutative, so shards
can be scanned anywhere and merged in any grouping). Per channel and image a partial holds the
spatial maximum and minimum with their positions. Every piece merges exactly:

- top-k / bottom-k: a total order (activation, then source id) makes "k best of the union"
  independent of grouping, ties included.
- histogram: fixed bin edges that never depend on the data: a symmetric, roughly logarithmic
  scale (0 and +-(1 + q/4) 2^e, see HIST_EDGES) covers activations from 1e-3 to 1e3 with 4 bins
  per octave; counts add. Bins are symmetric in magnitude: [a, b) above zero, (-b, -a] below.
- the "slightly positive/negative" buckets: a quantile of a distribution cannot be merged from
  per-shard quantiles, and its examples cannot be chosen before the quantile is known. So each
  partial keeps a bounded uniform sample of images (bottom-m hashing: the m images with the
  smallest hash of their source id, which is the same subset whatever the sharding) with every
  channel's extremes and positions. Memory stays bounded by m, never by the dataset.
- images where a channel fires (its spatial maximum at least 2^-10, FIRES) and images scanned:
  counts add. Scans stored before they were counted read back as unknown (None), and a merge
  with an unknown part is unknown.

Directions in activation space are kept like extra channels of the pseudo-layer
`<layer>@direction` (`direction_layer`).
"""

from __future__ import annotations

import hashlib
import json
import types
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pyarrow as pa
import torch

from atlas.core.errors import AtlasError
from atlas.data.source import SkippedInput

DIRECTION_SUFFIX = "@direction"
DEFAULT_SAMPLE_SIZE = 512
FIRES = 2.0**-10  # a unit fires where it is at least this: the histogram's first edge above 0
# Histogram edges: 0 and +-(1 + q/4) * 2^e for e in -10..9, q in 0..3, and +-2^10. These are the
# float32 values whose low 21 bits are zero, so a bin is read off the float's bits (sign, exponent,
# two mantissa bits) instead of searched for; that keeps the histogram cheap next to the forward.
_STEPS = np.arange(81)
_POSITIVE_EDGES = (1 + (_STEPS % 4) / 4) * 2.0 ** (-10 + _STEPS // 4)
HIST_EDGES = np.concatenate([-_POSITIVE_EDGES[::-1], [0.0], _POSITIVE_EDGES]).astype(np.float32)
HIST_BINS = len(HIST_EDGES) - 1  # the outermost bins also hold everything beyond +-1024
_SIDE_BINS = HIST_BINS // 2
ZERO_BIN = _SIDE_BINS  # [0, 2^-10): zero, -0.0 and the values too small to fire
_FIRST_CODE = (127 - 10) * 4 - 1  # (biased exponent, 2 mantissa bits) code of 2^-10, minus one


class ScanError(AtlasError, ValueError):
    """Partial scans that cannot be merged, or a finalize request the scan cannot answer."""


def bin_index(bits: np.ndarray | torch.Tensor, xp: types.ModuleType) -> np.ndarray | torch.Tensor:
    """Histogram bin of each float32 (given as its int32 bits), for numpy or torch alike."""
    step = xp.clip(((bits & 0x7FFFFFFF) >> 21) - _FIRST_CODE, 0, _SIDE_BINS - 1)
    negative = (bits < 0) & (bits != -(2**31))  # -0.0 counts as zero, like numpy does
    return xp.where(negative, _SIDE_BINS - 1 - step, _SIDE_BINS + step)


@dataclass(frozen=True)
class TopK:
    """The k best (value, source id, position) per channel, best first; pads have id ''."""

    values: np.ndarray  # [C, k] float32, -inf pads
    ids: np.ndarray  # [C, k] unicode
    ys: np.ndarray  # [C, k] int32
    xs: np.ndarray  # [C, k] int32

    @classmethod
    def empty(cls, channels: int, k: int) -> TopK:
        return cls(
            np.full((channels, k), -np.inf, np.float32),
            np.full((channels, k), "", "<U1"),
            np.zeros((channels, k), np.int32),
            np.zeros((channels, k), np.int32),
        )

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def merge(self, other: TopK) -> TopK:
        """Keep the k best of both; ties are broken by source id so the result is order-free."""
        values = np.concatenate([self.values, other.values], axis=1)
        ids = np.concatenate([self.ids, other.ids], axis=1)
        order = np.lexsort((ids, -values), axis=1)[:, : self.k]
        ys = np.concatenate([self.ys, other.ys], axis=1)
        xs = np.concatenate([self.xs, other.xs], axis=1)
        return TopK(*(np.take_along_axis(a, order, axis=1) for a in (values, ids, ys, xs)))


@dataclass(frozen=True)
class LayerScan:
    """Everything kept for one layer (or direction pseudo-layer)."""

    top: TopK  # by spatial maximum
    bottom: TopK  # by spatial minimum, negated (so "best" means most negative)
    histogram: np.ndarray  # [C, HIST_BINS] int64, every position of every image
    # Sampled images' extremes, rows aligned with PartialScan.sample_ids: [m, C]
    sample_max: np.ndarray
    sample_max_y: np.ndarray
    sample_max_x: np.ndarray
    sample_min: np.ndarray
    sample_min_y: np.ndarray
    sample_min_x: np.ndarray
    fired: np.ndarray | None = None  # [C] int64: images whose spatial maximum is at least FIRES
    images: int | None = None  # images scanned, with `fired`

    @property
    def channels(self) -> int:
        return self.histogram.shape[0]

    def merge_fired(self, other: LayerScan) -> dict[str, np.ndarray | int | None]:
        """`fired` and `images` of both, added; unknown when either is."""
        if self.fired is None or other.fired is None or self.images is None or other.images is None:
            return {"fired": None, "images": None}
        return {"fired": self.fired + other.fired, "images": self.images + other.images}


_SAMPLE_FIELDS = ("sample_max", "sample_max_y", "sample_max_x", "sample_min", "sample_min_y", "sample_min_x")


@dataclass(frozen=True)
class PartialScan:
    """Mergeable result of scanning some images; see the module docstring for why each part merges."""

    k: int
    sample_size: int
    layers: dict[str, LayerScan]
    sample_ids: np.ndarray  # [m] unicode, sorted by (priority, id)
    sample_priority: np.ndarray  # [m] uint64 hash of the id
    stats: dict[str, int] = field(default_factory=dict)  # scanned / skipped:<why> / converted:<what>
    skipped: tuple[SkippedInput, ...] = ()  # the skipped images themselves; stored as their own table

    @classmethod
    def empty(
        cls, channels: Mapping[str, int], k: int, sample_size: int = DEFAULT_SAMPLE_SIZE
    ) -> PartialScan:
        layers = {
            name: LayerScan(
                TopK.empty(count, k),
                TopK.empty(count, k),
                np.zeros((count, HIST_BINS), np.int64),
                *(
                    np.zeros((0, count), np.float32 if "_y" not in f and "_x" not in f else np.int32)
                    for f in _SAMPLE_FIELDS
                ),
                fired=np.zeros(count, np.int64),
                images=0,
            )
            for name, count in channels.items()
        }
        return cls(k, sample_size, layers, np.zeros(0, "<U1"), np.zeros(0, np.uint64), {})

    def merge(self, other: PartialScan) -> PartialScan:
        """Combine two partials of disjoint images; associative and commutative."""
        if (self.k, self.sample_size) != (other.k, other.sample_size):
            raise ScanError(
                f"cannot merge scans with k/sample_size {self.k}/{self.sample_size} and "
                f"{other.k}/{other.sample_size}; rescan with the same settings"
            )
        shapes = {n: s.channels for n, s in self.layers.items()}
        other_shapes = {n: s.channels for n, s in other.layers.items()}
        if shapes != other_shapes:
            raise ScanError(f"cannot merge scans of different layers: {shapes} vs {other_shapes}")
        ids = np.concatenate([self.sample_ids, other.sample_ids])
        priority = np.concatenate([self.sample_priority, other.sample_priority])
        keep = np.lexsort((ids, priority))[: self.sample_size]
        layers = {}
        for name, mine in self.layers.items():
            theirs = other.layers[name]
            sampled = {
                f: np.concatenate([getattr(mine, f), getattr(theirs, f)])[keep] for f in _SAMPLE_FIELDS
            }
            layers[name] = LayerScan(
                mine.top.merge(theirs.top),
                mine.bottom.merge(theirs.bottom),
                mine.histogram + theirs.histogram,
                **sampled,
                **mine.merge_fired(theirs),
            )
        stats = Counter(self.stats)
        stats.update(other.stats)
        return PartialScan(
            self.k,
            self.sample_size,
            layers,
            ids[keep],
            priority[keep],
            dict(sorted(stats.items())),
            self.skipped + other.skipped,
        )

    def select(self, layers: Sequence[str]) -> PartialScan:
        """Only the named layers: what one layer's examples unit needs to receive."""
        missing = [name for name in layers if name not in self.layers]
        if missing:
            raise ScanError(f"the scan has no layer {missing[0]!r}; scanned: {', '.join(self.layers)}")
        return replace(self, layers={name: self.layers[name] for name in layers})

    def to_table(self) -> pa.Table:
        """One row per layer; arrays are flattened into list columns (shapes follow from the row)."""
        names = list(self.layers)
        scans = [self.layers[n] for n in names]
        stats = json.dumps(self.stats, sort_keys=True)
        columns: dict[str, pa.Array] = {
            "layer": pa.array(names, pa.string()),
            "channels": pa.array([s.channels for s in scans], pa.int32()),
            "k": pa.array([self.k] * len(names), pa.int32()),
            "sample_size": pa.array([self.sample_size] * len(names), pa.int32()),
            "stats": pa.array([stats] * len(names), pa.string()),
            "sample_ids": _list_column([self.sample_ids] * len(names)),
            "sample_priority": _list_column([self.sample_priority] * len(names)),
        }
        for side in ("top", "bottom"):
            for f in fields(TopK):
                columns[f"{side}_{f.name}"] = _list_column([getattr(getattr(s, side), f.name) for s in scans])
        columns["histogram"] = _list_column([s.histogram for s in scans])
        for name in _SAMPLE_FIELDS:
            columns[name] = _list_column([getattr(s, name) for s in scans])
        if all(s.fired is not None for s in scans):
            columns["fired"] = _list_column([s.fired for s in scans])
            columns["images"] = pa.array([s.images for s in scans], pa.int64())
        return pa.table(columns)

    @classmethod
    def from_table(cls, table: pa.Table) -> PartialScan:
        """Inverse of `to_table` (for partials stored as Parquet and read back on resume)."""
        if table.num_rows == 0:
            raise ScanError("a stored partial scan has no rows; delete the shard and rescan")
        k = table.column("k")[0].as_py()
        sample_ids = _rows(table, "sample_ids")[0].astype(str)
        m = len(sample_ids)
        layers = {}
        for i, name in enumerate(table.column("layer").to_pylist()):
            channels = table.column("channels")[i].as_py()

            def grid(column: str, shape: tuple[int, int], row: int = i) -> np.ndarray:
                return _rows(table, column)[row].reshape(shape)

            tops = [
                TopK(*(grid(f"{p}_{f.name}", (channels, k)) for f in fields(TopK))) for p in ("top", "bottom")
            ]
            tops = [replace(t, ids=t.ids.astype(str)) for t in tops]
            sampled = {f: grid(f, (m, channels)) for f in _SAMPLE_FIELDS}
            counted = "fired" in table.column_names  # scans stored before it was counted: unknown
            layers[name] = LayerScan(
                *tops,
                grid("histogram", (channels, HIST_BINS)),
                **sampled,
                fired=_rows(table, "fired")[i] if counted else None,
                images=table.column("images")[i].as_py() if counted else None,
            )
        return cls(
            k,
            table.column("sample_size")[0].as_py(),
            layers,
            sample_ids,
            _rows(table, "sample_priority")[0],
            json.loads(table.column("stats")[0].as_py()),
        )


def _list_column(arrays: Sequence[np.ndarray]) -> pa.Array:
    """Flattened numpy arrays as one list column without a round trip through Python lists."""
    flat = [a.ravel() for a in arrays]
    offsets = np.cumsum([0] + [len(a) for a in flat]).astype(np.int64)
    values = np.concatenate(flat) if flat else np.zeros(0, np.float32)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def _rows(table: pa.Table, column: str) -> list[np.ndarray]:
    """The numpy array of each row of a list column."""
    lists = table.column(column).combine_chunks()
    offsets = lists.offsets.to_numpy()
    values = lists.values.to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(lists))]


def source_priority(source_ids: Sequence[str]) -> np.ndarray:
    """Hash of each id: the sample keeps the smallest, which is a uniform, sharding-free choice."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") for i in source_ids],
        dtype=np.uint64,
    )


def direction_layer(layer: str) -> str:
    """Name of the pseudo-layer holding the projections of `layer` onto its directions."""
    return f"{layer}{DIRECTION_SUFFIX}"


def base_layer(layer: str) -> str:
    """The real layer behind a (pseudo-)layer name."""
    return layer.removesuffix(DIRECTION_SUFFIX)
