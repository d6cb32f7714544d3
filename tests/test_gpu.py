"""CUDA checks, run by scripts/gpu_check.sh on a GPU machine (`pytest -m gpu`); skipped without CUDA.

They need no Ray: units run in this process through `run_unit`, as a worker runs them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from atlas.core.provenance import run_differences
from atlas.data.open import open_source
from atlas.kinds.examples import scan_shard
from atlas.models import load_model
from atlas.optvis import make_param, render, render_channels
from atlas.optvis import objectives as obj
from atlas.optvis.autobatch import DEFAULT_CAP, pass_capacity
from atlas.plan.spec import RenderSpec, parse_spec
from atlas.plan.units import ModelFacts, make_plan
from atlas.run.worker import UnitFailed, make_context, run_unit
from atlas.store.store import Store

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SPEC = """
[model]
name = "{model}"
[[layers]]
name = "{layer}"
channels = "0:2"
[render]
steps = 24
size = 48
batch = 2
objectives = ["channel", "negative"]
precision = "{precision}"
[examples]
enabled = false
[execute]
compile = "{compile}"
"""


def _unit_tables(model: str, layer: str, precision: str = "fp32", compile: str = "off") -> dict:
    """One render unit through a worker's context (compile off: each context compiles anew)."""
    spec = parse_spec(SPEC.format(model=model, layer=layer, precision=precision, compile=compile))
    context = make_context(spec, "cuda")
    facts = ModelFacts(context.model.digest, {layer: context.model.channels(layer)})
    (unit,) = make_plan(spec, facts, [], []).units
    return run_unit(context, unit)


def test_model_parameters_and_results_are_on_the_gpu():
    model = load_model("tiny-cnn", device="cuda")
    assert all(p.device.type == "cuda" for p in model.module.parameters())
    assert all(a.device.type == "cuda" for a, _ in model.folded.affine.values())
    acts = model.activations(torch.rand(2, 3, 64, 64, device="cuda"), ["conv2"])
    assert acts["conv2"].device.type == "cuda"
    result = render(model, obj.channel("conv2", 1), make_param("fourier", 2, 48), steps=4)
    assert result.images.device.type == "cpu" and torch.isfinite(result.images).all()


def test_unit_records_its_gpu_provenance():
    table = _unit_tables("tiny-cnn", "conv2")["render"]
    info = json.loads(table.schema.metadata[b"atlas.core.provenance"])
    assert info["device"].startswith("cuda") and info["cuda"] and info["device_name"]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_keeps_the_activation(precision):
    model = load_model("tiny-cnn", device="cuda")
    reached = {}
    for mode in ("fp32", precision):
        result = render(
            model, obj.channel("conv3", 5), make_param("fourier", 1, 48), steps=48, precision=mode
        )
        assert torch.isfinite(result.images).all()
        reached[mode] = float(result.activations["conv3"][0, 5].mean())
    assert reached["fp32"] > 0
    assert reached[precision] >= 0.8 * reached["fp32"]


def test_nan_in_half_precision_is_a_failed_unit():
    assert _unit_tables("module:faultmodels:overflow_cnn", "conv3", "fp32")["render"].num_rows == 4
    with pytest.raises(UnitFailed, match="diverged|NaN"):
        _unit_tables("module:faultmodels:overflow_cnn", "conv3", "fp16")


def test_a_compiled_bf16_unit_counts_as_the_same_as_an_eager_one():
    """execute.compile (auto: on here) changes no content key, so its pictures must pass for the
    eager ones: inductor's kernels, held to the GPU tolerance."""
    eager = _unit_tables("tiny-cnn", "conv2", "bf16")["render"]
    compiled = _unit_tables("tiny-cnn", "conv2", "bf16", compile="auto")["render"]
    assert run_differences(eager, compiled) == []


def test_two_runs_on_the_gpu_count_as_the_same():
    first = _unit_tables("tiny-cnn", "conv2")["render"]
    second = _unit_tables("tiny-cnn", "conv2")["render"]
    assert run_differences(first, second) == []  # held to the tolerance: computed on CUDA


def test_a_resumed_store_counts_as_the_same_as_an_uninterrupted_one(tmp_path):
    """A killed driver's rerun, in one process: the pending units are computed, and each unit
    counts as the same as in a run that was never interrupted (a tolerance on a GPU)."""
    text = SPEC.format(model="tiny-cnn", layer="conv2", precision="fp32", compile="off")
    spec = parse_spec(text.replace('"0:2"', '"0:4"').replace("batch = 2", "batch = 2\nchannels_per_unit = 1"))
    context = make_context(spec, "cuda")
    facts = ModelFacts(context.model.digest, {"conv2": context.model.channels("conv2")})
    units = make_plan(spec, facts, [], []).units
    whole, resumed = Store(tmp_path / "whole"), Store(tmp_path / "resumed")

    def run(store: Store, chosen: list) -> None:
        for unit in chosen:
            store.write_unit_tables(unit.key, unit.kind, unit.layer, run_unit(context, unit), unit.channels)

    run(resumed, units[:2])  # what the killed driver committed
    for store in (whole, resumed):
        left = set(store.pending([u.key for u in units]))
        run(store, [u for u in units if u.key in left])
    assert len(units) == 4 and len(whole.entries()) == len(resumed.entries()) == 4
    for unit in units:
        pair = (whole.read_unit(unit.key, "render"), resumed.read_unit(unit.key, "render"))
        assert run_differences(*pair) == [], unit.label


def test_packed_passes_match_one_chunk_per_pass_on_the_gpu():
    model = load_model("tiny-cnn", device="cuda")
    settings = RenderSpec(steps=12, size=48, batch=4, objectives=("channel", "neuron"))
    capacity = pass_capacity(model, settings.batch, settings.size)
    assert settings.batch < capacity <= DEFAULT_CAP
    alone = render_channels(model, "conv2", range(8), settings, images_per_pass=settings.batch)
    packed = render_channels(model, "conv2", range(8), settings)
    for a, b in zip(alone, packed, strict=True):
        assert (a.channel, a.objective) == (b.channel, b.objective)
        assert abs(a.activation - b.activation) <= 0.05 * max(abs(a.activation), 1e-2)


def test_cuda_capacity_grows_with_free_memory():
    model = load_model("tiny-cnn", device="cuda")
    small = pass_capacity(model, 8, 64, free_bytes=10**8)
    large = pass_capacity(model, 8, 64, free_bytes=10**11)
    assert 8 <= small <= large <= DEFAULT_CAP


def test_scan_on_the_gpu_finds_the_same_examples_as_on_the_cpu(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
    source = open_source(tmp_path)
    (shard,) = source.shards(12)
    scans = [
        scan_shard(
            load_model("tiny-cnn", device=device),
            ["conv2"],
            source,
            shard,
            k=3,
            batch_size=5,
            precision="fp32",
        )
        for device in ("cpu", "cuda")
    ]
    cpu, gpu = (s.layers["conv2"] for s in scans)
    assert (cpu.top.ids == gpu.top.ids).mean() > 0.95
    np.testing.assert_allclose(cpu.top.values, gpu.top.values, rtol=1e-3, atol=1e-4)


def test_a_gpu_scan_with_nvjpeg_and_bf16_finds_nearly_the_same_examples_as_the_cpu(tmp_path):
    """The GPU's defaults (JPEGs decoded by nvJPEG, bf16 forward) against PIL and fp32 on the CPU:
    the same images skipped, the same examples up to near-ties, values within bf16's tolerance."""
    rng = np.random.default_rng(1)
    for index in range(20):  # smooth photos: the decoders differ most on pixel noise (see decode.py)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        size = (240 - 6 * index, 60 + 9 * index)
        Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(tmp_path / f"{index:02d}.jpg")
    (tmp_path / "bad.jpg").write_bytes((tmp_path / "00.jpg").read_bytes()[:300])
    source = open_source(tmp_path)
    (shard,) = source.shards(21)
    scans = [
        scan_shard(
            load_model("tiny-cnn", device=device), ["conv2", "conv3"], source, shard, k=3, batch_size=8
        )
        for device in ("cpu", "cuda")
    ]
    assert scans[0].stats == scans[1].stats and scans[0].skipped == scans[1].skipped
    for layer in ("conv2", "conv3"):
        cpu, gpu = (s.layers[layer] for s in scans)
        shared = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(cpu.top.ids, gpu.top.ids, strict=True)])
        assert shared > 0.8
        scale = np.abs(cpu.top.values).max()
        np.testing.assert_allclose(cpu.top.values, gpu.top.values, atol=0.05 * scale)
