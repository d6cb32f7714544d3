"""Transformer layers: layouts found at load, (B, C, H, W) views of tokens and Swin maps, objectives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from training import small_vit

from atlas.cli import main
from atlas.models import LoadedModel, ModelError, UnknownLayerError, load_model
from atlas.models.layout import CHANNELS_LAST, TOKENS, Layout, find_layout
from atlas.optvis import objectives as obj
from atlas.optvis.param import make_param
from atlas.optvis.recipes import render_channels, render_directions, render_pair
from atlas.optvis.render import RenderError, render
from atlas.plan.spec import RenderSpec


def _raw(model: LoadedModel, layer: str, x01: torch.Tensor) -> torch.Tensor:
    """The module's own output, captured with a plain hook (the reference for the views)."""
    seen = []
    handle = dict(model.module.named_modules())[layer].register_forward_hook(lambda _m, _i, o: seen.append(o))
    try:
        with torch.no_grad():
            model.module(model.normalize(x01))
    finally:
        handle.remove()
    out = seen[0]
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture(scope="module")
def deit() -> LoadedModel:
    return load_model("timm:deit_tiny_patch16_224", weights="none")


@pytest.fixture(scope="module")
def small_torchvision_vit() -> LoadedModel:
    return small_vit()  # loaded as a module:... ViT would be: no model source, no folding


def test_timm_vit_lists_mlp_units_attention_and_blocks_with_token_layouts(deit: LoadedModel) -> None:
    infos = {info.name: info for info in deit.layers()}
    mlp = infos["blocks.3.mlp.act"]
    assert (mlp.channels, mlp.layout, mlp.prefix, mlp.height, mlp.width, mlp.role) == (
        768,
        TOKENS,
        1,
        14,
        14,
        "mlp",
    )
    assert infos["blocks.3.attn"].role == "attention" and infos["blocks.3"].role == "block"
    assert [i.name for i in deit.layers() if i.role == "mlp"] == [f"blocks.{b}.mlp.act" for b in range(12)]
    assert deit.preprocessing.mean == (0.485, 0.456, 0.406) and deit.preprocessing.fixed_size


def test_token_layers_come_back_as_patch_maps_and_the_class_token_as_its_own(deit: LoadedModel) -> None:
    x = torch.rand(2, 3, 224, 224)
    out = deit.activations(x, ["blocks.1.mlp.act", "blocks.1@cls"])
    raw = _raw(deit, "blocks.1.mlp.act", x)
    assert out["blocks.1.mlp.act"].shape == (2, 768, 14, 14)
    # patch (row 2, column 5) is token 1 + 2 * 14 + 5: the class token comes first
    assert torch.allclose(out["blocks.1.mlp.act"][:, :, 2, 5], raw[:, 1 + 2 * 14 + 5])
    assert torch.allclose(out["blocks.1@cls"][:, :, 0, 0], _raw(deit, "blocks.1", x)[:, 0])
    assert deit.channels("blocks.1@cls") == 192


@pytest.mark.parametrize("trace", [True, False])
def test_truncated_forward_stops_at_the_deepest_transformer_block(deit: LoadedModel, trace: bool) -> None:
    deit.truncated({"blocks.1.mlp.act"})  # tracing (once per layer set) walks the whole model
    ran = []
    handle = deit.module.blocks[2].register_forward_hook(lambda *_: ran.append(2))
    deit.trace = trace
    try:
        deit.activations(torch.rand(1, 3, 224, 224), ["blocks.1.mlp.act"])
    finally:
        handle.remove()
        deit.trace = True
    assert ran == []


def test_layer_names_get_close_matches_and_cls_needs_a_class_token(deit: LoadedModel) -> None:
    with pytest.raises(UnknownLayerError, match=r"blocks\.3\.mlp\.act"):
        deit.resolve_layer("blocks.3.mlp.ac")
    with pytest.raises(UnknownLayerError, match="no class token"):
        deit.resolve_layer("patch_embed@cls")  # the patch embedding has no class token yet


def test_torchvision_vit_and_its_mlp_hidden_units(small_torchvision_vit: LoadedModel) -> None:
    model = small_torchvision_vit
    infos = {info.name: info for info in model.layers()}
    hidden = "encoder.layers.encoder_layer_1.mlp.1"  # GELU inside MLPBlock
    assert (infos[hidden].channels, infos[hidden].role, infos[hidden].shape) == (
        64,
        "mlp",
        Layout(TOKENS, (4, 4), 1),
    )
    assert infos["encoder.layers.encoder_layer_1.self_attention"].role == "attention"
    assert model.fixed_size  # patch tokens: the input size is fixed though the source did not say
    x = torch.rand(3, 3, 32, 32)
    attention = model.activations(x, ["encoder.layers.encoder_layer_0.self_attention"])
    assert attention["encoder.layers.encoder_layer_0.self_attention"].shape == (3, 16, 4, 4)


def test_swin_stages_are_channels_last_and_read_as_maps() -> None:
    model = load_model("torchvision:swin_t", weights="none")
    info = {i.name: i for i in model.layers()}["features.1.0.mlp.1"]
    assert (info.layout, info.channels, info.height, info.role) == (CHANNELS_LAST, 384, 56, "mlp")
    x = torch.rand(1, 3, 224, 224)
    view = model.activations(x, ["features.1.0.mlp.1"])["features.1.0.mlp.1"]
    assert torch.allclose(view, _raw(model, "features.1.0.mlp.1", x).permute(0, 3, 1, 2))


def test_channel_and_neuron_read_features_over_patches_not_the_class_token(deit: LoadedModel) -> None:
    x = torch.rand(2, 3, 224, 224)
    raw = _raw(deit, "blocks.0.mlp.act", x)
    acts = deit.activations(x, ["blocks.0.mlp.act"])
    state = obj.StepState(acts, x)
    assert torch.allclose(obj.channel("blocks.0.mlp.act", 7)(state), raw[:, 1:, 7].mean(dim=1), atol=1e-6)
    # 14 x 14 grid: the centre is between four patches; neuron takes row 7, column 7 (below right)
    centre_token = 1 + 7 * 14 + 7
    assert torch.allclose(obj.neuron("blocks.0.mlp.act", 7)(state), raw[:, centre_token, 7])
    diversity = obj.diversity("blocks.0.mlp.act")(state)
    assert diversity.shape == (2,) and torch.isfinite(diversity).all()


def test_fixed_size_models_refuse_other_render_sizes_before_any_step(deit: LoadedModel) -> None:
    with pytest.raises(RenderError, match="takes only 224x224.*--size 224"):
        render(deit, obj.channel("blocks.0.mlp.act", 0), make_param("fourier", 1, 128), steps=1)


def test_open_clip_tower_has_clip_statistics_and_tokens() -> None:
    model = load_model("open_clip:ViT-B-32", weights="none")
    assert model.preprocessing.mean[0] == pytest.approx(0.4815, abs=1e-4) and model.input_size == 224
    info = {i.name: i for i in model.layers()}["transformer.resblocks.11.mlp.gelu"]
    assert (info.channels, info.shape, info.role) == (3072, Layout(TOKENS, (7, 7), 1), "mlp")
    with pytest.raises(ModelError, match="pretrained tags"):
        load_model("open_clip:ViT-B-32")


def test_find_layout_reads_shapes() -> None:
    assert find_layout((1, 201, 384), prefix_hint=5) == Layout(TOKENS, (14, 14), 5)  # 4 registers
    assert find_layout((1, 196, 64)) == Layout(TOKENS, (14, 14), 0)
    assert find_layout((1, 7, 7, 768)) == Layout(CHANNELS_LAST, (7, 7))
    assert find_layout((64, 49, 96)) is None  # windows folded into the batch
    assert find_layout((1, 64, 49, 64)) is None  # MaxViT partitions


def test_unknown_timm_model_names_close_matches() -> None:
    with pytest.raises(ModelError, match="deit_tiny_patch16_224"):
        load_model("timm:deit_tiny_patch16_22", weights="none")


@pytest.mark.slow
def test_vit_job_plans_every_mlp_unit_of_every_block(tmp_path) -> None:
    text = (Path(__file__).parents[1] / "jobs" / "vit.toml").read_text()
    spec = tmp_path / "vit.toml"
    text = text.replace('out = "atlas-out/vit_b_16"', f'out = "{tmp_path / "out"}"')
    spec.write_text(
        text.replace('name = "torchvision:vit_b_16"', 'name = "torchvision:vit_b_16"\nweights = "none"')
    )
    result = CliRunner().invoke(main, ["plan", str(spec)])
    assert result.exit_code == 0, result.output
    covered: dict[str, list[int]] = {}
    for layer, first, last in re.findall(r"^render-\w+  render (\S+) (\d+)\.\.(\d+)$", result.output, re.M):
        covered.setdefault(layer, []).extend(range(int(first), int(last) + 1))
    assert list(covered) == [f"encoder.layers.encoder_layer_{b}.mlp.1" for b in range(12)]
    assert all(channels == list(range(3072)) for channels in covered.values())
    assert re.search(r"^\d+ units \(1152 render, \d+ scan\)", result.output, re.M)
    bad = spec.read_text().replace("size = 224", "size = 128")
    spec.write_text(bad)
    result = CliRunner().invoke(main, ["plan", str(spec)])
    assert result.exit_code != 0 and "set size = 224" in result.output


def test_missing_timm_weights_fail_at_once_saying_how_to_get_them() -> None:
    # The Hugging Face cache here is empty and there is no network: the cache alone is read.
    with pytest.raises(ModelError, match=r"pretrained=True.*weights = \"none\""):
        load_model("timm:deit_tiny_patch16_224")


def test_atlas_layers_prints_layouts_and_roles() -> None:
    result = CliRunner().invoke(main, ["layers", "timm:deit_tiny_patch16_224", "--weights", "none"])
    assert result.exit_code == 0, result.output
    line = next(text for text in result.output.splitlines() if text.strip().startswith("blocks.4.mlp.act"))
    assert "768 channels" in line and "tokens (B,N,C): 1 cls/reg + 14x14 patches" in line
    assert "MLP hidden units" in line and "@cls" in result.output


def test_directions_pairs_and_diversity_render_on_token_layers(small_torchvision_vit: LoadedModel) -> None:
    layer = "encoder.layers.encoder_layer_1.mlp.1"
    settings = RenderSpec(
        steps=2, size=32, batch=4, param="maco", transforms="vit", objectives=("diversity",), diversity=2
    )
    rows = render_channels(small_torchvision_vit, layer, [3], settings)
    assert [row.objective for row in rows] == ["diversity", "diversity"]
    directions = render_directions(small_torchvision_vit, layer, 2, settings, seed=0)
    pair = render_pair(small_torchvision_vit, layer, 1, 2, settings, steps_between=3)
    assert len(directions) == 2 and [row.objective for row in pair] == ["pair"] + ["interpolation"] * 3
    assert all(row.image.shape == (32, 32, 3) for row in [*rows, *directions, *pair])
