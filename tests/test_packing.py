"""Batches across units: render units optimized together give exactly what each gives alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from raytools import tiny_spec

from atlas.models import load_model
from atlas.optvis.recipes import render_channel_sets, render_channels
from atlas.plan.spec import LayerSpec, RenderSpec
from atlas.plan.units import ModelFacts, make_plan
from atlas.run.worker import UnitFailed, WorkerContext, run_unit, run_units

SETTINGS = RenderSpec(steps=3, size=40, batch=4, objectives=("channel", "negative", "diversity"), diversity=2)


@pytest.fixture(scope="module")
def googlenet():
    torch.manual_seed(0)
    return load_model("torchvision:googlenet", weights="none")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-cnn")


def _same(alone: list, packed: list) -> None:
    """Same pictures within float rounding. Measured on CPU: bitwise identical when the chunks
    hold two or more images; a one-image chunk alone takes oneDNN's batch-1 kernels, whose
    sums round differently (activations ~1e-7 relative apart after a few steps). So: pixels
    within one grey level, activations and loss curves within 1e-5 relative."""
    assert len(alone) == len(packed)
    for a, b in zip(alone, packed, strict=True):
        assert (a.layer, a.channel, a.objective, a.variant, a.label) == (
            b.layer,
            b.channel,
            b.objective,
            b.variant,
            b.label,
        )
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
        assert a.activation == pytest.approx(b.activation, rel=1e-5, abs=1e-7)
        assert a.loss == pytest.approx(b.loss, rel=1e-5, abs=1e-7)


def test_packed_channel_sets_are_image_for_image_what_each_gives_alone(googlenet) -> None:
    requests = [
        ("inception3a", [0, 1]),
        ("inception4a", [2]),
        ("inception3a", [5, 6, 7]),
        ("inception4a", [3]),
    ]
    packed = render_channel_sets(googlenet, requests, SETTINGS, images_per_pass=64)
    for (layer, channels), rows in zip(requests, packed, strict=True):
        _same(render_channels(googlenet, layer, channels, SETTINGS), rows)


@settings(max_examples=6, deadline=None)
@given(
    sets=st.lists(
        st.tuples(
            st.sampled_from(["conv1", "conv2"]),
            st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True),
        ),
        min_size=1,
        max_size=4,
    ),
    capacity=st.integers(min_value=1, max_value=40),
)
def test_any_sets_and_pass_size_give_the_alone_results(sets, capacity) -> None:
    model = _TINY
    packed = render_channel_sets(model, sets, SETTINGS, images_per_pass=capacity)
    for (layer, channels), rows in zip(sets, packed, strict=True):
        _same(render_channels(model, layer, channels, SETTINGS), rows)


def test_worker_runs_units_together_with_their_own_keys_and_tables(tmp_path) -> None:
    spec = tiny_spec(tmp_path / "out", channels="0:6")
    spec = spec.replace(layers=(LayerSpec("conv2", tuple(range(6))), LayerSpec("conv3", (0, 1))))
    model = load_model("tiny-cnn")
    plan = make_plan(spec, ModelFacts(model.digest, {"conv2": 32, "conv3": 64}))
    units = list(plan.units)
    outcomes = run_units(WorkerContext(model=model, examples=spec.examples, images_per_pass=64), units)
    for unit, tables in zip(units, outcomes, strict=True):
        alone = run_unit(WorkerContext(model=model, examples=spec.examples), unit)
        assert set(tables) == set(alone) == {"render", "quality"}
        assert set(tables["render"].column("unit_key").to_pylist()) == {unit.key}
        for column in ("layer", "channel", "objective", "variant", "label"):
            assert tables["render"].column(column).equals(alone["render"].column(column))
        for column in ("activation", "loss"):
            got = np.array(tables["render"].column(column).to_pylist(), dtype=float)
            np.testing.assert_allclose(got, alone["render"].column(column).to_pylist(), rtol=1e-5, atol=1e-7)
        assert tables["quality"].num_rows == alone["quality"].num_rows


def test_a_diverging_unit_fails_alone_and_its_companions_finish(tmp_path) -> None:
    spec = tiny_spec(tmp_path / "out", channels="0:3")
    model = load_model("tiny-cnn")
    plan = make_plan(spec, ModelFacts(model.digest, {"conv2": 32}))
    bad = replace(
        plan.units[1], work=replace(plan.units[1].work, render=replace(spec.render, lr=float("inf")))
    )
    outcomes = run_units(
        WorkerContext(model=model, examples=spec.examples, images_per_pass=64),
        [plan.units[0], bad, plan.units[2]],
    )
    assert isinstance(outcomes[1], UnitFailed), outcomes[1]
    assert bad.label in str(outcomes[1]) and ("diverged" in str(outcomes[1]) or "NaN" in str(outcomes[1]))
    assert all(isinstance(outcomes[i], dict) and outcomes[i]["render"].num_rows == 1 for i in (0, 2))


_TINY = load_model("tiny-cnn")  # one model for every example Hypothesis draws


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=6),
    name=st.sampled_from(["wider", "wide", "distill", "standard", "vit", "none"]),
    seed=st.integers(0, 2**16),
)
@example(sizes=[1, 3], name="wider", seed=0)  # a batched matmul rounded these apart
def test_one_resampling_of_all_parts_is_each_part_resampled_alone(sizes, name, seed) -> None:
    from atlas.optvis.transforms import preset

    transform = preset(name, 32)
    images = [torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed + n)) for n in sizes]
    together = transform.parts(images, [torch.Generator().manual_seed(seed + i) for i in range(len(sizes))])
    alone = [transform(batch, torch.Generator().manual_seed(seed + i)) for i, batch in enumerate(images)]
    assert torch.equal(together, torch.cat(alone))
