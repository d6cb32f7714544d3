"""Feature dashboards of SAE layers: quantile groups across each feature's activation range and the
share of images where it fires, from bounded, mergeable statistics of the scan."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from atlas.data.source import ImageSource, ShardRef
from atlas.kinds.examples import LayerScan, PartialScan, TopK, scan_shard
from atlas.kinds.examples.finalize import GROUPS, PER_GROUP, images_share, quantile_groups
from atlas.kinds.examples.partial import FIRES
from atlas.models import LoadedModel, load_model

LAYER = "relu2"  # tiny-cnn: a ReLU'd layer, so some channels are silent on some images


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model("tiny-cnn")


def _images(tmp_path_factory: pytest.TempPathFactory, count: int, seed: int) -> ImageSource:
    """`count` images at tiny-cnn's input size (so the scan sees them as they are)."""
    from atlas.data.open import open_source

    side = load_model("tiny-cnn").input_size
    root = tmp_path_factory.mktemp(f"images{count}")
    rng = np.random.default_rng(seed)
    for index in range(count):  # flat colours and noise: some channels fire on few of them
        base = rng.integers(0, 256, 3) * np.ones((side, side, 3))
        noise = rng.normal(0, rng.choice([0, 60]), (side, side, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{index:03d}.png")
    return open_source(root)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageSource:
    return _images(tmp_path_factory, 40, 0)


def _merged(model: LoadedModel, source: ImageSource, shard: int, sample_size: int = 512) -> PartialScan:
    parts = [
        scan_shard(model, [LAYER], source, ref, k=3, batch_size=7, sample_size=sample_size)
        for ref in source.shards(shard)
    ]
    random.Random(shard).shuffle(parts)
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    return merged


@pytest.mark.parametrize("shard", [1, 6, 40])
def test_the_images_where_a_unit_fires_are_counted_exactly(
    model: LoadedModel, images: ImageSource, shard: int
) -> None:
    merged = _merged(model, images, shard).layers[LAYER]
    pixels = np.stack([np.array(images.load(i)) for i in images.ids()])
    with torch.no_grad():
        maps = model.activations(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255, [LAYER])[LAYER]
    expected = (maps.amax(dim=(2, 3)) >= FIRES).sum(dim=0).numpy()
    assert merged.images == len(pixels)
    np.testing.assert_array_equal(merged.fired, expected)
    assert len(set(expected)) > 1  # the counts differ across channels: the check is not trivial
    shares = [images_share(merged, c) for c in range(merged.channels)]
    np.testing.assert_allclose(shares, expected / len(pixels))


def test_scans_stored_before_the_count_read_back_as_unknown(model: LoadedModel, images: ImageSource) -> None:
    part = scan_shard(model, [LAYER], images, ShardRef(0, tuple(images.ids()[:5])), k=2)
    table = part.to_table()
    assert "fired" in table.column_names
    old = PartialScan.from_table(table.drop_columns(["fired", "images"]))
    assert old.layers[LAYER].fired is None and images_share(old.layers[LAYER], 0) is None
    assert part.merge(old).layers[LAYER].fired is None and old.merge(part).layers[LAYER].images is None
    again = PartialScan.from_table(table)
    np.testing.assert_array_equal(again.layers[LAYER].fired, part.layers[LAYER].fired)


def test_what_a_layer_keeps_does_not_grow_with_the_dataset(
    model: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sizes = []
    for count in (12, 36):
        scan = _merged(model, _images(tmp_path_factory, count, count), 5, sample_size=8).layers[LAYER]
        sizes.append({name: getattr(scan, name).nbytes for name in ("histogram", "fired", "sample_max")})
        sizes[-1]["top"] = scan.top.values.nbytes
    assert sizes[0] == sizes[1]


def _layer(values: np.ndarray, sample: list[int], k: int) -> tuple[LayerScan, np.ndarray]:
    """One channel's LayerScan over images with spatial maxima `values`: the sample holds the
    images numbered in `sample` (in that order), the top-k the k highest."""
    ids = np.array([f"img{i:04d}" for i in range(len(values))])
    order = np.lexsort((ids, -values))[:k]
    pad = k - len(order)
    top = TopK(
        np.concatenate([values[order], np.full(pad, -np.inf)]).astype(np.float32)[None],
        np.concatenate([ids[order], [""] * pad])[None],
        np.arange(k, dtype=np.int32)[None],
        np.zeros((1, k), np.int32),
    )
    m = len(sample)
    column = values[sample].astype(np.float32)[:, None]
    zeros = np.zeros((m, 1), np.int32)
    scan = LayerScan(
        top,
        top,
        np.zeros((1, 4), np.int64),
        column,
        zeros,
        zeros,
        column,
        zeros,
        zeros,
        np.zeros(1, np.int64),
        0,
    )
    return scan, ids[sample]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), count=st.integers(1, 300), k=st.integers(1, 12))
def test_quantile_groups_cut_the_range_into_equal_intervals(data, count: int, k: int) -> None:
    rare = data.draw(st.floats(0.0, 1.0))
    values = data.draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(1e-4, 50.0, allow_subnormal=False)),
            min_size=count,
            max_size=count,
        )
    )
    values = np.array(values, np.float64) * (np.random.default_rng(count).random(count) < rare + 0.05)
    sample = data.draw(st.permutations(range(count)))[: data.draw(st.integers(0, count))]
    scan, sample_ids = _layer(values, sample, k)
    picks = quantile_groups(scan, sample_ids, 0)
    top = float(np.float32(values.max()))
    if top < FIRES:
        assert picks == []
        return
    value_of = {f"img{i:04d}": float(np.float32(v)) for i, v in enumerate(values)}
    groups: dict[int, list] = {}
    for pick in picks:
        assert pick.bucket == "quantile" and pick.activation == value_of[pick.source_id]
        group = GROUPS - 1 - pick.rank // PER_GROUP
        low, high = group / GROUPS * top, (group + 1) / GROUPS * top
        assert pick.activation >= FIRES and low - 1e-6 * top <= pick.activation <= high + 1e-6 * top
        groups.setdefault(group, []).append(pick)
    for chosen in groups.values():
        assert len(chosen) <= PER_GROUP and len({p.source_id for p in chosen}) == len(chosen)
        ranked = sorted(chosen, key=lambda p: p.rank)
        assert [p.activation for p in ranked] == sorted((p.activation for p in chosen), reverse=True)
    assert groups.get(GROUPS - 1)  # the maximum's image is always there to pick
    # Each group takes the sample's images of its interval first, smallest hash (sample order)
    # first; checked where no sampled image lies on an interval's edge (rounding may move it).
    for group in range(GROUPS):
        low, high = group / GROUPS * top, (group + 1) / GROUPS * top
        sampled = [(str(i), float(v)) for i, v in zip(sample_ids, scan.sample_max[:, 0], strict=True)]
        if any(np.isclose(v, edge, rtol=1e-5) for _, v in sampled for edge in (low, high)):
            continue
        inside = [i for i, v in sampled if v >= FIRES and low < v <= high]
        assert set(inside[:PER_GROUP]) <= {p.source_id for p in groups.get(group, [])}
