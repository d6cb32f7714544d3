"""Sparse autoencoders as units: feature activations exactly as the SAE computes them, from every
file layout people save, at every width; bad files are one line before any work."""

from __future__ import annotations

import json
import textwrap
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.numpy import save_file
from torch import nn

import atlas
from atlas.api import as_model
from atlas.cli import main
from atlas.kinds.features import logit_effects, nearest_features
from atlas.models import load_model
from atlas.optvis import objectives as obj
from atlas.optvis.objectives import StepState
from atlas.plan.sae import SaeError, attach_sae, layer_sae, load_sae
from atlas.plan.spec import LayerSpec
from atlas.store.store import open_store

LAYER, C = "conv2", 32  # tiny-cnn's conv2


def _weights(features: int, seed: int, activation: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {
        "W_enc": rng.normal(0, 1 / np.sqrt(C), (C, features)).astype(np.float32),
        "b_enc": rng.normal(0, 0.1, features).astype(np.float32),
        "W_dec": rng.normal(0, 1 / np.sqrt(features), (features, C)).astype(np.float32),
        "b_dec": rng.normal(0, 0.1, C).astype(np.float32),
    }
    if activation == "jumprelu":
        weights["threshold"] = rng.uniform(0.0, 0.3, features).astype(np.float32)
    return weights


def _save(folder: Path, layout: str, weights: dict, activation: str, k: int, shift: bool) -> Path:
    """The SAE written as SAELens's folder, a .safetensors file or a .npz file."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "saelens":
        path = folder / "sae"
        path.mkdir()
        save_file(weights, str(path / "sae_weights.safetensors"))
        config = {"d_in": C, "d_sae": weights["W_enc"].shape[1], "apply_b_dec_to_input": shift}
        config |= {"architecture": "standard" if activation == "relu" else activation}
        if activation == "topk":
            config["activation_fn_kwargs"] = {"k": k}
        (path / "cfg.json").write_text(json.dumps(config))
        return path
    if layout == "safetensors":
        path = folder / "sae.safetensors"
        metadata = {"activation": activation, "k": str(k), "apply_b_dec_to_input": str(shift)}
        save_file(weights, str(path), metadata=metadata)
        return path
    path = folder / "sae.npz"
    np.savez(path, activation=np.array(activation), k=np.array(k), **weights)
    return path


def _formula(
    acts: torch.Tensor, w: dict[str, np.ndarray], activation: str, k: int, shift: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAE written out: (B, C, H, W) layer activations -> (B, K, H, W) feature activations,
    and where they are decided beyond float32 rounding (a pre-activation within 1e-4 of a JumpReLU
    threshold, or a position whose k-th and (k+1)-th pre-activations are that close, could go
    either way in the model's float32 arithmetic)."""
    x = acts.permute(0, 2, 3, 1).double()
    if shift:
        x = x - torch.from_numpy(w["b_dec"]).double()
    pre = x @ torch.from_numpy(w["W_enc"]).double() + torch.from_numpy(w["b_enc"]).double()
    sure = torch.ones_like(pre, dtype=torch.bool)
    if activation == "relu":
        out = pre.clamp_min(0)
    elif activation == "jumprelu":
        threshold = torch.from_numpy(w["threshold"]).double()
        out = torch.where(pre > threshold, pre, torch.zeros_like(pre)).clamp_min(0)
        sure = (pre - threshold).abs() > 1e-4
    else:
        top = pre.topk(min(k + 1, pre.shape[-1]), dim=-1).values
        kth = top[..., k - 1 : k]
        out = torch.where(pre >= kth, pre, torch.zeros_like(pre)).clamp_min(0)
        if top.shape[-1] > k:
            sure = sure & ((top[..., k - 1 : k] - top[..., k:]).abs() > 1e-4)
    return out.permute(0, 3, 1, 2).float(), sure.permute(0, 3, 1, 2)


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("features", [C // 2, C, 64 * C])
@pytest.mark.parametrize("layout", ["saelens", "safetensors", "npz"])
def test_feature_activations_are_the_sae_formula(tmp_path, activation, features, layout) -> None:
    shift = layout != "npz"  # the .npz form has no setting for it: the default, no shift
    k = max(1, features // 8)
    weights = _weights(features, zlib.crc32(f"{activation}{features}{layout}".encode()) % 1000, activation)
    path = _save(tmp_path, layout, weights, activation, k, shift)
    model = load_model("tiny-cnn")
    sae = load_sae(path, LAYER, C)
    assert (sae.activation, sae.features, sae.apply_b_dec_to_input) == (activation, features, shift)
    name = attach_sae(model, sae)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = model.activations(images, [LAYER, name])
    expected, sure = _formula(outputs[LAYER], weights, activation, k, shift)
    assert outputs[name].shape == expected.shape == (3, features, 16, 16)
    assert sure.float().mean() > 0.5  # the comparison covers most values (topk at K = 2048 drops ~14%)
    torch.testing.assert_close(outputs[name][sure], expected[sure], atol=2e-5, rtol=1e-4)
    if activation == "topk":  # at most k features fire at each position
        assert int((outputs[name] > 0).sum(dim=1).max()) <= k
    assert model.channels(name) == features


def test_the_name_holds_every_setting(tmp_path) -> None:
    weights = _weights(16, 0, "topk")
    names = {
        load_sae(
            _save(tmp_path / f"{k}{shift}", "safetensors", weights, "topk", k, shift), LAYER, C
        ).layer_name
        for k in (2, 3)
        for shift in (False, True)
    }
    assert len(names) == 4 and all(n.startswith("conv2@sae:") for n in names)


BAD = {
    "no decoder bias": (lambda w: w.pop("b_dec"), "relu", 2, "no tensor 'b_dec'"),
    "W_enc transposed": (
        lambda w: w.update(W_enc=w["W_enc"].T.copy()),
        "relu",
        2,
        "W_enc has shape [16, 32]",
    ),
    "wrong layer width": (
        lambda w: w.update(b_dec=np.zeros(7, np.float32)),
        "relu",
        2,
        "b_dec has shape [7]",
    ),
    "NaN": (lambda w: w["b_enc"].__setitem__(0, np.nan), "relu", 2, "NaN"),
    "unknown activation": (lambda w: None, "gated", 2, "activation 'gated' is not one of"),
    "topk without k": (lambda w: None, "topk", 0, "needs k between 1 and 16"),
    "jumprelu without threshold": (lambda w: None, "jumprelu", 2, "needs a threshold"),
}


def _spec(folder: Path, sae: str, out: str = "out") -> Path:
    spec = folder / "job.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [job]
            out = "{folder / out}"
            [model]
            name = "tiny-cnn"
            [[layers]]
            name = "{LAYER}"
            sae = "{sae}"
            channels = "0:4"
            [render]
            steps = 4
            size = 32
            objectives = ["channel"]
            [examples]
            source = "demo"
            k = 3
            [interactions]
            random_directions = 0
            """
        )
    )
    return spec


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("layout", ["safetensors", "npz"])
def test_a_bad_sae_is_one_error_line_before_any_work(tmp_path, case, layout) -> None:
    change, activation, k, message = BAD[case]
    weights = _weights(16, 3, "relu")
    change(weights)
    path = _save(tmp_path, layout, weights, activation, k, False)
    result = CliRunner().invoke(main, ["plan", str(_spec(tmp_path, path.name))])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "cfg.json").unlink(), "needs cfg.json and sae_weights.safetensors"),
        (lambda p: (p / "cfg.json").write_text("{not json"), "cfg.json is not readable JSON"),
        (
            lambda p: (p / "cfg.json").write_text(json.dumps({"d_in": 99, "architecture": "standard"})),
            "d_in = 99",
        ),
        (
            lambda p: (p / "sae_weights.safetensors").write_bytes(b"garbage"),
            "not a readable safetensors file",
        ),
    ],
)
def test_a_damaged_saelens_folder_says_what_is_wrong(tmp_path, damage, message) -> None:
    path = _save(tmp_path, "saelens", _weights(16, 4, "relu"), "relu", 0, True)
    damage(path)
    with pytest.raises(SaeError, match=message):
        load_sae(path, LAYER, C)


def test_a_missing_sae_and_a_layer_with_both_are_spec_errors(tmp_path) -> None:
    result = CliRunner().invoke(main, ["plan", str(_spec(tmp_path, "nowhere"))])
    assert result.exit_code == 2 and "nowhere does not exist" in result.output
    spec = _spec(tmp_path, "sae.npz")
    spec.write_text(spec.read_text().replace('sae = "sae.npz"', 'sae = "sae.npz"\ndictionary = "d.npy"'))
    result = CliRunner().invoke(main, ["plan", str(spec)])
    assert result.exit_code == 2 and "not both" in result.output


def test_an_sae_layer_runs_as_a_job_and_its_examples_rank_by_the_feature(tmp_path) -> None:
    weights = _weights(C * 2, 5, "topk")
    _save(tmp_path, "saelens", weights, "topk", 8, True)
    result = CliRunner().invoke(main, ["run", str(_spec(tmp_path, "sae")), "--no-site"])
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "out")
    layers = store.layers("render")
    assert len(layers) == 1 and layers[0].startswith("conv2@sae:")
    examples = store.read("examples", layers[0]).to_pylist()
    tops = {
        c: [r["activation"] for r in examples if r["channel"] == c and r["bucket"] == "max"] for c in range(4)
    }
    assert all(values == sorted(values, reverse=True) for values in tops.values())
    assert all(v >= 0 for r in examples for v in [r["activation"]])  # a ReLU'd feature is never negative
    rendered = store.read("render", layers[0]).to_pylist()
    assert sorted(r["channel"] for r in rendered) == [0, 1, 2, 3]
    features = {r["channel"]: r for r in store.read("features", layers[0]).to_pylist()}
    unit = weights["W_dec"] / np.linalg.norm(weights["W_dec"], axis=1, keepdims=True)
    for channel, row in features.items():
        cosines = unit @ unit[channel]
        cosines[channel] = -np.inf
        assert row["nearest"] == list(np.argsort(-cosines)[:5])
        assert (
            row["raises_by"] == sorted(row["raises_by"], reverse=True)
            and row["lowers_by"][0] <= row["raises_by"][-1]
        )
    assert sorted(features) == [0, 1, 2, 3]
    built = CliRunner().invoke(main, ["site", str(tmp_path / "out")])
    assert built.exit_code == 0, built.output
    pages = (tmp_path / "out" / "site").glob("conv2-sae*.html")
    page = next(p for p in pages if p.name.count(".") == 1).read_text()  # not its .features.html
    assert page.count("data-features=") == 4 and page.count("data-active=") == 4
    actives = store.read("histogram", layers[0]).column("active").to_pylist()
    assert len(actives) == 4 and all(0 <= a <= 1 for a in actives)
    assert 'class="health">Of 4 features scanned' in page


@settings(max_examples=25, deadline=None)
@given(features=st.integers(2, 300), width=st.integers(1, 24), seed=st.integers(0, 1000), data=st.data())
def test_nearest_features_are_the_highest_decoder_cosines(features: int, width: int, seed: int, data) -> None:
    decoder = torch.from_numpy(np.random.default_rng(seed).normal(size=(features, width)).astype(np.float32))
    asked = data.draw(st.lists(st.integers(0, features - 1), min_size=1, max_size=20, unique=True))
    near, cosine = nearest_features(decoder, asked, 5)
    unit = (decoder / decoder.norm(dim=1, keepdim=True)).double().numpy()
    for row, feature in enumerate(asked):
        expected = unit @ unit[feature]
        expected[feature] = -np.inf
        count = min(5, features - 1)
        assert feature not in near[row] and len(near[row]) == count
        np.testing.assert_allclose(cosine[row], np.sort(expected)[::-1][:count], atol=1e-5)


class _LinearHead(nn.Module):
    """A layer `feat` read by a linear head through a spatial mean: a known logit effect."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.feat = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, 6)
        self.input_size = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x).mean(dim=(2, 3)))


def test_a_decoder_direction_moves_the_logits_as_the_network_says() -> None:
    module = _LinearHead().eval()
    model = as_model(module, device="cpu")
    decoder = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    effects = logit_effects(model, "feat", decoder, [0, 3, 4])
    with torch.no_grad():
        grey = model.normalize(torch.full((1, 3, 16, 16), 0.5))
        scale = float(module.feat(grey).flatten(2).norm(dim=1).mean())
        for row, feature in enumerate([0, 3, 4]):
            direction = scale * decoder[feature] / decoder[feature].norm()
            np.testing.assert_allclose(effects[row], (module.head.weight @ direction).numpy(), atol=1e-4)


def test_the_share_of_positions_a_unit_fires_at_is_counted_exactly() -> None:
    """`histogram.active`: positions at least 2^-10, over every position of every image."""
    model = load_model("tiny-cnn")
    size = model.input_size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    found = atlas.examples(model, "relu2", [Image.fromarray(p) for p in pixels], k=2, progress=False)
    active = dict(
        zip(
            found.histograms.column("channel").to_pylist(),
            found.histograms.column("active").to_pylist(),
            strict=True,
        )
    )
    with torch.no_grad():
        maps = model.activations(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255, ["relu2"])[
            "relu2"
        ]
    expected = (maps >= 2.0**-10).float().mean(dim=(0, 2, 3))
    assert sorted(active) == list(range(maps.shape[1]))
    np.testing.assert_allclose([active[c] for c in range(maps.shape[1])], expected.numpy(), atol=1e-6)
    assert min(active.values()) < max(active.values())  # some channels fire more often than others


def test_the_decoder_objective_is_the_projection_onto_the_decoder_row(tmp_path) -> None:
    """`sae_objective = "decoder"`: a unit is x . W_dec[i] at each position, not the encoder's
    feature activation; an encoder layer keeps its name (its content keys), a decoder one differs."""
    weights = _weights(48, 7, "relu")
    path = _save(tmp_path, "saelens", weights, "relu", 0, True)
    model = load_model("tiny-cnn")
    given = LayerSpec(LAYER, sae=path)
    encoder, decoder = (layer_sae(model, replace(given, sae_objective=o)) for o in ("encoder", "decoder"))
    names = attach_sae(model, encoder), attach_sae(model, decoder)
    assert names[0] == load_sae(path, LAYER, C).layer_name != names[1]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outputs = model.activations(images, [LAYER, *names])
    projection = torch.einsum("bchw,kc->bkhw", outputs[LAYER].float(), torch.from_numpy(weights["W_dec"]))
    torch.testing.assert_close(outputs[names[1]], projection, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outputs[names[0]], _formula(outputs[LAYER], weights, "relu", 0, True)[0])
    for feature in (0, 5, 47):  # the render objective (channel: mean over positions) follows the layer
        scores = [
            obj.channel(name, feature)(StepState(images=images, activations={name: outputs[name]}))
            for name in names
        ]
        torch.testing.assert_close(scores[1], projection[:, feature].mean(dim=(1, 2)))
        assert not torch.allclose(scores[0], scores[1])


@pytest.mark.parametrize(
    "table, message",
    [
        ('sae = "sae.npz"\nsae_objective = "logit"', "'logit' is not one of 'encoder', 'decoder'"),
        ('sae_objective = "decoder"', 'needs sae = "..." in the same table'),
    ],
)
def test_a_bad_sae_objective_is_one_error_line(tmp_path, table: str, message: str) -> None:
    _save(tmp_path, "npz", _weights(16, 3, "relu"), "relu", 0, False)
    spec = _spec(tmp_path, "sae.npz")
    spec.write_text(spec.read_text().replace('sae = "sae.npz"', table))
    result = CliRunner().invoke(main, ["plan", str(spec)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
