"""Dataset-example scans: exact merges in any grouping, a planted known answer, contract tables."""

from __future__ import annotations

import io
import random
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from atlas.data.open import open_source
from atlas.data.source import ImageSource, ShardRef
from atlas.kinds.examples import (
    PartialScan,
    ScanError,
    TopK,
    direction_layer,
    finalize_layer,
    scan_shard,
    source_priority,
)
from atlas.kinds.examples.partial import HIST_BINS, bin_index
from atlas.models import LoadedModel, load_model
from atlas.models.receptive import receptive_field

LAYERS = ("conv2", "conv3")
SHARD = 8
PLANT_CHANNEL = 5
PLANT_MAX_AT = (2, 5)  # (y, x) on conv3's 8 x 8 map
PLANT_MIN_AT = (6, 1)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model("tiny-cnn")


def _photos(count: int) -> list[Image.Image]:
    demo = open_source("demo")
    ids = demo.ids()
    step = len(ids) // count
    return [demo.load(ids[i * step]).resize((64, 64)) for i in range(count)]


def _excite(model: LoadedModel, photo: Image.Image, at: tuple[int, int], sign: float) -> Image.Image:
    """Push PLANT_CHANNEL of conv3 at one position up (sign 1) or down (-1) by editing its
    receptive field only, while keeping the other positions of that channel unremarkable."""
    base = torch.from_numpy(np.array(photo)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    left, top, right, bottom = (round(v) for v in receptive_field(model, "conv3").box(*at, min_side=1))
    mask = torch.zeros_like(base)
    mask[..., top:bottom, left:right] = 1.0
    logits = torch.logit(base.clamp(0.02, 0.98)).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=0.3)
    for _ in range(25):
        image = base * (1 - mask) + torch.sigmoid(logits) * mask
        act = model.activations(image, ["conv3"])["conv3"][0, PLANT_CHANNEL]
        others = torch.cat([act.flatten()[: at[0] * 8 + at[1]], act.flatten()[at[0] * 8 + at[1] + 1 :]])
        loss = -sign * (act[at] - others.abs().mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = (base * (1 - mask) + torch.sigmoid(logits) * mask).detach()[0]
    return Image.fromarray((final.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, model: LoadedModel) -> ImageSource:
    """Forty demo photos plus two images built to excite / inhibit one channel at known spots."""
    root = tmp_path_factory.mktemp("dataset")
    photos = _photos(42)
    for index, photo in enumerate(photos[:40]):
        photo.save(root / f"photo{index:02d}.png")
    _excite(model, photos[40], PLANT_MAX_AT, 1.0).save(root / "planted_max.png")
    _excite(model, photos[41], PLANT_MIN_AT, -1.0).save(root / "planted_min.png")
    return open_source(root)


@pytest.fixture(scope="module")
def partials(model: LoadedModel, dataset: ImageSource) -> list[PartialScan]:
    return [
        scan_shard(model, LAYERS, dataset, shard, k=4, batch_size=SHARD) for shard in dataset.shards(SHARD)
    ]


def _merge_randomly(parts: list[PartialScan], rng: random.Random) -> PartialScan:
    """Merge in a random order and a random tree shape."""
    if len(parts) == 1:
        return parts[0]
    cut = rng.randrange(1, len(parts))
    return _merge_randomly(parts[:cut], rng).merge(_merge_randomly(parts[cut:], rng))


def _assert_same(a: PartialScan, b: PartialScan) -> None:
    assert (a.k, a.sample_size, a.stats) == (b.k, b.sample_size, b.stats)
    assert np.array_equal(a.sample_ids, b.sample_ids)
    assert np.array_equal(a.sample_priority, b.sample_priority)
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        for part in fields(a.layers[name]):
            mine, theirs = getattr(a.layers[name], part.name), getattr(b.layers[name], part.name)
            if isinstance(mine, TopK):
                for array in fields(TopK):
                    assert np.array_equal(getattr(mine, array.name), getattr(theirs, array.name)), (
                        name,
                        part.name,
                    )
            else:
                assert np.array_equal(mine, theirs), (name, part.name)


def test_merge_in_any_grouping_equals_one_scan(
    model: LoadedModel, dataset: ImageSource, partials: list[PartialScan]
) -> None:
    everything = ShardRef(0, tuple(dataset.ids()))
    single = scan_shard(model, LAYERS, dataset, everything, k=4, batch_size=SHARD)
    rng = random.Random(0)
    for _ in range(5):
        shuffled = partials[:]
        rng.shuffle(shuffled)
        _assert_same(_merge_randomly(shuffled, rng), single)
    assert single.stats == {"scanned": len(dataset.ids())}


def test_planted_images_are_the_channels_extremes_at_their_positions(partials: list[PartialScan]) -> None:
    merged = _merge_randomly(partials, random.Random(1))
    conv3 = merged.layers["conv3"]
    assert conv3.top.ids[PLANT_CHANNEL, 0] == "planted_max.png"
    assert (conv3.top.ys[PLANT_CHANNEL, 0], conv3.top.xs[PLANT_CHANNEL, 0]) == PLANT_MAX_AT
    assert conv3.bottom.ids[PLANT_CHANNEL, 0] == "planted_min.png"
    assert (conv3.bottom.ys[PLANT_CHANNEL, 0], conv3.bottom.xs[PLANT_CHANNEL, 0]) == PLANT_MIN_AT
    # The planted image is not simply the brightest image: other channels rank other images first.
    assert set(conv3.top.ids[:, 0]) != {"planted_max.png"}


def test_partial_survives_parquet(tmp_path: Path, partials: list[PartialScan]) -> None:
    merged = _merge_randomly(partials, random.Random(2))
    pq.write_table(merged.to_table(), tmp_path / "scan.parquet")
    _assert_same(PartialScan.from_table(pq.read_table(tmp_path / "scan.parquet")), merged)


def test_select_keeps_one_layer_that_merges_like_the_whole(partials: list[PartialScan]) -> None:
    whole = partials[0].merge(partials[1]).select(["conv3"])
    assert list(whole.layers) == ["conv3"]
    _assert_same(partials[0].select(["conv3"]).merge(partials[1].select(["conv3"])), whole)
    with pytest.raises(ScanError, match="no layer 'fc'"):
        partials[0].select(["fc"])


def test_sample_is_the_smallest_hashes_whatever_the_sharding(
    model: LoadedModel, dataset: ImageSource
) -> None:
    parts = [scan_shard(model, ["conv3"], dataset, shard, k=2, sample_size=5) for shard in dataset.shards(16)]
    merged = parts[2].merge(parts[0]).merge(parts[1])
    ids = np.array(dataset.ids())
    expected = ids[np.lexsort((ids, source_priority(list(ids))))[:5]]
    assert merged.sample_ids.tolist() == expected.tolist()
    assert merged.layers["conv3"].sample_max.shape == (5, 32)


def test_finalize_writes_the_contract_tables(
    model: LoadedModel, dataset: ImageSource, partials: list[PartialScan]
) -> None:
    merged = _merge_randomly(partials, random.Random(3))
    examples, histogram = finalize_layer(
        model,
        "conv3",
        merged,
        dataset,
        crop_size=40,
        thumb_size=24,
        unit_key="key1",
        channels=[PLANT_CHANNEL, 0],
        bins=12,
    )
    assert examples.schema.names == [
        "layer",
        "channel",
        "bucket",
        "rank",
        "activation",
        "source_id",
        "x",
        "y",
        "crop",
        "thumb",
        "unit_key",
    ]
    assert histogram.schema.names == [
        "layer",
        "channel",
        "edges",
        "counts",
        "active",
        "images_active",  # SAE layers' dashboards only: null here
        "unit_key",
    ]
    assert histogram.column("images_active").null_count == histogram.num_rows
    rows = examples.to_pylist()
    for channel in (PLANT_CHANNEL, 0):
        for bucket in ("max", "min", "slightly_positive", "slightly_negative"):
            chosen = sorted(
                (r for r in rows if r["channel"] == channel and r["bucket"] == bucket),
                key=lambda r: r["rank"],
            )
            assert [r["rank"] for r in chosen] == list(range(4))
            values = [r["activation"] for r in chosen]
            descending = bucket in ("max", "slightly_positive")
            assert values == sorted(values, reverse=descending)
    planted = next(
        r for r in rows if r["channel"] == PLANT_CHANNEL and r["bucket"] == "max" and r["rank"] == 0
    )
    assert (planted["source_id"], planted["y"], planted["x"]) == ("planted_max.png", *PLANT_MAX_AT)
    assert Image.open(io.BytesIO(planted["crop"])).size == (40, 40)
    assert Image.open(io.BytesIO(planted["thumb"])).size == (24, 24)
    scanned = merged.stats["scanned"]
    for hist in histogram.to_pylist():
        assert sum(hist["counts"]) == scanned * 8 * 8  # every position of every image
        assert len(hist["edges"]) == len(hist["counts"]) + 1 <= 13
        assert hist["edges"] == sorted(hist["edges"])
        extremes = [
            r["activation"]
            for r in rows
            if r["channel"] == hist["channel"] and r["rank"] == 0 and r["bucket"] in ("min", "max")
        ]
        assert hist["edges"][0] == pytest.approx(min(extremes))
        assert hist["edges"][-1] == pytest.approx(max(extremes))


def test_slight_buckets_sit_at_the_quantiles_of_all_images(
    model: LoadedModel, dataset: ImageSource, partials: list[PartialScan]
) -> None:
    merged = _merge_randomly(partials, random.Random(4))  # sample_size (512) holds every image
    examples, _ = finalize_layer(
        model, "conv2", merged, dataset, 32, 16, "k", channels=[3], quantiles=(0.3, 0.6)
    )
    good, _ = dataset.load_batch(dataset.ids())
    pixels = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for _, image in good])
    with torch.no_grad():
        act = model.activations(pixels.float() / 255, ["conv2"])["conv2"][:, 3].flatten(1)
    ids = np.array([i for i, _ in good])
    for bucket, per_image, q in (
        ("slightly_positive", act.max(1).values, 0.6),
        ("slightly_negative", act.min(1).values, 0.3),
    ):
        values = per_image.numpy()
        nearest = ids[np.argsort(np.abs(values - np.quantile(values, q)), kind="stable")[:4]]
        chosen = [r["source_id"] for r in examples.to_pylist() if r["bucket"] == bucket]
        assert sorted(chosen) == sorted(nearest.tolist())


def test_directions_score_projections(model: LoadedModel, dataset: ImageSource) -> None:
    basis = torch.zeros(2, 32)
    basis[0, 3] = basis[1, 7] = 1.0
    shard = dataset.shards(16)[0]
    scan = scan_shard(model, ["conv3"], dataset, shard, k=3, directions={"conv3": basis})
    projected = scan.layers[direction_layer("conv3")]
    for row, channel in enumerate((3, 7)):
        assert projected.top.ids[row].tolist() == scan.layers["conv3"].top.ids[channel].tolist()
        assert np.allclose(projected.top.values[row], scan.layers["conv3"].top.values[channel], atol=1e-5)
    examples, _ = finalize_layer(model, direction_layer("conv3"), scan, dataset, 32, 16, "k")
    assert set(examples.column("channel").to_pylist()) == {0, 1}
    with pytest.raises(ScanError, match=r"shape \[n, 32\]"):
        scan_shard(model, ["conv3"], dataset, shard, directions={"conv3": torch.zeros(2, 5)})


def test_bad_images_are_counted_not_fatal(model: LoadedModel, tmp_path: Path) -> None:
    good = _photos(2)
    good[0].save(tmp_path / "a.png")
    good[1].convert("L").save(tmp_path / "gray.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    encoded = io.BytesIO()
    good[1].save(encoded, format="PNG")
    (tmp_path / "cut.png").write_bytes(encoded.getvalue()[:300])
    source = open_source(tmp_path)
    scan = scan_shard(model, ["conv3"], source, source.shards(10)[0], k=3)
    assert scan.stats == {
        "scanned": 2,
        "converted:grayscale": 1,
        "skipped:corrupt": 1,
        "skipped:truncated": 1,
    }
    assert scan.layers["conv3"].top.ids[0, 2] == ""  # fewer images than k: padded, not invented


def test_merge_and_finalize_refuse_mismatches(
    model: LoadedModel, partials: list[PartialScan], dataset: ImageSource
) -> None:
    other = PartialScan.empty({"conv3": 32}, k=4)
    with pytest.raises(ScanError, match="different layers"):
        partials[0].merge(other)
    with pytest.raises(ScanError, match="k/sample_size"):
        partials[0].merge(PartialScan.empty({"conv2": 32, "conv3": 32}, k=3))
    with pytest.raises(ScanError, match="no layer 'relu1'"):
        finalize_layer(model, "relu1", partials[0], dataset, 32, 16, "k")
    with pytest.raises(ScanError, match="no channel 99"):
        finalize_layer(model, "conv3", partials[0], dataset, 32, 16, "k", channels=[99])


def test_receptive_field_grows_with_depth_and_boxes_stay_inside(model: LoadedModel) -> None:
    fields_ = [receptive_field(model, name) for name in ("conv1", "conv2", "conv3")]
    sizes = [f.height for f in fields_]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert sizes[0] >= 5  # conv1 has 5 x 5 kernels: it sees at least that much
    conv3 = fields_[-1]
    for y, x in ((0, 0), (7, 7), (3, 4)):
        left, top, right, bottom = conv3.box(y, x)
        assert 0 <= left < right <= 64 and 0 <= top < bottom <= 64
        assert right - left == bottom - top == max(conv3.height, 8)


def test_reductions_match_numpy_histogram_on_both_backends() -> None:
    from atlas.kinds.examples import HIST_EDGES
    from atlas.kinds.examples.scan import _reduce

    # Seeded: a value exactly on a negative edge bins by magnitude (mirrored), unlike numpy's
    # half-open bins, so random draws would fail about one run in 300; that edge is pinned below.
    noise = torch.randn(3000, generator=torch.Generator().manual_seed(0))
    values = torch.cat([noise * 4, torch.tensor([0.0, 5000.0, -5000.0, 1e-6, -1e-6])])
    act = values.view(1, 1, -1, 1).repeat(2, 3, 1, 1) * torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    in_numpy, in_torch = _reduce(act, in_numpy=True), _reduce(act, in_numpy=False)
    for mine, theirs in zip(in_numpy, in_torch, strict=True):
        assert np.array_equal(mine, theirs)
    for channel in range(3):
        flat = act[0, channel].flatten().clamp(float(HIST_EDGES[0]), float(HIST_EDGES[-2])).numpy()
        expected, _ = np.histogram(flat, HIST_EDGES)
        assert in_numpy[4][channel].tolist() == (expected * 2).tolist()  # two identical images
        assert in_numpy[0][0, channel] == act[0, channel].max()
        assert in_numpy[3][0, channel] == int(act[0, channel].flatten().argmin())
    edges = torch.tensor([2.5, -2.5]).view(1, 1, 2, 1)
    histogram = _reduce(edges, in_numpy=True)[4][0]
    upper = int(np.searchsorted(HIST_EDGES, 2.5))  # 2.5 opens the bin [2.5, 3)
    lower = int(np.searchsorted(HIST_EDGES, -2.5)) - 1  # -2.5 closes the bin (-3, -2.5]
    assert histogram[upper] == histogram[lower] == 1


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 30)),
    share=st.sampled_from([0.0, 0.001, 0.05, 0.1, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_sparse_histogram_equals_binning_every_value(
    shape: tuple[int, int, int], share: float, seed: int
) -> None:
    """SAE features are zero almost everywhere: the histogram that bins only nonzero values (and
    counts the zeros) must give the counts of binning every value, whatever the sparsity, with
    -0.0, values below the first edge, edges, beyond +-1024, inf and nan among the nonzero ones."""
    from atlas.kinds.examples import scan as scan_module

    rng = np.random.default_rng(seed)
    special = np.array([-0.0, 1e-6, -1e-6, 2.0**-10, 2.5, -2.5, 5000.0, -5000.0, np.inf, -np.inf, np.nan])
    values = np.where(rng.random(shape) < 0.2, rng.choice(special, shape), rng.normal(0, 4, shape))
    flat = np.where(rng.random(shape) < share, values, 0.0).astype(np.float32)
    sparse = scan_module._histogram_numpy(flat)
    offsets = (np.arange(shape[1]) * HIST_BINS)[None, :, None]
    every = np.bincount(
        (bin_index(flat.view(np.int32), np) + offsets).ravel(), minlength=shape[1] * HIST_BINS
    )
    assert sparse.tolist() == every.reshape(shape[1], HIST_BINS).tolist()
    assert int(sparse.sum()) == flat.size


@pytest.mark.parametrize("tensors", [False, True], ids=["pil", "tensor-decoder"])
def test_prefetched_batches_equal_sequential_ones(dataset: ImageSource, tensors: bool) -> None:
    from atlas.data.source import decode_for_model
    from atlas.kinds.examples.decode import TensorDecoder
    from atlas.kinds.examples.scan import _batches

    decoder = TensorDecoder("cpu") if tensors else decode_for_model
    ids = dataset.ids()[:20]
    sequential = list(_batches(dataset, ids, 6, 32, prefetch=False, decoder=decoder))
    prefetched = list(_batches(dataset, ids, 6, 32, prefetch=True, decoder=decoder))
    assert len(sequential) == len(prefetched) == 4
    for (ids_a, pixels_a, counts_a, skipped_a), (ids_b, pixels_b, counts_b, skipped_b) in zip(
        sequential, prefetched, strict=True
    ):
        assert ids_a == ids_b and counts_a == counts_b and skipped_a == skipped_b
        assert np.array_equal(np.asarray(pixels_a), np.asarray(pixels_b))


def test_logits_are_scanned_as_one_position_seeing_everything(
    model: LoadedModel, dataset: ImageSource
) -> None:
    scan = scan_shard(model, ["logits"], dataset, dataset.shards(8)[0], k=2)
    examples, histogram = finalize_layer(model, "logits", scan, dataset, 32, 16, "k", channels=[0, 9])
    assert set(zip(examples.column("x").to_pylist(), examples.column("y").to_pylist(), strict=True)) == {
        (0, 0)
    }
    assert histogram.column("channel").to_pylist() == [0, 9]
    field_ = receptive_field(model, "logits")
    assert field_.box(0, 0) == (0.0, 0.0, 64.0, 64.0)


def test_thumb_shows_the_whole_image_and_crop_the_seen_square(model: LoadedModel, tmp_path: Path) -> None:
    wide = Image.new("RGB", (150, 50), (200, 0, 0))
    wide.paste((0, 0, 200), (50, 0, 100, 50))  # the centered square the model sees is blue
    wide.save(tmp_path / "wide.png")
    source = open_source(tmp_path)
    scan = scan_shard(model, ["logits"], source, source.shards(1)[0], k=1)
    examples, _ = finalize_layer(
        model, "logits", scan, source, crop_size=20, thumb_size=30, unit_key="k", channels=[0]
    )
    row = examples.to_pylist()[0]
    thumb = Image.open(io.BytesIO(row["thumb"])).convert("RGB")
    assert thumb.size == (30, 10)
    assert thumb.getpixel((2, 5))[0] > 150  # the red sides are in the thumbnail
    crop = np.asarray(Image.open(io.BytesIO(row["crop"])).convert("RGB"))
    assert (crop[..., 2] > 150).all()  # but not in the crop


def _tie_heavy_batch(count: int, seed: int) -> np.ndarray:
    """uint8 images at tiny-cnn's 64 px where every third is black: equal extremes across images."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)
    pixels[::3] = 0
    return pixels


def _same_scan(mine: PartialScan, theirs: PartialScan) -> None:
    assert mine.to_table().to_pydict() == theirs.to_table().to_pydict()


@pytest.mark.parametrize(
    ("k", "sample_size", "sizes"), [(1, 3, (5, 2)), (3, 512, (4, 4, 1)), (12, 6, (7, 3, 8))]
)
def test_running_scan_on_the_device_equals_merging_batch_partials(
    model: LoadedModel, k: int, sample_size: int, sizes: tuple[int, ...]
) -> None:
    """The device fold picks exactly what numpy's `PartialScan.merge` picks, ties broken by id."""
    from atlas.kinds.examples import BatchScanner

    directions = {
        "conv2": torch.randn(3, model.channels("conv2"), generator=torch.Generator().manual_seed(k))
    }
    scanner = BatchScanner(model, ["conv1", "conv3", "logits"], k, directions, sample_size)
    running, merged = scanner.running(), PartialScan.empty(scanner.channels, k, sample_size)
    names = random.Random(k).sample(range(1000), sum(sizes))
    begin = 0
    for index, size in enumerate(sizes):
        ids, pixels = [f"p{n}" for n in names[begin : begin + size]], _tie_heavy_batch(size, index)
        begin += size
        scanner.add(running, ids, pixels)
        merged = merged.merge(scanner.scan(ids, pixels))
    _same_scan(running.partial(), merged)


def test_a_batch_reads_nothing_back_and_a_shard_reads_back_once(model: LoadedModel, monkeypatch) -> None:
    """Batches stay on the device (the torch reductions, as on a GPU); what `partial()` reads
    back does not grow with layers, channels or batches."""
    from test_optvis_render import HostSyncs

    from atlas.kinds.examples import BatchScanner
    from atlas.kinds.examples import scan as scan_module

    reduce = scan_module._reduce
    monkeypatch.setattr(scan_module, "_reduce", lambda act, in_numpy: reduce(act, in_numpy=False))

    def syncs(layers: list[str], batches: int) -> tuple[int, int]:
        directions = {"conv2": torch.ones(4, model.channels("conv2"))} if len(layers) > 1 else None
        scanner = BatchScanner(model, layers, 3, directions)
        running = scanner.running()
        with HostSyncs() as adding:
            for index in range(batches):
                scanner.add(running, [f"b{index}i{i}" for i in range(4)], _tie_heavy_batch(4, index))
        with HostSyncs() as reading:
            running.partial()
        return sum(adding.sites.values()), sum(reading.sites.values())

    syncs(["conv1"], 1)  # what the model caches on first use is made once
    few, many = syncs(["conv1"], 1), syncs(["conv1", "conv2", "conv3", "logits"], 3)
    assert few[0] == many[0] == 0, "a batch reads back from the device"
    assert 0 < few[1] == many[1], "the read-back at the end grows with the layers or batches"
