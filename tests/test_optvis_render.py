"""Batched rendering on tiny-cnn: rows, determinism, truncation, errors, interactions."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import atlas
from atlas.models import UnknownLayerError, load_model
from atlas.optvis import (
    RenderError,
    random_directions,
    render,
    render_channels,
    render_directions,
    render_pair,
)
from atlas.optvis import objectives as obj
from atlas.optvis.param import make_param
from atlas.optvis.render import STEEPEST_DESCENT


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-cnn")


def settings(**overrides) -> SimpleNamespace:
    values = dict(
        steps=12,
        size=32,
        batch=8,
        lr=0.05,
        param="fourier",
        decorrelate=True,
        decay_power=1.0,
        transforms="standard",
        objectives=("channel", "neuron", "negative", "diversity"),
        diversity=3,
        diversity_weight=1.0,
        seed=0,
        precision="fp32",
        lr_schedule="constant",
        coarse_fraction=0.0,
        blur_weight=0.0,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def test_render_channels_rows_match_the_shard_contract(model):
    rows = render_channels(model, "conv2", [3, 5], settings())
    assert [(r.channel, r.objective, r.variant) for r in rows[:6]] == [
        (3, "channel", 0),
        (3, "neuron", 0),
        (3, "negative", 0),
        (3, "diversity", 0),
        (3, "diversity", 1),
        (3, "diversity", 2),
    ]
    assert len(rows) == 12
    for row in rows:
        assert row.layer == "conv2" and row.channel_b == -1
        assert row.image.dtype == np.uint8 and row.image.shape == (32, 32, 3)
        assert len(row.loss) == 12 and np.isfinite(row.loss).all()
    by_key = {(r.channel, r.objective, r.variant): r for r in rows}
    assert by_key[(3, "channel", 0)].activation > by_key[(3, "negative", 0)].activation
    assert by_key[(3, "channel", 0)].loss[-1] < by_key[(3, "channel", 0)].loss[0]


def test_rendering_is_deterministic_for_a_seed(model):
    first = render_channels(model, "conv2", [1], settings(objectives=("channel",)))
    again = render_channels(model, "conv2", [1], settings(objectives=("channel",)))
    other = render_channels(model, "conv2", [1], settings(objectives=("channel",), seed=1))
    assert np.array_equal(first[0].image, again[0].image)
    assert not np.array_equal(first[0].image, other[0].image)


def test_forward_stops_at_the_deepest_layer_read(model):
    calls = []
    handle = model.module.fc.register_forward_hook(lambda *_: calls.append(1))
    try:
        render_channels(model, "conv2", [0], settings(objectives=("channel",), steps=2))
    finally:
        handle.remove()
    assert calls == []


def test_render_returns_activations_curves_and_snapshots(model):
    objective = obj.channel("conv3", [0, 1], batch=[0, 1])
    result = render(model, objective, make_param("fourier", 2, 32), steps=6, snapshots=(2, 6))
    assert result.images.shape == (2, 3, 32, 32)
    assert result.loss.shape == (6, 2)
    assert set(result.snapshots) == {2, 6}
    assert torch.allclose(result.snapshots[6], result.images)
    assert result.activations["conv3"].shape[:2] == (2, 32)


def test_class_logit_yields_that_class(model):
    objective = obj.class_logit(4)
    result = render(model, objective, make_param("fourier", 2, 64), steps=30, lr=0.1, transforms="none")
    with torch.no_grad():
        logits = model.activations(result.images, ["logits"])["logits"]
    assert logits.argmax(dim=1).tolist() == [4, 4]


@pytest.mark.parametrize("mode", sorted(STEEPEST_DESCENT))
def test_steepest_descent_modes_increase_the_objective(model, mode):
    kind, decorrelate, optimizer = STEEPEST_DESCENT[mode]
    result = render(
        model,
        obj.channel("conv2", 2),
        make_param(kind, 1, 32, decorrelate=decorrelate),
        steps=10,
        lr=0.02,
        transforms="none",
        optimizer=optimizer,
    )
    assert result.loss[-1, 0] < result.loss[0, 0]


def test_directions_are_pure_and_projections_reported(model):
    vectors = random_directions(model, "conv2", 3, seed=7)
    assert vectors.shape == (3, 32)
    assert torch.equal(vectors, random_directions(model, "conv2", 3, seed=7))
    rows = render_directions(model, "conv2", 3, settings(batch=2), seed=7)
    assert [(r.objective, r.channel, r.variant) for r in rows] == [("direction", -1, i) for i in range(3)]
    image = torch.from_numpy(rows[2].image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        acts = model.activations(image, ["conv2"])["conv2"][0]
    projection = torch.einsum("chw,c->", acts, vectors[2]) / (acts.shape[1] * acts.shape[2])
    assert rows[2].activation == pytest.approx(projection.item(), abs=0.02)


def test_pair_and_interpolation_rows(model):
    rows = render_pair(model, "conv2", 1, 2, settings(), steps_between=4)
    assert [(r.objective, r.variant) for r in rows] == [("pair", 0)] + [
        ("interpolation", i) for i in range(4)
    ]
    assert all(r.channel == 1 and r.channel_b == 2 for r in rows)
    assert rows[1].activation > rows[4].activation  # the row moves from channel 1 towards 2
    with pytest.raises(RenderError, match="at least 2"):
        render_pair(model, "conv2", 1, 2, settings(), steps_between=1)


def test_bad_input_is_explained(model):
    with pytest.raises(UnknownLayerError, match="closest: conv2"):
        render_channels(model, "conv_2", [0], settings())
    with pytest.raises(RenderError, match="channel 40 is out of range.*32 channels"):
        render_channels(model, "conv2", [40], settings())
    with pytest.raises(RenderError, match="unknown render objective 'chanel'"):
        render_channels(model, "conv2", [0], settings(objectives=("chanel",)))
    with pytest.raises(UnknownLayerError, match="mixed4a"):
        render(model, obj.channel("mixed4a", 0), make_param("pixel", 1, 16), steps=1)


def test_divergence_names_the_unit_and_step(model):
    with pytest.raises(RenderError, match=r"conv2 channel 0 .*step \d+.*nan"):
        render_channels(model, "conv2", [0], settings(objectives=("channel",), lr=float("inf")))


def test_spec_dataclass_is_accepted(model):
    spec = pytest.importorskip("atlas.plan.spec")
    render_spec = replace(spec.RenderSpec(), steps=2, size=32, objectives=("channel",))
    rows = render_channels(model, "conv1", [0], render_spec)
    assert len(rows) == 1 and rows[0].image.shape == (32, 32, 3)


def _count_passes(monkeypatch) -> list[list[int]]:
    """Patch the renderer to record, per physical pass, the logical batch size of each part."""
    import atlas.optvis.recipes as recipes

    passes: list[list[int]] = []
    real = recipes.render_parts

    def counting(model, parts, **kwargs):
        passes.append([part.param().shape[0] for part in parts])
        return real(model, parts, **kwargs)

    monkeypatch.setattr(recipes, "render_parts", counting)
    return passes


def test_chunks_are_packed_full_without_splitting_groups(model, monkeypatch):
    passes = _count_passes(monkeypatch)
    rows = render_channels(model, "conv1", [0, 1, 2, 3], settings(steps=1))
    assert passes == [[8], [8], [8]]  # 4 x (3 singles + a group of 3) = 24 images, one chunk a pass on CPU
    assert [r.variant for r in rows if r.channel == 2 and r.objective == "diversity"] == [0, 1, 2]


def test_larger_passes_pack_the_same_chunks_with_the_same_results(model, monkeypatch):
    """A bigger physical batch runs the same fixed chunks together; every image comes out the same."""
    passes = _count_passes(monkeypatch)
    chosen = settings(steps=4)
    one_by_one = render_channels(model, "conv2", [0, 1, 2, 3], chosen)
    packed = render_channels(model, "conv2", [0, 1, 2, 3], chosen, images_per_pass=16)
    assert passes == [[8], [8], [8], [8, 8], [8]]
    assert [(r.channel, r.objective, r.variant) for r in one_by_one] == [
        (r.channel, r.objective, r.variant) for r in packed
    ]
    for alone, together in zip(one_by_one, packed, strict=True):
        assert abs(alone.activation - together.activation) <= 1e-4 * max(1.0, abs(alone.activation))
        assert np.abs(alone.image.astype(int) - together.image.astype(int)).max() <= 1


def test_mixed_precision_and_bad_precision(model):
    objective = obj.channel("conv2", 1)
    result = render(model, objective, make_param("fourier", 1, 32), steps=3, precision="bf16")
    assert torch.isfinite(result.images).all()
    with pytest.raises(RenderError, match="unknown precision 'fp8'"):
        render(model, objective, make_param("fourier", 1, 32), steps=1, precision="fp8")


def test_diversity_term_lowers_gram_similarity(model):
    def mean_cosine(objective: obj.Objective) -> float:
        result = render(model, objective, make_param("fourier", 4, 32), steps=15, lr=0.1)
        cosines = obj.gram_cosines(result.activations["conv2"])
        return float((cosines.sum() - cosines.diagonal().sum()) / 12)

    plain = mean_cosine(obj.channel("conv2", 5))
    diverse = mean_cosine(obj.channel("conv2", 5) + 1.0 * obj.diversity("conv2"))
    assert diverse < plain - 0.1


def test_non_finite_final_images_are_refused():
    from atlas.optvis.render import _check_finite

    images = torch.zeros(2, 3, 4, 4)
    images[1, 0, 0, 0] = float("inf")
    with pytest.raises(RenderError, match="final image of conv2 channel 7 holds NaN/Inf"):
        _check_finite(torch.zeros(5, 2), images, ["conv2 channel 3", "conv2 channel 7"])


ATLAS = str(Path(atlas.__file__).parent)
# Tensor calls that make the host wait for the device: reading a value back, or printing one.
READS_BACK = {
    "item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__float__", "__int__", "__index__",
    "__repr__", "__format__",
}  # fmt: skip


class HostSyncs(TorchFunctionMode):
    """Counts, by call site in atlas/, the calls that would stop the host on a GPU.

    Besides read-backs, a copy to a device that is not `non_blocking` counts: PyTorch waits for
    the device's queue after it. Calls inside torch itself are torch's business (and on a GPU
    the optimizer's step counters live on the host anyway).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        caller = sys._getframe(1)
        if caller.f_code.co_filename.startswith(ATLAS) and self._syncs(name, args, kwargs):
            self.sites[f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} {name}"] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _syncs(name: str, args: tuple, kwargs: dict) -> bool:
        if name in READS_BACK:
            return True
        if name == "to":  # to a device (named, or another tensor's) without non_blocking
            named = kwargs.get("device") is not None or any(
                isinstance(a, torch.device | str | torch.Tensor) for a in args[1:]
            )
            return named and not kwargs.get("non_blocking", False)
        if name in ("tensor", "as_tensor"):  # host data made on a device: a blocking copy
            return kwargs.get("device") is not None
        return False


def test_the_step_loop_never_waits_for_the_device(model):
    """What syncs a render does must not grow with its steps: none inside the loop."""

    def syncs(steps: int) -> Counter[str]:
        chosen = settings(steps=steps, batch=4)
        with HostSyncs() as counter:
            render_channels(model, "conv2", [0, 1], chosen, images_per_pass=8)  # two parts a pass
            render_directions(model, "conv2", 2, chosen, seed=0)
        return counter.sites

    syncs(1)  # what the model caches on first use is made once, not per step
    short, long = syncs(2), syncs(5)
    assert short, "the counter saw none of the reads after the loop: it is not counting"
    assert long == short, f"calls that wait for the device, per step: {long - short}"
