"""Synthetic atlas stores: shards shaped like a real run's, with small generated images.

They let the site be built, tested and benchmarked at any size (an InceptionV1-sized atlas in
seconds) without a model or a dataset. Images come from a small pool of distinct patterns,
so making a large store costs little more than writing its Parquet files.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from atlas.core.schema import (
    EXAMPLES_SCHEMA,
    FEATURES_SCHEMA,
    HISTOGRAM_SCHEMA,
    QUALITY_SCHEMA,
    QUANTILE_GROUPS,
    QUANTILE_PER_GROUP,
    RENDER_SCHEMA,
    TRUST_SCHEMA,
)
from atlas.site.columns import atlas_columns, columns_json
from atlas.store.store import Store, UnitRecord

BUCKET_SIGNS = {"max": 3.0, "slightly_positive": 0.5, "slightly_negative": -0.5, "min": -3.0}


@dataclass(frozen=True)
class SyntheticLayer:
    name: str
    channels: int
    height: int = 14
    width: int = 14
    layout: str = "map"  # or "tokens" for a transformer layer (atlas.models.layout)


@dataclass(frozen=True)
class SyntheticOptions:
    """What to put in the store; defaults make a small but complete atlas."""

    image_size: int = 32
    crop_size: int = 24
    diversity: int = 4
    examples_k: int = 6
    bins: int = 24
    objectives: tuple[str, ...] = ("channel", "neuron", "negative")
    examples: bool = True
    histograms: bool = True
    channels_per_unit: int = 64
    random_directions: int = 0
    pairs: tuple[tuple[str, int, int], ...] = ()
    interpolation_steps: int = 5
    failed_layers: tuple[str, ...] = ()
    quality: bool = True  # render units also write their quality record
    noise: float = 0.0  # pixel noise in every image (see _pattern_png)
    zero_bottom: tuple[int, ...] = ()  # channels whose bottom examples all tie at 0, as on a ReLU layer
    seed: int = 0
    # SAE layers' dashboards: job.json `sae`, quantile groups, the shares where features fire and
    # a `features` table (decoder neighbours, logit effects)
    sae: bool = False


class PatternPool:
    """A fixed number of distinct PNG patterns per size, reused round-robin."""

    def __init__(self, seed: int, pool: int = 97, noise: float = 0.0):
        self.seed = seed
        self.pool = pool
        self.noise = noise
        self._cache: dict[tuple[int, int], bytes] = {}

    def png(self, size: int, index: int) -> bytes:
        key = (size, index % self.pool)
        if key not in self._cache:
            self._cache[key] = _pattern_png(size, key[1] + self.seed * self.pool, self.noise)
        return self._cache[key]


def _pattern_png(size: int, index: int, noise: float = 0.0) -> bytes:
    """A colourful oriented stripe pattern, different for every index; `noise` (the standard
    deviation of added pixel noise) makes the PNG as large as a real rendering's."""
    rng = np.random.default_rng(index)
    ys, xs = np.mgrid[0:size, 0:size] / max(size, 1)
    angle, frequency = rng.uniform(0, np.pi), rng.uniform(2, 9)
    wave = np.sin(2 * np.pi * frequency * (xs * np.cos(angle) + ys * np.sin(angle)))
    colour_a, colour_b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    mix = (wave[..., None] + 1) / 2
    pixels = (mix * colour_a + (1 - mix) * colour_b) * 255
    if noise:
        pixels = np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def write_synthetic_store(
    out: Path,
    layers: Sequence[SyntheticLayer],
    options: SyntheticOptions | None = None,
    model: str = "synthetic",
    job_name: str = "synthetic atlas",
) -> Store:
    """Write job.json, manifest and shards for `layers` into `out`, like a finished run would."""
    options = options or SyntheticOptions()
    store = Store(out)
    pool = PatternPool(options.seed, noise=options.noise)
    store.write_job(
        {
            "name": job_name,
            "model": model,
            "model_digest": _key("digest", model, options.seed),
            "columns": columns_json(atlas_columns()),  # recorded by every run since they exist
            "layers": [
                {
                    "name": layer.name,
                    "channels": list(range(layer.channels)),
                    "total_channels": layer.channels,
                    "height": layer.height,
                    "width": layer.width,
                    "layout": layer.layout,
                    **({"sae": True} if options.sae else {}),
                }
                for layer in layers
            ],
            "spec": {
                "render": {
                    "steps": 64,
                    "size": options.image_size,
                    "objectives": list(options.objectives),
                    "diversity": options.diversity,
                    "param": "fourier",
                },
                "examples": {"source": "synthetic", "k": options.examples_k, "bins": options.bins},
                "interactions": {
                    "random_directions": options.random_directions,
                    "pairs": [list(p) for p in options.pairs],
                },
            },
            "started": "2026-01-01T00:00:00+00:00",
            "finished": "2026-01-01T00:10:00+00:00",
            "renderer_version": "synthetic-1",
        }
    )
    for layer in layers:
        for start in range(0, layer.channels, options.channels_per_unit):
            channels = list(range(start, min(start + options.channels_per_unit, layer.channels)))
            _write_channel_units(store, pool, layer.name, channels, options)
        _write_interactions(store, pool, layer, options)
    return store


def _write_channel_units(
    store: Store, pool: PatternPool, layer: str, channels: list[int], options: SyntheticOptions
) -> None:
    render_key = _key("render", layer, channels[0], options.seed)
    if layer in options.failed_layers:
        store.commit(
            UnitRecord.failed(render_key, "render", layer, "synthetic failure: CUDA out of memory", channels)
        )
    else:
        rows = []
        for channel in channels:
            for objective in options.objectives:
                rows.append(_render_row(pool, layer, channel, objective, 0, options.image_size))
            for variant in range(options.diversity):
                rows.append(_render_row(pool, layer, channel, "diversity", variant, options.image_size))
        tables = {"render": _table(rows, RENDER_SCHEMA, render_key)}
        if options.quality:
            tables["quality"] = _table([_quality_row(row) for row in rows], QUALITY_SCHEMA, render_key)
        store.write_unit_tables(render_key, "render", layer, tables, channels)
        if options.quality and options.examples:
            trust_key = _key("trust", layer, channels[0], options.seed)
            trust = {"trust": _table([_trust_row(layer, c) for c in channels], TRUST_SCHEMA, trust_key)}
            store.write_unit_tables(trust_key, "trust", layer, trust, channels)
    if not (options.examples or options.histograms):
        return
    scan_key = _key("scan", layer, channels[0], options.seed)
    tables = {}
    if options.examples:
        rows = [row for c in channels for row in _example_rows(pool, layer, c, options)]
        tables["examples"] = _table(rows, EXAMPLES_SCHEMA, scan_key)
    if options.histograms:
        rows = [_histogram_row(layer, c, options.bins) for c in channels]
        if options.sae:
            for row in rows:  # every seventh feature is dead
                row["active"] = 0.0 if row["channel"] % 7 == 0 else 0.002 * (1 + row["channel"] % 50)
                row["images_active"] = 0.0 if row["channel"] % 7 == 0 else min(1.0, 10 * row["active"])
        tables["histogram"] = _table(rows, HISTOGRAM_SCHEMA, scan_key)
    if options.sae and options.examples:
        tables["examples"] = pa.concat_tables(
            [
                tables["examples"],
                _table(_quantile_rows(pool, layer, channels, options), EXAMPLES_SCHEMA, scan_key),
            ]
        )
    store.write_unit_tables(scan_key, "examples", layer, tables, channels)
    if options.sae:
        features_key = _key("features", layer, channels[0], options.seed)
        rows = [
            {
                "layer": layer,
                "channel": c,
                "nearest": [(c + d) % 49_152 for d in (1, 2, 3, 4, 5)],
                "nearest_cosine": [0.9, 0.8, 0.7, 0.6, 0.5],
                "raises": [(c * 7 + d) % 1000 for d in range(5)],
                "raises_by": [5.0, 4.0, 3.0, 2.0, 1.0],
                "lowers": [(c * 11 + d) % 1000 for d in range(5)],
                "lowers_by": [-5.0, -4.0, -3.0, -2.0, -1.0],
            }
            for c in channels
        ]
        store.write_unit_tables(
            features_key,
            "features",
            layer,
            {"features": _table(rows, FEATURES_SCHEMA, features_key)},
            channels,
        )


def _quantile_rows(
    pool: PatternPool, layer: str, channels: list[int], options: SyntheticOptions
) -> list[dict]:
    """Every group of every live feature full: the largest sprite an SAE feature can have."""
    return [
        {
            "layer": layer,
            "channel": c,
            "bucket": "quantile",
            "rank": rank,
            "activation": 3.0 * (1 - rank / (QUANTILE_GROUPS * QUANTILE_PER_GROUP)),
            "source_id": f"synthetic/{(c * 17 + rank) % 500}.png",
            "x": rank % 7,
            "y": rank % 5,
            "crop": pool.png(options.crop_size, c * 5 + rank),
            "thumb": pool.png(options.crop_size, c + rank),
        }
        for c in channels
        if c % 7
        for rank in range(QUANTILE_GROUPS * QUANTILE_PER_GROUP)
    ]


def _render_row(
    pool: PatternPool,
    layer: str,
    channel: int,
    objective: str,
    variant: int,
    size: int,
    channel_b: int = -1,
    label: str = "",
) -> dict:
    sign = -1.0 if objective == "negative" else 1.0
    return {
        "layer": layer,
        "channel": channel,
        "channel_b": channel_b,
        "objective": objective,
        "variant": variant,
        "label": label or f"channel {channel}",
        "image": pool.png(size, channel * 7 + variant * 3 + len(objective)),
        "activation": sign * (4.0 + (channel % 11) / 3 + variant / 10),
        "loss": [1.0, 0.5, 0.25],
    }


def _trust_row(layer: str, channel: int) -> dict:
    """The examples keep 0.9 of their activation; the picture's path varies by channel."""
    return {
        "layer": layer,
        "channel": channel,
        "examples_robust": 0.9,
        "path": 0.1 + (channel * 7 % 10) / 10,
        "path_baseline": 0.1,
        "path_references": 0.9,
    }


def _quality_row(render: dict) -> dict:
    """A record that varies by channel, so that some channels fail each threshold."""
    channel = render["channel"]
    return {
        **{key: render[key] for key in ("layer", "channel", "objective", "variant")},
        "peak_activation": 5.4 + (channel % 5) * 0.6,  # the best example reaches 6.0
        "robust_activation": 0.55 + (channel * 37 % 40) / 100,
        "robust_worst": 0.3 + (channel % 4) / 10,
        "high_frequency": 0.05 + (channel * 13 % 20) / 100,
        "diversity_similarity": 0.4 + (channel % 6) / 10 if render["objective"] == "diversity" else None,
    }


def _example_rows(pool: PatternPool, layer: str, channel: int, options: SyntheticOptions) -> list[dict]:
    rows = []
    for bucket, sign in BUCKET_SIGNS.items():
        for rank in range(options.examples_k):
            rows.append(
                {
                    "layer": layer,
                    "channel": channel,
                    "bucket": bucket,
                    "rank": rank,
                    "activation": 0.0
                    if bucket == "min" and channel in options.zero_bottom
                    else sign * (1 + (options.examples_k - rank) / options.examples_k),
                    "source_id": f"synthetic/{(channel * 31 + rank) % 500}.png",
                    "x": rank % 7,
                    "y": rank % 5,
                    "crop": pool.png(options.crop_size, channel * 13 + rank + int(sign * 10)),
                    "thumb": pool.png(options.crop_size, channel + rank),
                }
            )
    return rows


def _histogram_row(layer: str, channel: int, bins: int) -> dict:
    edges = np.linspace(-1.0 - channel % 3, 6.0 + channel % 5, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = (1000 * np.exp(-np.abs(centres) * (1 + channel % 4) / 3)).astype(np.int64) + 1
    return {"layer": layer, "channel": channel, "edges": edges.tolist(), "counts": counts.tolist()}


def _write_interactions(
    store: Store, pool: PatternPool, layer: SyntheticLayer, options: SyntheticOptions
) -> None:
    size = options.image_size
    renders = [
        _render_row(pool, layer.name, -1, "direction", d, size, label=f"random direction {d}")
        for d in range(options.random_directions)
    ]
    for pair_layer, a, b in options.pairs:
        if pair_layer != layer.name:
            continue
        renders.append(_render_row(pool, layer.name, a, "pair", 0, size, b, f"{a} + {b}"))
        renders.extend(
            _render_row(pool, layer.name, a, "interpolation", step, size, b, f"{a} → {b} step {step}")
            for step in range(options.interpolation_steps)
        )
    if not renders:
        return
    key = _key("interactions", layer.name, options.seed)
    tables = {"render": _table(renders, RENDER_SCHEMA, key)}
    if options.examples and options.random_directions:
        rows = [
            row
            for d in range(options.random_directions)
            for row in _example_rows(pool, layer.name, -1 - d, options)
            if row["bucket"] in ("max", "min")
        ]
        tables["examples"] = _table(rows, EXAMPLES_SCHEMA, key)
    store.write_unit_tables(key, "render", layer.name, tables)


def _table(rows: list[dict], schema: pa.Schema, unit_key: str) -> pa.Table:
    for row in rows:
        row["unit_key"] = unit_key
    return pa.Table.from_pylist(rows, schema=schema)
