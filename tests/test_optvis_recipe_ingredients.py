"""Recipe ingredients: learning-rate schedules, multi-resolution parameterization, blur weight."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from atlas.models import load_model
from atlas.optvis import RenderError, render, render_channels
from atlas.optvis import objectives as obj
from atlas.optvis.param import FourierParam, make_param
from atlas.optvis.recipes import render_objective
from atlas.optvis.schedules import (
    COARSE_FACTORS,
    FLOOR,
    HOLD_FLOOR,
    HOLD_WARMUP_MAX,
    SCHEDULES,
    resolution_factor,
    warmup_cosine,
    warmup_hold_cosine,
)
from atlas.plan.spec import RenderSpec, SpecError, parse_spec
from atlas.quality import high_frequency_share


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-cnn")


def test_warmup_cosine_ramps_up_peaks_and_decays_to_the_floor():
    steps = 100
    factors = [warmup_cosine(step, steps) for step in range(1, steps + 1)]
    peak = factors.index(max(factors))
    assert max(factors) == pytest.approx(1.0)
    assert 0 < peak < steps // 4  # the peak comes after a short warm-up
    assert all(a < b for a, b in zip(factors[:peak], factors[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(factors[peak:], factors[peak + 1 :], strict=False))
    assert factors[-1] == pytest.approx(FLOOR)
    assert factors[0] < 0.2


@pytest.mark.parametrize("steps", [16, 64, 96, 256, 1000])
def test_warmup_hold_cosine_spends_the_step_size_of_constant_at_every_budget(steps):
    factors = [warmup_hold_cosine(step, steps) for step in range(1, steps + 1)]
    peak = max(factors)
    assert sum(factors) / steps == pytest.approx(1.0)  # lr is the mean step size
    assert 1.0 < peak < 1.3
    warmup = factors.index(peak) + 1
    assert 1 <= warmup <= HOLD_WARMUP_MAX  # a few steps, however long the run
    assert all(a < b for a, b in zip(factors[: warmup - 1], factors[1:warmup], strict=True))
    held = sum(1 for f in factors if f == pytest.approx(peak))
    assert held >= steps // 2  # the hold: most of the run at the peak
    assert all(a >= b for a, b in zip(factors[warmup - 1 :], factors[warmup:], strict=False))
    assert factors[-1] / peak == pytest.approx(HOLD_FLOOR, abs=0.05)  # the end still moves


def test_the_default_recipe_optimizes_as_far_as_plain_adam_at_a_short_budget(model):
    """Issue 25: at 96 steps and 64 px the previous default (warm-up + cosine to 0.05, half the
    steps coarse from 16 px) reached 0.26 where plain Adam reached 0.76, below a noise photo."""
    objective = obj.channel("conv2", 3)
    base = replace(RenderSpec(), steps=96, size=64, transforms="none")
    plain = replace(base, lr_schedule="constant", coarse_fraction=0.0)
    reached = {
        name: render_objective(model, objective, settings, 1, 0, []).activations["conv2"][0, 3].mean().item()
        for name, settings in (("default", base), ("plain", plain))
    }
    assert reached["plain"] > 0.5
    assert reached["default"] >= 0.9 * reached["plain"]


def test_constant_schedule_is_the_plain_optimizer(model):
    objective = obj.channel("conv2", 3)
    plain = render(model, objective, make_param("fourier", 1, 32), steps=6)
    named = render(model, objective, make_param("fourier", 1, 32), steps=6, lr_schedule="constant")
    cosine = render(model, objective, make_param("fourier", 1, 32), steps=6, lr_schedule="warmup-cosine")
    assert torch.equal(plain.images, named.images)
    assert not torch.allclose(plain.images, cosine.images)


def test_resolution_factor_steps_through_the_coarse_stages():
    factors = [resolution_factor(step, 40, 0.5) for step in range(1, 41)]
    assert factors[:10] == [COARSE_FACTORS[0]] * 10
    assert factors[10:20] == [COARSE_FACTORS[1]] * 10
    assert factors[20:] == [1] * 20
    assert {resolution_factor(step, 40, 0.0) for step in range(1, 41)} == {1}


def test_coarse_stages_keep_at_least_32_pixels():
    def stages(size: int) -> list[int]:
        return [resolution_factor(step, 40, 0.5, size) for step in range(1, 41)]

    assert stages(128) == [4] * 10 + [2] * 10 + [1] * 20  # 32 then 64 px
    assert stages(224) == stages(128)
    assert stages(64) == [2] * 20 + [1] * 20  # one coarse stage, at 32 px, for the whole share
    assert stages(32) == [1] * 40  # nothing coarser than 32 px


def test_band_limited_fourier_image_is_smooth_and_lifting_the_limit_keeps_it():
    param = FourierParam(2, 64, seed=1)
    with torch.no_grad():
        param.spectrum.mul_(50)  # a strongly textured image, still within the sigmoid's range
        full = param()
        param.band_limit(4)
        coarse = param()
        param.band_limit(1)
        lifted = param()
    assert high_frequency_share(full).min() > 0.05
    assert high_frequency_share(coarse).max() < 1e-3
    assert torch.allclose(coarse, lifted, atol=1e-6)  # upsampling does not change the image


def test_coarse_steps_optimize_only_the_low_band():
    param = FourierParam(1, 32, seed=0)
    param.band_limit(2)
    param().mean().backward()
    gradient = param.spectrum.grad.abs().sum(dim=(0, 1, -1))  # (32, 17) per frequency bin
    band = param.band
    assert gradient[band == 0].max() == 0
    assert gradient[band == 1].max() > 0


def test_multires_render_is_coarse_early_and_full_resolution_at_the_end(model):
    objective = obj.channel("conv2", [1, 2], batch=[0, 1])
    result = render(
        model, objective, make_param("fourier", 2, 128), steps=8, coarse_fraction=0.5, snapshots=(2, 8)
    )
    assert high_frequency_share(result.snapshots[2]).max() < 0.01  # a 32 px stage of a 128 px image
    assert torch.equal(result.snapshots[8], result.images)
    plain = render(model, objective, make_param("fourier", 2, 128), steps=8)
    assert not torch.allclose(plain.images, result.images)


def test_multires_leaves_parameterizations_without_a_resolution_alone(model):
    objective = obj.channel("conv2", 0)
    plain = render(model, objective, make_param("pixel", 1, 32), steps=6)
    multires = render(model, objective, make_param("pixel", 1, 32), steps=6, coarse_fraction=0.5)
    assert torch.equal(plain.images, multires.images)


def test_bad_ingredients_are_explained(model):
    objective = obj.channel("conv2", 0)
    with pytest.raises(RenderError, match="did you mean 'warmup-cosine'"):
        render(model, objective, make_param("fourier", 1, 32), steps=2, lr_schedule="warmup-cosin")
    with pytest.raises(RenderError, match=r"coarse_fraction must be in \[0, 1\)"):
        render(model, objective, make_param("fourier", 1, 32), steps=2, coarse_fraction=1.0)


def test_spec_checks_the_recipe_settings():
    def spec(render_lines: str) -> None:
        parse_spec(
            f'[job]\nname = "j"\n[model]\nname = "tiny-cnn"\n[[layers]]\nname = "conv2"\n[render]\n{render_lines}\n'
        )

    with pytest.raises(SpecError, match="lr_schedule"):
        spec('lr_schedule = "cosine"')
    with pytest.raises(SpecError, match="coarse_fraction"):
        spec("coarse_fraction = 1.5")
    with pytest.raises(SpecError, match="blur_weight"):
        spec("blur_weight = -1")
    assert set(SCHEDULES.names()) >= {RenderSpec().lr_schedule}


def test_blur_weight_smooths_the_rendered_pictures(model):
    # `wide`: the default `wider` chain's fixed 24 + 48 px of pad and jitter swamp a 32 px picture.
    settings = replace(
        RenderSpec(), steps=24, size=32, batch=2, objectives=("channel",), lr=0.1, transforms="wide"
    )
    plain = render_channels(model, "conv2", [0, 1], settings)
    # A light weight: a heavy one flattens the picture until 8-bit rounding is all that is left.
    blurred = render_channels(model, "conv2", [0, 1], replace(settings, blur_weight=0.01))

    def share(rows) -> float:
        images = torch.stack([torch.from_numpy(row.image).permute(2, 0, 1).float() / 255 for row in rows])
        return float(high_frequency_share(images).mean())

    assert share(blurred) < 0.5 * share(plain)
