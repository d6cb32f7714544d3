"""Parameterizations produce valid images; transforms are exact, per element and seeded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atlas.optvis import param as P
from atlas.optvis import transforms as T
from atlas.quality.checkset import SHIFT_FRACTION


@pytest.mark.parametrize("kind", P.PARAMS)
def test_every_parameterization_gives_valid_seeded_images(kind):
    images = P.make_param(kind, batch=3, size=16, seed=1)()
    assert images.shape == (3, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, P.make_param(kind, batch=3, size=16, seed=1)())
    assert not torch.equal(images, P.make_param(kind, batch=3, size=16, seed=2)())


def test_fourier_scale_decays_with_frequency():
    scale = P.frequency_scale(8, 8, decay_power=1.0)
    assert scale.shape == (8, 5)
    assert scale[0, 1] == pytest.approx(8.0) and scale[0, 4] == pytest.approx(2.0)
    assert torch.all(P.frequency_scale(8, 8, decay_power=0.0) == 1)


def test_shared_spectrum_ties_the_batch_together():
    param = P.FourierParam(batch=3, size=8, shared=True)
    param().sum().backward()
    assert param.shared is not None and param.shared.grad is not None
    assert torch.allclose(param.shared.grad[0], param.spectrum.grad.sum(dim=0), atol=1e-6)
    with pytest.raises(P.ParamError, match="fourier"):
        P.make_param("pixel", 2, 8, shared=True)


def test_colour_decorrelation_mixes_channels():
    grey_free = torch.zeros(1, 3, 2, 2)
    grey_free[:, 0] = 1.0
    mixed = P.decorrelate_colors(grey_free)
    assert torch.all(mixed[:, :, 0, 0] > 0)  # the first component is luminance: all of R, G, B


def test_maco_optimizes_only_the_phase_and_keeps_the_magnitude():
    images = torch.rand(4, 3, 20, 20)
    magnitude = P.maco_magnitude(images, size=16)
    assert magnitude.shape == (3, 16, 9)
    assert magnitude[:, 0, 0].abs().max() < 1e-5  # mean removed
    param = P.MacoParam(batch=2, size=16, magnitude=magnitude)
    assert [name for name, _ in param.named_parameters()] == ["phase"]
    with pytest.raises(P.ParamError, match="maco_magnitude"):
        P.MacoParam(batch=2, size=32, magnitude=magnitude)
    default = P.default_maco_magnitude(16)
    assert default.shape == (3, 16, 9) and default[0, 0, 1] > default[0, 0, 8]


def test_generator_parameterization_optimizes_the_latent():
    generator = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Unflatten(1, (3, 8, 8)), nn.Sigmoid())
    param = P.GeneratorParam(generator, batch=2, latent_shape=(4,), seed=0)
    images = param()
    assert images.shape == (2, 3, 8, 8)
    images.mean().backward()
    assert param.latent.grad is not None
    assert all(w.grad is None for w in generator.parameters())
    flat = P.GeneratorParam(nn.Flatten(), batch=2, latent_shape=(3, 4, 4))
    with pytest.raises(P.ParamError, match=r"\(B, 3, H, W\)"):
        flat()


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pad_matches_constant_padding():
    x = torch.rand(2, 3, 6, 6)
    assert torch.allclose(T.compose([T.pad(3)])(x, _generator()), F.pad(x, [3] * 4, value=0.5), atol=1e-6)


def test_jitter_crops_each_element_at_its_own_offset():
    x = torch.rand(16, 3, 8, 8)
    padded = F.pad(x, [3] * 4, value=0.5)
    out = T.compose([T.pad(3), T.jitter(6)])(x, _generator())
    offsets = set()
    for element in range(16):
        matches = [
            (row, col)
            for row in range(7)
            for col in range(7)
            if torch.allclose(out[element], padded[element, :, row : row + 8, col : col + 8], atol=1e-5)
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_rotation_and_scale_about_the_centre():
    x = torch.rand(2, 3, 9, 9)
    rotated = T.compose([T.random_rotate([90])])(x, _generator())
    assert torch.allclose(rotated, x.rot90(1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(T.compose([T.random_scale([1.0])])(x, _generator()), x, atol=1e-6)
    zoomed = T.compose([T.random_scale([2.0])])(x, _generator())
    assert torch.allclose(zoomed[:, :, 4, 4], x[:, :, 4, 4], atol=1e-6)  # the centre stays put


def test_presets_are_seeded_differentiable_and_sized():
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    standard = T.preset("standard", 32)
    out = standard(x, _generator(1))
    assert out.shape == (3, 3, 32 + 24 - 12, 32 + 24 - 12)
    assert torch.equal(out, standard(x, _generator(1)))
    assert not torch.equal(out, standard(x, _generator(2)))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert T.preset("distill", 32)(x, _generator()).shape[-1] == 32 + 32 - 24
    assert T.preset("vit", 32)(x, _generator()).shape[-1] == 32 + 8 - 6
    assert torch.equal(T.preset("none", 32)(x, _generator()), x)


def test_wide_presets_scale_pad_and_jitter_with_the_render_size():
    """At 128 px `wider` pads 24 and jitters 32 + 16 (the recipe study's amounts); at 64 px half
    that, so its jitter stays short of the check set's quarter shift at every size."""
    for size, pad, jitters in ((128, 24, 48), (64, 12, 24), (256, 48, 96)):
        x = torch.rand(1, 3, size, size)
        assert T.preset("wider", size)(x, _generator()).shape[-1] == size + 2 * pad - jitters
        assert jitters / 2 < size * SHIFT_FRACTION
    assert T.preset("wide", 64)(torch.rand(1, 3, 64, 64), _generator()).shape[-1] == 64 + 16 - 12


def test_bad_transforms_are_explained():
    with pytest.raises(T.TransformError, match="standard"):
        T.preset("standrd", 32)
    with pytest.raises(T.TransformError, match="larger than"):
        T.compose([T.jitter(10)])(torch.rand(1, 3, 8, 8), _generator())
    with pytest.raises(T.TransformError, match="positive"):
        T.random_scale([0.0])
    with pytest.raises(T.TransformError, match="fill value"):
        T.compose([T.pad(1, 0.0), T.pad(1, 1.0)])
