"""The quality record: each measure against a case whose answer is known."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store

from atlas.core.schema import QUALITY_SCHEMA
from atlas.kinds.render import RenderWork
from atlas.models import load_model
from atlas.optvis import make_param, render
from atlas.optvis import objectives as obj
from atlas.plan.spec import ExamplesSpec, RenderSpec
from atlas.plan.units import Unit
from atlas.quality import CHECK_SET, check_activations, diversity_similarity, flags, high_frequency_share
from atlas.quality.thresholds import THRESHOLDS
from atlas.run.worker import WorkerContext, run_unit
from atlas.site.layer_quality import layer_records
from atlas.store.store import Store

CHANNELS = [0, 3, 5, 7]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-cnn", None, "none", device=torch.device("cpu"))


def test_high_frequency_share_tells_smooth_images_from_pixel_noise() -> None:
    ramp = torch.linspace(0, 1, 32)
    smooth = (ramp[None, :] * ramp[:, None]).expand(1, 3, 32, 32)
    checkerboard = ((torch.arange(32)[None, :] + torch.arange(32)[:, None]) % 2).float().expand(1, 3, 32, 32)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert high_frequency_share(smooth).item() < 0.02
    assert high_frequency_share(checkerboard).item() > 0.99
    # White noise spreads its power evenly: the share is the area beyond the cutoff radius.
    expected = 1 - math.pi * 0.25**2
    assert abs(high_frequency_share(noise).item() - expected) < 0.05


def test_added_high_frequency_noise_raises_the_share_past_the_threshold() -> None:
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    picture = torch.stack([torch.sin(6 * x), torch.cos(5 * y), x * y]).unsqueeze(0) * 0.4 + 0.5
    noise = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 0.4
    clean, noisy = high_frequency_share(torch.cat([picture, (picture + noise).clamp(0, 1)])).tolist()
    assert clean < 0.05 < THRESHOLDS["high_frequency"][1] < noisy
    assert flags({"high_frequency": clean}) == [] and flags({"high_frequency": noisy}) == ["high_frequency"]


def test_adversarial_pixels_fail_the_check_set_where_a_robust_render_holds(tiny) -> None:
    """Sign-gradient steps on raw pixels without transforms find a pattern of exact pixels; the
    decorrelated Fourier render with transforms finds one that survives resizing and rotation."""
    objective = obj.channel("conv3", CHANNELS, batch=list(range(len(CHANNELS))))
    adversarial = render(
        tiny,
        objective,
        make_param("pixel", len(CHANNELS), 64, decorrelate=False),
        steps=10,
        lr=0.01,
        transforms="none",
        optimizer="linf",
    )
    robust = render(
        tiny, objective, make_param("fourier", len(CHANNELS), 64), steps=48, transforms="standard"
    )
    weak = check_activations(tiny, adversarial.images, objective)
    strong = check_activations(tiny, robust.images, objective)
    assert set(weak.under) == {check.name for check in CHECK_SET}
    assert (weak.rendered > 0).all() and (strong.rendered > 0).all()
    # Margins from measured spreads (seeds 0-3 x 1 and 2 threads, AMD EPYC; Intel Xeon for seed 0):
    # adversarial keeps 0.11-0.57, robust 0.69-1.05 (one channel's 0.69-0.82 moves with the CPU's
    # float kernels), robust minus adversarial per channel at least 0.38. The property is the gap,
    # per channel, not where a robust render sits against a fixed bar.
    assert (weak.robust() < 0.7).all()
    assert (strong.robust() - weak.robust() > 0.2).all()
    assert (strong.worst() > weak.worst()).all()
    # against photos that keep all of theirs, the adversarial picture is flagged; alone it is not
    assert flags({"robust_relative": float(weak.robust()[0]) / 1.0}) == ["robust_relative"]
    assert flags({"robust_activation": float(weak.robust()[0])}) == []


def test_a_set_of_copies_is_not_diverse_and_different_pictures_are_more_so(tiny) -> None:
    generator = torch.Generator().manual_seed(0)
    one = torch.rand(1, 3, 64, 64, generator=generator)
    copies = tiny.activations(one.expand(3, -1, -1, -1), ["conv2"])["conv2"]
    varied = tiny.activations(torch.rand(3, 3, 64, 64, generator=generator) ** 4, ["conv2"])["conv2"]
    assert diversity_similarity(copies) == pytest.approx(1.0, abs=1e-5)
    assert diversity_similarity(varied) < diversity_similarity(copies) - 1e-3
    assert math.isnan(diversity_similarity(copies[:1]))


def test_a_render_unit_writes_a_quality_row_for_every_picture(tiny) -> None:
    settings = replace(RenderSpec(), steps=4, size=32, batch=8, diversity=3)
    unit = Unit("conv2", (1, 2), "render-abc", RenderWork(settings))
    tables = run_unit(WorkerContext(tiny, ExamplesSpec()), unit)
    render_rows, quality = tables["render"], tables["quality"]
    assert quality.schema == QUALITY_SCHEMA
    assert quality.num_rows == render_rows.num_rows == 2 * (3 + 3)
    assert set(quality.column("unit_key").to_pylist()) == {"render-abc"}
    keys = ["channel", "objective", "variant"]
    assert quality.select(keys).to_pylist() == render_rows.select(keys).to_pylist()
    similarity = quality.column("diversity_similarity").to_pylist()
    for objective, value in zip(quality.column("objective").to_pylist(), similarity, strict=True):
        assert (value is None) == (objective != "diversity")
    assert all(0 < v <= 1 for v in similarity if v is not None)
    assert all(0 <= v <= 1 for v in quality.column("high_frequency").to_pylist())
    peaks = quality.column("peak_activation").to_pylist()
    means = render_rows.column("activation").to_pylist()
    for objective, peak, mean in zip(quality.column("objective").to_pylist(), peaks, means, strict=True):
        if objective in ("channel", "diversity"):
            assert peak >= mean - 1e-4  # the strongest position is at least the mean over positions


def test_layer_records_divide_the_peak_by_the_best_example_and_flag_failures(tmp_path) -> None:
    options = SyntheticOptions(image_size=16, crop_size=16, examples_k=4, diversity=2, histograms=False)
    write_synthetic_store(tmp_path, [SyntheticLayer("mixed3a", 6)], options)
    records = layer_records(Store(tmp_path), "mixed3a")
    assert sorted(records) == list(range(6))
    for channel, record in records.items():
        # synthetic: the channel picture peaks at 5.4 + 0.6 (c % 5), the best example at 6.0
        assert record["relative_activation"] == pytest.approx((5.4 + 0.6 * (channel % 5)) / 6, abs=1e-3)
        assert (
            record["proxy_examples_interval"][0]
            <= record["proxy_examples"]
            <= record["proxy_examples_interval"][1]
        )
        assert ("relative_activation" in flags(record)) == (channel % 5 == 0)
    assert records[1]["diversity_similarity"] == pytest.approx(0.5)
