"""An automated interpretability proxy: the human two-alternative forced choice, without humans.

Borowski et al. (2021) and Zimmermann et al. (2024, "MIS") show people a unit's reference
images (its feature visualizations or top dataset examples, and the bottom ones) and ask which of
two dataset queries, one strongly and one weakly activating, activates the unit more. A unit is
interpretable to the degree that the references let one answer. Here the judge is similarity in
a feature space that is *not* the model under study (that would make the answer circular): by
default model-independent image statistics, a colour histogram and a gradient-orientation
histogram. A query is scored by its mean similarity to the positive references minus its mean
similarity to the negative ones; the proxy is the share of (strong, weak) query pairs in which
the strong query scores higher, ties counting half: the expected 2AFC accuracy over all pairings
(a Mann-Whitney AUC), 0.5 for chance, with its Hanley-McNeil 95% confidence interval.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from atlas.site.unitwalk import UnitWalk, layer_units
from atlas.store.store import Store

FEATURE_SIZE = 32  # every image is compared at this size: renders and crops differ in size
COLOUR_BINS = 4  # per channel: a 4x4x4 joint RGB histogram
ORIENTATION_BINS = 8  # gradient orientations over 180 degrees, weighted by magnitude

POSITIVE_OBJECTIVES = ("channel", "neuron", "diversity")  # pictures that show what excites
FeatureSpace = Callable[[Sequence[np.ndarray]], np.ndarray]  # N images (H, W, 3 uint8) -> (N, D)


def _unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _histograms(bins: np.ndarray, count: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Row-wise histograms of integer ``bins`` (N, P) in [0, count), in one bincount."""
    offsets = (np.arange(len(bins)) * count)[:, None]
    flat = np.bincount(
        (bins + offsets).ravel(),
        weights=None if weights is None else weights.ravel(),
        minlength=len(bins) * count,
    )
    return flat.reshape(len(bins), count).astype(np.float64)


def image_statistics(images: Sequence[np.ndarray]) -> np.ndarray:
    """Colour and gradient-orientation histograms (N, 64 + 8), each half unit-length.

    Knows nothing of any network: what it can tell apart is colour and local texture direction.
    """
    if not images:
        return np.zeros((0, COLOUR_BINS**3 + ORIENTATION_BINS))
    small = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(i)).convert("RGB").resize((FEATURE_SIZE, FEATURE_SIZE))
            )
            for i in images
        ]
    ).astype(np.float64)
    bins = np.minimum((small / 256 * COLOUR_BINS).astype(int), COLOUR_BINS - 1)
    index = (bins[..., 0] * COLOUR_BINS + bins[..., 1]) * COLOUR_BINS + bins[..., 2]
    colour = _histograms(index.reshape(len(images), -1), COLOUR_BINS**3)
    gy, gx = np.gradient(small.mean(axis=3), axis=(1, 2))
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    which = np.minimum((angle / np.pi * ORIENTATION_BINS).astype(int), ORIENTATION_BINS - 1)
    orientation = _histograms(which.reshape(len(images), -1), ORIENTATION_BINS, np.hypot(gx, gy))
    return np.concatenate([_unit_rows(colour), _unit_rows(orientation)], axis=1)


@dataclass(frozen=True)
class ForcedChoice:
    """The proxy for one unit: accuracy, its 95% interval and the number of queries behind it."""

    accuracy: float
    low: float
    high: float
    strong: int  # strongly activating queries
    weak: int  # weakly activating queries

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _interval(accuracy: float, strong: int, weak: int) -> tuple[float, float]:
    """Hanley-McNeil (1982) standard error of an AUC from ``strong`` x ``weak`` comparisons."""
    a = min(max(accuracy, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (strong - 1) * (q1 - a * a) + (weak - 1) * (q2 - a * a)) / (strong * weak)
    half = 1.96 * math.sqrt(max(variance, 0.0))
    return max(0.0, accuracy - half), min(1.0, accuracy + half)


def forced_choice(
    positive: Sequence[np.ndarray],
    negative: Sequence[np.ndarray],
    strong: Sequence[np.ndarray],
    weak: Sequence[np.ndarray],
    features: FeatureSpace = image_statistics,
) -> ForcedChoice | None:
    """How well references ``positive`` / ``negative`` tell ``strong`` queries from ``weak`` ones.

    None when there is no query of one kind or no positive reference (nothing to judge from).
    """
    if not positive or not strong or not weak:
        return None
    pos = _unit_rows(features(positive))
    queries = _unit_rows(features([*strong, *weak]))
    score = (queries @ pos.T).mean(axis=1)
    if negative:
        score = score - (queries @ _unit_rows(features(negative)).T).mean(axis=1)
    high, low = score[: len(strong)], score[len(strong) :]
    wins = (high[:, None] > low[None, :]).sum() + 0.5 * (high[:, None] == low[None, :]).sum()
    accuracy = float(wins / (len(high) * len(low)))
    return ForcedChoice(accuracy, *_interval(accuracy, len(high), len(low)), len(high), len(low))


def split_examples(ranked: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A bucket in rank order -> (references, queries): the more extreme half are references, as
    in the human experiments, whose queries come from just below the references' tier."""
    half = (len(ranked) + 1) // 2
    return list(ranked[:half]), list(ranked[half:])


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def unit_proxy(
    optimized: Sequence[np.ndarray],
    negative_optimized: Sequence[np.ndarray],
    top: Sequence[np.ndarray],
    bottom: Sequence[np.ndarray],
    features: FeatureSpace = image_statistics,
) -> dict[str, ForcedChoice | None]:
    """The proxy of one atlas unit, judged from its optimized images and from its top examples.

    ``top`` / ``bottom`` are the `max` / `min` examples in rank order; their less extreme halves
    are the queries for both judgements, so the two are scored on the same question.
    """
    top_refs, strong = split_examples(top)
    bottom_refs, weak = split_examples(bottom)
    return {
        "optimized": forced_choice(optimized, negative_optimized, strong, weak, features),
        "examples": forced_choice(top_refs, bottom_refs, strong, weak, features),
    }


def layer_proxies(store: Store, layer: str, features: FeatureSpace = image_statistics) -> dict[int, dict]:
    """The proxy of every channel of ``layer`` in ``store``, from its render and examples tables.

    Optimized references are the channel's positive pictures (channel, neuron, diversity), the
    negative one is its negative optimized picture; example references and queries come from the
    `max` and `min` buckets. Channel -> {"optimized": ForcedChoice | None, "examples": ...}.
    Pictures are read a unit at a time (`atlas.site.unitwalk`), never the whole layer's.
    """
    # channel -> group (max, min, positive, negative) -> [(rank, unit key, row)]
    found: dict[int, dict[str, list[tuple[int, str, int]]]] = {}
    for key in layer_units(store, "examples", layer):
        table = store.read_unit(key, "examples", ["channel", "bucket", "rank"])
        columns = (table.column(name).to_pylist() for name in ("channel", "bucket", "rank"))
        for row, (channel, bucket, rank) in enumerate(zip(*columns, strict=True)):
            if channel >= 0 and bucket in ("max", "min"):
                groups = found.setdefault(channel, {"max": [], "min": [], "positive": [], "negative": []})
                groups[bucket].append((rank, key, row))
    for key in layer_units(store, "render", layer):
        table = store.read_unit(key, "render", ["channel", "objective"])
        columns = (table.column(name).to_pylist() for name in ("channel", "objective"))
        for row, (channel, objective) in enumerate(zip(*columns, strict=True)):
            if channel in found and objective in POSITIVE_OBJECTIVES + ("negative",):
                found[channel]["negative" if objective == "negative" else "positive"].append((0, key, row))
    channels = list(found)
    steps = [[(_KINDS[g], key) for g, items in found[c].items() for _, key, _ in items] for c in channels]
    walk = UnitWalk(store, steps, {"examples": "crop", "render": "image"})
    proxies = {}
    for step, channel in enumerate(channels):
        images = {
            group: [decode(walk.picture(_KINDS[group], key, row)) for _, key, row in sorted(items, key=_rank)]
            for group, items in found[channel].items()
        }
        proxies[channel] = unit_proxy(
            images["positive"], images["negative"], images["max"], images["min"], features
        )
        walk.done(step)
    return proxies


_KINDS = {"max": "examples", "min": "examples", "positive": "render", "negative": "render"}


def _rank(item: tuple[int, str, int]) -> int:
    return item[0]
