"""Activation vectors for an activation atlas: a bounded, mergeable sample per layer.

Each image contributes one activation vector per layer: the vector at one spatial (or token)
position, chosen by a hash of the image's source id. One position rather than the per-image mean
because the mean of a photo's positions blends the objects in it (sky, dog, grass) into a vector
no single position has; the atlas is meant to map what the layer sees at a place, as the Activation
Atlas article does with one random position per image. The hash makes the choice reproducible and
independent of how the dataset is sharded. Token layers (ViTs) arrive from
`LoadedModel.activations` as patch maps, so they give one patch token per image, never the class
token: it summarizes the whole image, a different kind of vector from the patches it would be
laid out among, and one random patch keeps the token map as local as a CNN's.

The sample itself is bounded the same way as the scan's "slightly positive" sample
(`atlas.kinds.examples`): the `size` images with the smallest hash of their id. That subset does not depend
on sharding or merge order, so `VectorSample.merge` is associative and commutative and memory stays
bounded by `size`, never by the dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from atlas.core.errors import AtlasError
from atlas.core.schema import VECTORS_SCHEMA, keyed_table
from atlas.data.source import ImageSource, ShardRef
from atlas.kinds.examples import PartialScan, scan_shard, source_priority
from atlas.models import LoadedModel

DEFAULT_SIZE = 100_000
# How a layer's output holds its channels: maps (B, C, H, W), tokens (B, N, C), channels-last
# (B, H, W, C) as in Swin, vectors (B, C).
LAYOUTS = ("map", "tokens", "channels_last", "vector")


class CollectError(AtlasError, ValueError):
    """Vectors that cannot be collected or merged as asked."""


def infer_layout(output: torch.Tensor) -> str:
    """The layout a bare tensor most likely has; channels-last maps must be named explicitly."""
    return {2: "vector", 3: "tokens", 4: "map"}.get(output.ndim) or _bad_rank(output)


def _bad_rank(output: torch.Tensor) -> str:
    raise CollectError(f"cannot read activation vectors from a {output.ndim}-D output {list(output.shape)}")


def positions(output: torch.Tensor, layout: str | None = None) -> torch.Tensor:
    """(B, P, C): every position's activation vector, whatever the layout."""
    layout = layout or infer_layout(output)
    if layout == "map":
        return output.flatten(2).transpose(1, 2)
    if layout == "tokens":
        return output
    if layout == "channels_last":
        return output.flatten(1, 2)
    if layout == "vector":
        return output[:, None, :]
    raise CollectError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def position_index(source_ids: Sequence[str], layer: str, count: int) -> np.ndarray:
    """The hash-chosen position of each image (differs per layer, so layers are sampled independently)."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{layer}\0{i}".encode(), digest_size=8).digest(), "big") % count
            for i in source_ids
        ],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class VectorSample:
    """Up to `size` (image, position, vector) rows per layer, the images with the smallest id hash."""

    size: int
    ids: np.ndarray  # [m] unicode, sorted by (priority, id)
    priority: np.ndarray  # [m] uint64
    positions: dict[str, np.ndarray]  # layer -> [m] int64, the flat position index
    vectors: dict[str, np.ndarray]  # layer -> [m, C] float32

    @classmethod
    def empty(cls, channels: Mapping[str, int], size: int = DEFAULT_SIZE) -> VectorSample:
        return cls(
            size,
            np.zeros(0, "<U1"),
            np.zeros(0, np.uint64),
            {n: np.zeros(0, np.int64) for n in channels},
            {n: np.zeros((0, c), np.float32) for n, c in channels.items()},
        )

    @classmethod
    def from_batch(
        cls,
        source_ids: Sequence[str],
        outputs: Mapping[str, torch.Tensor],
        size: int = DEFAULT_SIZE,
        layouts: Mapping[str, str] | None = None,
    ) -> VectorSample:
        """The sample of one batch of images given each layer's output for them."""
        priority = source_priority(source_ids)
        keep = np.lexsort((np.array(source_ids), priority))[:size]
        ids = np.array(source_ids)[keep]
        chosen, vectors = {}, {}
        for name, output in outputs.items():
            flat = positions(output.detach().float(), (layouts or {}).get(name))
            index = position_index(ids, name, flat.shape[1])
            rows = flat[torch.as_tensor(keep), torch.as_tensor(index)]
            chosen[name], vectors[name] = index, rows.cpu().numpy().astype(np.float32)
        return cls(size, ids, priority[keep], chosen, vectors)

    def to_table(self, unit_key: str) -> pa.Table:
        """One row per (layer, sampled image): the `vectors` table of docs/STORE.md."""
        names = list(self.vectors)
        rows = len(self.ids)
        columns = {
            "layer": [n for n in names for _ in range(rows)],
            "source_id": [str(i) for _ in names for i in self.ids],
            "position": np.concatenate([self.positions[n] for n in names] or [[]]).astype(np.int32),
            "vector": [v for n in names for v in self.vectors[n]],
        }
        return keyed_table(columns, VECTORS_SCHEMA, unit_key)

    @classmethod
    def from_table(cls, table: pa.Table, layer: str, size: int) -> VectorSample:
        """One layer's sample back from a `vectors` table (inverse of `to_table` for that layer)."""
        rows = table.filter(pc.equal(table.column("layer"), layer))
        ids = np.array(rows.column("source_id").to_pylist(), dtype=str)
        vectors = rows.column("vector").combine_chunks()
        flat = vectors.values.to_numpy(zero_copy_only=False).astype(np.float32)
        matrix = flat.reshape(len(ids), -1) if len(ids) else np.zeros((0, 0), np.float32)
        positions = rows.column("position").to_numpy().astype(np.int64)
        return cls(size, ids, source_priority(list(ids)), {layer: positions}, {layer: matrix})

    def merge(self, other: VectorSample) -> VectorSample:
        """Both samples' union, cut back to the `size` smallest hashes (disjoint images assumed)."""
        if self.size != other.size or set(self.vectors) != set(other.vectors):
            raise CollectError(
                f"cannot merge vector samples of size/layers {self.size}/{sorted(self.vectors)} and "
                f"{other.size}/{sorted(other.vectors)}; collect with the same settings"
            )
        ids = np.concatenate([self.ids, other.ids])
        priority = np.concatenate([self.priority, other.priority])
        keep = np.lexsort((ids, priority))[: self.size]
        return VectorSample(
            self.size,
            ids[keep],
            priority[keep],
            {n: np.concatenate([p, other.positions[n]])[keep] for n, p in self.positions.items()},
            {n: np.concatenate([v, other.vectors[n]])[keep] for n, v in self.vectors.items()},
        )


class VectorCollector:
    """Folds each scanned batch into a `VectorSample` (the `on_batch` hook of a `BatchScanner`).


    The sampled vectors stay on the scan's device between batches (as `VectorSample.merge`
    would keep them: the `size` smallest (priority, id)); `sample` reads them back once.
    """

    def __init__(self, model: LoadedModel, layers: Sequence[str], size: int = DEFAULT_SIZE):
        self.names = [model.resolve_layer(n) for n in layers]
        self.channels = {n: model.channels(n) for n in self.names}
        self.size, self.device = size, model.device
        self.reset()

    def reset(self) -> None:
        """Start a new shard's sample."""
        empty = VectorSample.empty(self.channels, self.size)
        self.ids, self.priority, self.positions = empty.ids, empty.priority, empty.positions
        self.rows = {n: torch.zeros((0, c), device=self.device) for n, c in self.channels.items()}

    def observe(self, ids: list[str], outputs: Mapping[str, torch.Tensor]) -> None:
        all_ids = np.concatenate([self.ids, ids])
        priority = np.concatenate([self.priority, source_priority(ids)])
        keep = np.lexsort((all_ids, priority))[: self.size]
        self.ids, self.priority = all_ids[keep], priority[keep]
        rows = torch.from_numpy(keep.astype(np.int64)).to(self.device, non_blocking=True)
        for name in self.names:
            flat = positions(outputs[name].detach().float())
            index = position_index(ids, name, flat.shape[1])
            batch = flat[
                torch.arange(len(ids), device=flat.device),
                torch.from_numpy(index).to(flat.device, non_blocking=True),
            ]
            self.rows[name] = torch.cat([self.rows[name], batch])[rows]
            self.positions[name] = np.concatenate([self.positions[name], index])[keep]

    @property
    def sample(self) -> VectorSample:
        """The shard's sample so far, read back from the device."""
        names = list(self.rows)
        host = torch.cat([self.rows[n] for n in names], dim=1).cpu().numpy() if names else None
        bounds = np.cumsum([0] + [self.channels[n] for n in names])
        vectors = {n: host[:, bounds[i] : bounds[i + 1]] for i, n in enumerate(names)} if names else {}
        return VectorSample(self.size, self.ids, self.priority, dict(self.positions), vectors)


def collect_shard(
    model: LoadedModel,
    layers: Sequence[str],
    source: ImageSource,
    shard: ShardRef,
    size: int = DEFAULT_SIZE,
    vectors: Sequence[str] | None = None,
    **scan: Any,
) -> tuple[PartialScan, VectorSample]:
    """Scan one shard as `atlas.kinds.examples.scan_shard` does and sample the `vectors` layers on the way.

    `vectors` (default: every scanned layer) must be among `layers`, whose forward passes they share.
    """
    collector = VectorCollector(model, layers if vectors is None else vectors, size)
    partial = scan_shard(model, layers, source, shard, on_batch=collector.observe, **scan)
    return partial, collector.sample
