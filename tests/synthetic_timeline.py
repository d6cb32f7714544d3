"""A synthetic timeline store: the site's tests and page-size checks run without a model or Ray.

The tables are the real ones: probe statistics from random signatures, and match and CKA tables
computed by `atlas.kinds.timeline.compare` from them, so the site reads exactly what a run writes.
At checkpoint p (p >= 1) channel 5p is dead (and born again at p + 1), channels 5p + 1 and
5p + 2 swap indices and channel 5p + 3 changes role, so every kind of event appears.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from atlas.core.schema import EXAMPLES_SCHEMA, PROBE_SCHEMA, RENDER_SCHEMA
from atlas.kinds.timeline.compare import compare
from atlas.kinds.timeline.match import dead_units
from atlas.site.series import TIMELINE_DIR, Checkpoint, series_key, series_table, write_unit
from atlas.store.store import open_store


def _png(rng: np.random.Generator, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _examples(rng: np.random.Generator, layer: str, channels: int, k: int, key: str, size: int) -> pa.Table:
    """The `max` bucket's top `k` of every channel, with thumbnails (all the timeline reads)."""
    rows = channels * k
    return pa.table(
        {
            "layer": [layer] * rows,
            "channel": np.repeat(np.arange(channels, dtype=np.int32), k),
            "bucket": ["max"] * rows,
            "rank": np.tile(np.arange(k, dtype=np.int32), channels),
            "activation": rng.uniform(1, 5, rows).astype(np.float32),
            "source_id": [f"photo-{i}" for i in range(rows)],
            "x": np.zeros(rows, dtype=np.int32),
            "y": np.zeros(rows, dtype=np.int32),
            "crop": [b""] * rows,
            "thumb": [_png(rng, size) for _ in range(rows)],
            "unit_key": [key] * rows,
        },
        schema=EXAMPLES_SCHEMA,
    )


def _signatures(
    rng: np.random.Generator, checkpoints: int, channels: int, positions: int
) -> list[np.ndarray]:
    base = rng.normal(size=(positions, channels))
    series = []
    for position in range(checkpoints):
        current = base + 0.05 * position * rng.normal(size=base.shape)
        if position:  # each event lasts one checkpoint: the dead unit is born again at the next
            dying, swap, changed = 5 * position, 5 * position + 1, 5 * position + 3
            if dying < channels:
                current[:, dying] = 0.3  # constant: dead
            if swap + 1 < channels:
                current[:, [swap, swap + 1]] = current[:, [swap + 1, swap]]
            if changed < channels:
                current[:, changed] = rng.normal(size=positions)
        series.append(current)
    return series


def write_synthetic_timeline(
    out: Path,
    layer: str,
    checkpoints: int,
    channels: int,
    image_size: int = 32,
    render_every: int = 3,
    seed: int = 0,
    latest_digest: str | None = None,
    scanned: Sequence[int] = (),
    examples: int = 4,
    rendered: Sequence[int] | None = None,
) -> list[Checkpoint]:
    """Write a timeline store under `out` and return its series.

    `latest_digest` gives the newest checkpoint a real digest, e.g. the job's, whose scan the
    timeline then shows as that checkpoint's dataset examples. The checkpoints at the positions
    `scanned` get an examples unit of their own: `examples` top images per channel. The checkpoints
    at the positions `rendered` (default: every `render_every`-th and the newest) get a render unit.
    """
    rng = np.random.default_rng(seed)
    store = open_store(Path(out) / TIMELINE_DIR)
    series: list[Checkpoint] = []
    previous: pa.Table | None = None
    for position, signature in enumerate(_signatures(rng, checkpoints, channels, 64)):
        digest = f"{seed:04d}{position:060d}"
        if latest_digest and position == checkpoints - 1:
            digest = latest_digest
        probe_key = f"probe-synthetic{position:05d}"
        std, mean = signature.std(axis=0), signature.mean(axis=0)
        probe = pa.table(
            {
                "layer": [layer] * channels,
                "channel": np.arange(channels, dtype=np.int32),
                "max": signature.max(axis=0).astype(np.float32),
                "mean": mean.astype(np.float32),
                "std": std.astype(np.float32),
                "active": (signature > 0).mean(axis=0).astype(np.float32),
                "dead": dead_units(std, mean),
                "signature": list(signature.T.astype(np.float32)),
                "unit_key": [probe_key] * channels,
            },
            schema=PROBE_SCHEMA,
        )
        write_unit(store, probe_key, "probe", {"probe": probe})
        match_key = ""
        if previous is not None:
            match_key = f"match-synthetic{position:05d}"
            write_unit(store, match_key, "match", compare(previous, probe, 0.5, match_key))
        render_keys: tuple[str, ...] = ()
        renders = position % render_every == 0 or position == checkpoints - 1
        if position in rendered if rendered is not None else renders:
            render_key = f"render-synthetic{position:05d}"
            render = pa.table(
                {
                    "layer": [layer] * channels,
                    "channel": np.arange(channels, dtype=np.int32),
                    "channel_b": np.full(channels, -1, dtype=np.int32),
                    "objective": ["channel"] * channels,
                    "variant": np.zeros(channels, dtype=np.int32),
                    "label": [f"channel {c}" for c in range(channels)],
                    "image": [_png(rng, image_size) for _ in range(channels)],
                    "activation": rng.uniform(1, 5, channels).astype(np.float32),
                    "loss": [[0.0]] * channels,
                    "unit_key": [render_key] * channels,
                },
                schema=RENDER_SCHEMA,
            )
            write_unit(store, render_key, "render", {"render": render}, layer)
            render_keys = (render_key,)
        examples_keys: tuple[str, ...] = ()
        if position in scanned:
            examples_keys = (f"examples-synthetic{position:05d}",)
            write_unit(
                store,
                examples_keys[0],
                "examples",
                {"examples": _examples(rng, layer, channels, examples, examples_keys[0], image_size // 2)},
                layer,
            )
        series.append(
            Checkpoint(
                f"ckpt/step-{position * 100}.pt",
                digest,
                position * 100,
                probe_key,
                match_key,
                render_keys,
                examples_keys=examples_keys,
            )
        )
        previous = probe
    table = series_table(series)
    key = series_key(table)
    write_unit(store, key, "series", {"series": table})
    return series
