"""Activation atlas: vector collection, layout and grid (known answers)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.data.open import open_source
from atlas.data.source import ShardRef
from atlas.kinds.actatlas.collect import CollectError, VectorSample, collect_shard, position_index, positions
from atlas.kinds.actatlas.grid import grid
from atlas.kinds.examples import scan_shard
from atlas.models import load_model


def _ids(count: int) -> list[str]:
    return [f"image{i:03d}.png" for i in range(count)]


def test_positions_flatten_every_layout_the_same_way() -> None:
    maps = torch.randn(2, 5, 3, 4)
    flat = positions(maps)
    assert flat.shape == (2, 12, 5)
    assert torch.equal(flat[1, 2 * 4 + 3], maps[1, :, 2, 3])
    assert torch.equal(positions(maps.permute(0, 2, 3, 1), "channels_last"), flat)
    assert torch.equal(positions(flat), flat)  # tokens (B, N, C) are already positions
    assert torch.equal(positions(maps[:, :, 0, 0])[:, 0], maps[:, :, 0, 0])
    with pytest.raises(CollectError, match="layout"):
        positions(maps, "nchw")


def test_sample_keeps_one_hash_chosen_position_per_image() -> None:
    ids = _ids(6)
    maps = torch.randn(6, 4, 3, 3)
    sample = VectorSample.from_batch(ids, {"conv": maps}, size=10)
    chosen = dict(zip(sample.ids, sample.positions["conv"], strict=True))
    assert sorted(chosen) == ids
    for row, name in enumerate(sample.ids):
        index = ids.index(name)
        assert chosen[name] == position_index([name], "conv", 9)[0]
        y, x = divmod(int(chosen[name]), 3)
        np.testing.assert_array_equal(sample.vectors["conv"][row], maps[index, :, y, x].numpy())


def test_merge_is_order_free_and_bounded() -> None:
    ids = _ids(40)
    maps = torch.randn(40, 3, 2, 2)
    whole = VectorSample.from_batch(ids, {"conv": maps}, size=16)
    parts = [
        VectorSample.from_batch(ids[i : i + 7], {"conv": maps[i : i + 7]}, size=16) for i in range(0, 40, 7)
    ]
    forward = parts[0]
    for part in parts[1:]:
        forward = forward.merge(part)
    backward = parts[-1]
    for part in reversed(parts[:-1]):
        backward = part.merge(backward)
    for merged in (forward, backward):
        assert len(merged.ids) == 16
        np.testing.assert_array_equal(merged.ids, whole.ids)
        np.testing.assert_array_equal(merged.vectors["conv"], whole.vectors["conv"])
    with pytest.raises(CollectError, match="same settings"):
        whole.merge(VectorSample.from_batch(ids, {"conv": maps}, size=8))


@pytest.mark.parametrize(("size", "step"), [(16, 7), (5, 3), (64, 40)])
def test_the_collector_keeps_on_the_device_what_merging_batch_samples_keeps(size: int, step: int) -> None:
    """The device-kept sample equals the numpy fold of `VectorSample.from_batch` merges."""
    from atlas.kinds.actatlas.collect import VectorCollector

    model = load_model("tiny-cnn")
    collector = VectorCollector(model, ["conv2", "logits"], size)
    ids = _ids(40)
    outputs = {"conv2": torch.randn(40, model.channels("conv2"), 4, 4), "logits": torch.randn(40, 10)}
    folded = VectorSample.empty(collector.channels, size)
    for begin in range(0, 40, step):
        batch = {n: o[begin : begin + step] for n, o in outputs.items()}
        collector.observe(ids[begin : begin + step], batch)
        folded = folded.merge(VectorSample.from_batch(ids[begin : begin + step], batch, size))
    mine = collector.sample
    np.testing.assert_array_equal(mine.ids, folded.ids)
    np.testing.assert_array_equal(mine.priority, folded.priority)
    for name in outputs:
        np.testing.assert_array_equal(mine.positions[name], folded.positions[name])
        np.testing.assert_array_equal(mine.vectors[name], folded.vectors[name])


def test_collect_rides_on_the_scan_without_changing_it() -> None:
    model = load_model("tiny-cnn")
    source = open_source("demo")
    shard = ShardRef(0, tuple(source.ids()[:12]))
    partial, sample = collect_shard(model, ["conv3"], source, shard, size=100, k=2, batch_size=5)
    alone = scan_shard(model, ["conv3"], source, shard, k=2, batch_size=5)
    np.testing.assert_array_equal(partial.layers["conv3"].histogram, alone.layers["conv3"].histogram)
    assert sorted(sample.ids) == sorted(shard.source_ids)
    name = sample.ids[0]
    image = torch.from_numpy(np.asarray(source.load(name).convert("RGB").resize((64, 64)))).permute(2, 0, 1)
    output = model.activations(image[None].float() / 255, ["conv3"])["conv3"]
    direct = positions(output)[0, sample.positions["conv3"][0]].numpy()
    assert sample.vectors["conv3"].shape == (12, model.channels("conv3"))
    np.testing.assert_allclose(sample.vectors["conv3"][0], direct, atol=0.15, rtol=0.1)


@pytest.mark.parametrize("size,min_count", [(1, 1), (5, 1), (7, 4), (20, 3)])
def test_binning_conserves_counts(size: int, min_count: int) -> None:
    rng = np.random.default_rng(size)
    coords = rng.normal(size=(500, 2)) * [3.0, 1.0]
    vectors = rng.normal(size=(500, 6))
    result = grid(coords, vectors, size, min_count)
    assert result.cell.min() >= 0 and result.cell.max() < size * size  # every sample in one cell
    assert result.counts.sum() == 500
    assert result.counts[result.kept].sum() + result.dropped_samples == 500
    assert (result.counts[result.kept] >= min_count).all()
    dropped = np.setdiff1d(np.flatnonzero(result.counts), result.kept)
    assert (result.counts[dropped] < min_count).all() and result.dropped_cells == len(dropped)
    for cell, mean in zip(result.kept, result.means, strict=True):
        np.testing.assert_allclose(mean, vectors[result.cell == cell].mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # numba compiles UMAP on first use: ~30 s of CPU
def test_planted_clusters_stay_apart() -> None:
    pytest.importorskip("umap")
    from sklearn.manifold import trustworthiness

    from atlas.kinds.actatlas.layout import LayoutSettings, layout

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16)) * 4
    labels = np.repeat(np.arange(12), 20)
    vectors = (centres[labels] + rng.normal(size=(240, 16))).astype(np.float32)
    order = rng.permutation(240)  # the fitted part and the transformed rest both hold every cluster
    vectors, labels = vectors[order], labels[order]
    coords = layout(vectors, LayoutSettings(n_neighbors=10, max_fit=200))
    assert coords.shape == (240, 2)
    assert trustworthiness(vectors, coords, n_neighbors=5, metric="cosine") >= 0.95
    centroids = np.stack([coords[labels == c].mean(axis=0) for c in range(12)])
    nearest = np.linalg.norm(coords[:, None] - centroids[None], axis=2).argmin(axis=1)
    assert (nearest == labels).mean() >= 0.95


@pytest.mark.slow
def test_icons_find_their_own_cells_on_the_demo_model() -> None:
    """Icons of real cell means (EfficientNet-Lite0, demo photos); shuffled directions: chance."""
    from dataclasses import replace

    from atlas.kinds.actatlas.icons import agreement, render_icons
    from atlas.plan.spec import RenderSpec

    model = load_model("efficientnet-lite0")
    source = open_source("demo")
    shard = ShardRef(0, tuple(source.ids()[:32]))
    _, sample = collect_shard(model, ["_blocks.5"], source, shard, size=1000, k=1, batch_size=16)
    vectors = sample.vectors["_blocks.5"]
    centred = vectors - vectors.mean(axis=0)
    coords = np.linalg.svd(centred, full_matrices=False)[0][:, :2]  # cheap stand-in for UMAP here
    cells = grid(coords, vectors, 3, min_count=2)
    means, kept = cells.means[:6], cells.kept[:6]
    assert len(kept) >= 4
    settings = replace(RenderSpec(), steps=64, size=64, batch=6)
    icons = render_icons(model, "_blocks.5", means, list(kept), settings)
    assert [icon.variant for icon in icons] == list(kept) and all(i.objective == "icon" for i in icons)
    activations = np.stack([icon.vector for icon in icons])
    assert agreement(activations, means) >= 0.9
    shuffled = np.roll(means, 1, axis=0)  # every icon paired with another cell's direction
    assert agreement(activations, shuffled) <= 2 / len(kept)


def test_dictionary_files_load_with_names_and_fail_clearly(tmp_path) -> None:
    from safetensors.numpy import save_file

    from atlas.plan.dictionary import DictionaryError, load_dictionary

    matrix = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.save(tmp_path / "sae.npy", matrix)
    (tmp_path / "sae.names.txt").write_text("edges\ncurves\nfur\n")
    loaded = load_dictionary(tmp_path / "sae.npy", "conv3", 8)
    np.testing.assert_array_equal(loaded.vectors, matrix)
    assert loaded.names == ("edges", "curves", "fur")
    save_file({"w": matrix}, str(tmp_path / "nmf.safetensors"), metadata={"names": '["a", "b", "c"]'})
    assert load_dictionary(tmp_path / "nmf.safetensors", "conv3", 8).names == ("a", "b", "c")
    np.save(tmp_path / "plain.npy", matrix)
    assert load_dictionary(tmp_path / "plain.npy", "conv3", 8).names[2] == "direction 2"
    with pytest.raises(DictionaryError, match=r"needs \(K, 16\)"):
        load_dictionary(tmp_path / "plain.npy", "conv3", 16)
    with pytest.raises(DictionaryError, match="names 3 directions but holds 2"):
        np.save(tmp_path / "sae.npy", matrix[:2])
        load_dictionary(tmp_path / "sae.npy", "conv3", 8)


def test_one_hot_dictionary_scans_exactly_like_the_channels() -> None:
    model = load_model("tiny-cnn")
    source = open_source("demo")
    shard = ShardRef(0, tuple(source.ids()[:20]))
    channels = model.channels("conv3")
    scan = scan_shard(model, ["conv3"], source, shard, k=3, directions={"conv3": torch.eye(channels)})
    basis, dictionary = scan.layers["conv3"], scan.layers["conv3@direction"]
    for side in ("top", "bottom"):
        for part in ("values", "ids", "ys", "xs"):
            mine, theirs = getattr(getattr(basis, side), part), getattr(getattr(dictionary, side), part)
            np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(basis.histogram, dictionary.histogram)


def test_class_of_a_direction_follows_the_rest_of_the_network() -> None:
    """Known answer: channel j of the layer feeds (through ReLU, pooling, a permuted linear) class perm[j]."""
    from torch import nn

    from atlas.kinds.actatlas.classes import class_gains
    from atlas.models.loaded import freeze
    from atlas.models.registry import Preprocessing

    perm = [2, 0, 3, 1]
    head = nn.Linear(4, 4)
    with torch.no_grad():
        head.weight.copy_(torch.eye(4)[perm].T)
        head.bias.zero_()
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    model = freeze("planted", body, Preprocessing(16))
    directions = np.eye(4, dtype=np.float32) * 3
    gains = class_gains(model, "1", directions, np.zeros(4, np.float32))
    assert gains.argmax(axis=1).tolist() == perm
    assert np.abs(class_gains(model, "1", directions[:1] * 0, np.zeros(4, np.float32))).max() == 0


def test_one_hot_dictionary_layer_gives_exactly_the_channels_results(tmp_path) -> None:
    """Known answer: as a layer, a one-hot dictionary has the channels' activations, examples, renders."""
    from dataclasses import replace

    from atlas.optvis import render_channels
    from atlas.plan.dictionary import attach_layers
    from atlas.plan.spec import LayerSpec, RenderSpec

    model = load_model("tiny-cnn")
    channels = model.channels("conv3")
    np.save(tmp_path / "eye.npy", np.eye(channels, dtype=np.float32))
    (layer,) = attach_layers(model, [LayerSpec("conv3", (0, 1), tmp_path / "eye.npy")])
    assert layer.name.startswith("conv3@eye:") and model.channels(layer.name) == channels
    np.save(tmp_path / "random.npy", np.random.default_rng(0).normal(size=(5, channels)).astype(np.float32))
    attach_layers(model, [LayerSpec("conv3", None, tmp_path / "random.npy")])
    probe = torch.rand(2, 3, 64, 64)
    plain = load_model("tiny-cnn").activations(probe, ["logits"])["logits"]
    torch.testing.assert_close(model.activations(probe, ["logits"])["logits"], plain)  # network untouched
    assert attach_layers(model, [layer]) == (layer,)  # idempotent: workers attach the same way
    source = open_source("demo")
    shard = ShardRef(0, tuple(source.ids()[:16]))
    scan = scan_shard(model, ["conv3", layer.name], source, shard, k=3)
    basis, dictionary = scan.layers["conv3"], scan.layers[layer.name]
    np.testing.assert_array_equal(basis.top.ids, dictionary.top.ids)
    np.testing.assert_array_equal(basis.top.values, dictionary.top.values)
    np.testing.assert_array_equal(basis.histogram, dictionary.histogram)
    settings = replace(RenderSpec(), steps=4, size=32, batch=2, objectives=("channel",))
    ours = render_channels(model, layer.name, (0, 1), settings)
    theirs = render_channels(model, "conv3", (0, 1), settings)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


def test_token_layers_give_vectors_and_dictionaries_like_maps(tmp_path) -> None:
    """A ViT's token layer: one vector per image from its patch grid; a one-hot dictionary equals it."""
    from atlas.plan.dictionary import attach_layers
    from atlas.plan.spec import LayerSpec

    model = load_model("timm:deit_tiny_patch16_224", weights="none")
    channels = model.channels("blocks.0")
    np.save(tmp_path / "eye.npy", np.eye(channels, dtype=np.float32))
    (layer,) = attach_layers(model, [LayerSpec("blocks.0", None, tmp_path / "eye.npy")])
    x01 = torch.rand(2, 3, 224, 224)
    outputs = model.activations(x01, ["blocks.0", layer.name])
    torch.testing.assert_close(outputs[layer.name], outputs["blocks.0"])
    sample = VectorSample.from_batch(["a.png", "b.png"], outputs, size=4)
    assert sample.vectors["blocks.0"].shape == (2, channels)  # one patch position per image
    rows = [["a.png", "b.png"].index(i) for i in sample.ids]  # each layer samples its own position
    base = positions(outputs["blocks.0"])[rows, sample.positions[layer.name]].numpy()
    np.testing.assert_allclose(sample.vectors[layer.name], base, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # shares the UMAP compile with test_planted_clusters_stay_apart (same process)
def test_atlas_runs_end_to_end_on_a_vit_token_layer() -> None:
    """Collect, layout, grid, icons (with classes) and thumbnails on a ViT's token layer.

    Token layers come from the model as patch maps, so each image gives one hash-chosen patch
    token; the class token is never sampled.
    """
    pytest.importorskip("umap")
    from dataclasses import replace

    from PIL import Image

    from atlas.kinds.actatlas.images import THUMB_SIZE, thumbnails
    from atlas.kinds.actatlas.layout import LayoutSettings, layout
    from atlas.kinds.actatlas.stage import IconsWork, icons_tables
    from atlas.plan.spec import RenderSpec
    from atlas.plan.units import make_unit

    model = load_model("timm:deit_tiny_patch16_224", weights="none")
    assert model.layout("blocks.1").kind == "tokens"
    source = open_source("demo")
    shard = ShardRef(0, tuple(source.ids()[:16]))
    _, sample = collect_shard(model, ["blocks.1"], source, shard, size=100, k=1, batch_size=16)
    vectors, chosen = sample.vectors["blocks.1"], sample.positions["blocks.1"]
    assert vectors.shape == (16, 192) and chosen.max() < 14 * 14  # patches only
    name = sample.ids[0]
    pixels = np.asarray(source.load(name).convert("RGB").resize((224, 224)), np.float32) / 255
    patches = model.activations(torch.from_numpy(pixels).permute(2, 0, 1)[None], ["blocks.1"])["blocks.1"]
    np.testing.assert_allclose(vectors[0], positions(patches)[0, chosen[0]].numpy(), atol=0.2, rtol=0.1)
    coords = layout(vectors, LayoutSettings(n_neighbors=5, max_fit=12))  # 4 placed by `transform`
    assert coords.shape == (16, 2) and np.isfinite(coords).all()
    cells = grid(coords, vectors, 2, min_count=2)
    assert cells.counts.sum() == 16 and len(cells.kept) >= 2
    settings = replace(RenderSpec(), steps=2, size=224, batch=4)  # a ViT takes 224 x 224 only
    work = IconsWork("grid-key", 2, settings)
    unit = make_unit("digest", "blocks.1", cells.kept.tolist(), work, inputs=(cells.means, vectors.mean(0)))
    icons = icons_tables(model, unit, work)["icons"]
    assert icons.column("cell").to_pylist() == cells.kept.tolist()
    assert all(0 <= c < 1000 for c in icons.column("class").to_pylist())  # through the rest of the ViT
    assert np.isfinite(icons.column("cosine").to_numpy()).all()
    assert Image.open(io.BytesIO(icons.column("image")[0].as_py())).size == (224, 224)
    thumbs = thumbnails(model, "blocks.1", source, [(name, int(chosen[0]))])
    assert Image.open(io.BytesIO(thumbs[(name, int(chosen[0]))])).size == (THUMB_SIZE, THUMB_SIZE)


def test_places_rank_directions_per_cell_by_projection_and_cells_per_direction_by_cosine() -> None:
    from atlas.kinds.actatlas.places import places

    means = np.array([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]], np.float32)
    directions = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    found = places(np.array([10, 11, 12]), means, directions, top=1, places_per_direction=1)
    rows = {
        (int(c), int(d)): (int(r), int(p))
        for c, d, r, p in zip(found.cell, found.direction, found.cell_rank, found.place_rank, strict=True)
    }
    # cell 12's mean has projection 1 on both axes (tie: the first direction); by cosine the
    # loud cell 10 is direction 0's place and cell 11 direction 1's, though cell 10 projects 4.
    assert rows[(10, 0)] == (0, 0) and rows[(11, 1)] == (0, 0) and rows[(12, 0)] == (0, -1)
    assert rows[(10, 2)] == (-1, 0)  # direction 2 points nowhere: its best cell is still listed
    assert len(rows) == 4
    np.testing.assert_allclose(
        found.cosine[(found.cell == 12) & (found.direction == 0)], [2**-0.5], rtol=1e-6
    )


@settings(max_examples=12, deadline=None)
@given(features=st.sampled_from([16, 32, 2048]), seed=st.integers(0, 2**16))
def test_an_sae_feature_is_placed_where_the_atlas_points_along_its_decoder_row(
    tmp_path_factory: pytest.TempPathFactory, features: int, seed: int
) -> None:
    """An SAE layer over an atlas layer gets places like a dictionary's, with its decoder rows as
    directions from b_dec: a cell whose mean is b_dec plus a multiple of feature f's decoder row
    is f's first place, whatever the SAE's width (K < C, K = C, K = 64 x C) and b_dec."""
    from safetensors.numpy import save_file

    from atlas.kinds.actatlas.stage import PlacesWork, _grid_extras, places_table
    from atlas.plan.dictionary import attach_layers
    from atlas.plan.spec import parse_spec
    from atlas.plan.units import make_unit

    rng = np.random.default_rng(seed)
    width = 32  # tiny-cnn's conv2
    w_dec = rng.normal(size=(features, width)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    b_dec = rng.normal(0, 3, width).astype(np.float32)
    folder = tmp_path_factory.mktemp("sae")
    save_file(
        {
            "W_enc": w_dec.T.copy(),
            "b_enc": np.zeros(features, np.float32),
            "W_dec": w_dec,
            "b_dec": b_dec,
        },
        str(folder / "sae.safetensors"),
    )
    text = f"""
    [job]
    out = "{folder / "out"}"
    [model]
    name = "tiny-cnn"
    [[layers]]
    name = "conv2"
    [[layers]]
    name = "conv2"
    sae = "{folder / "sae.safetensors"}"
    [examples]
    source = "demo"
    [activation_atlas]
    layers = ["conv2"]
    grids = [4]
    """
    spec = parse_spec(text.replace("\n    ", "\n"), source="<test spec>")
    model = load_model("tiny-cnn")
    spec = spec.replace(layers=attach_layers(model, spec.layers))
    sae_layer = spec.layers[1].name
    grid_unit = make_unit("digest", "conv2", (), PlacesWork("grid-key", 4))
    extras = _grid_extras(spec, "digest", grid_unit)
    (unit,) = [u for u in extras if isinstance(u.work, PlacesWork)]  # one for the SAE layer
    assert unit.layer == sae_layer
    planted = rng.choice(features, size=4, replace=False)
    noise = rng.normal(0, 0.05, (4, width)).astype(np.float32)
    means = b_dec + 5 * w_dec[planted] + noise  # cell i points along feature planted[i]'s row
    cells = pa.table({"cell": np.arange(4, dtype=np.int64), "mean": [list(map(float, m)) for m in means]})
    table = places_table(spec, model, cells, unit).to_pylist()
    for cell, feature in enumerate(planted):
        ranked = [r for r in table if r["direction"] == feature and r["place_rank"] == 0]
        assert [r["cell"] for r in ranked] == [cell]
        assert ranked[0]["cosine"] > 0.95
        first = [r for r in table if r["cell"] == cell and r["cell_rank"] == 0]
        assert [r["direction"] for r in first] == [feature]
