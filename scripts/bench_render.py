"""Render speed: the atlas renderer against torch-lucent, and against the model's own cost.

Two figures, each measured with interleaved repetitions (see bench_common):
- throughput: channel visualizations per minute, ours (``render_channels``) vs lucent
  (``render_vis``) on the same model, layer, image size, steps, batch and transforms;
- overhead: the renderer's seconds per optimization step vs a bare forward + backward of the
  truncated model on a batch of the same shape (the physical limit of any renderer that uses
  this forward pass).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from bench_common import interleaved
from bench_lucent import install_shim, lucent_renderer

from atlas.models import LOGITS, LoadedModel
from atlas.optvis import make_param, render, render_channels
from atlas.optvis import objectives as obj
from atlas.optvis.transforms import preset
from atlas.plan.spec import RenderSpec


@dataclass(frozen=True)
class RenderCase:
    """What both renderers are asked to do."""

    layer: str
    channels: tuple[int, ...]
    size: int
    steps: int
    transforms: str = "standard"


def model_input_size(size: int, transforms: str) -> int:
    """Side of the images the model sees after the transforms (standard: 128 px -> 140 px)."""
    probe = torch.zeros(1, 3, size, size)
    return int(preset(transforms, size)(probe, torch.Generator().manual_seed(0)).shape[-1])


def ours_renderer(model: LoadedModel, case: RenderCase) -> Callable[[], object]:
    """One ``render_channels`` call: every channel in one batch, the channel objective only."""
    settings = RenderSpec(
        steps=case.steps,
        size=case.size,
        batch=len(case.channels),
        objectives=("channel",),
        transforms=case.transforms,
    )
    return lambda: render_channels(model, case.layer, case.channels, settings)


LUCENT_DEFAULT = "lucent, its default 224 px input"
LUCENT_PLAIN = "lucent, model in the default memory layout"


def throughput(
    model: LoadedModel,
    case: RenderCase,
    repeats: int,
    single_channels: int = 0,
    lucent_default: bool = False,
) -> dict[str, object]:
    """Channels per minute for ours and lucent, interleaved; lucent sees the same input size.

    ``single_channels > 0`` also times lucent one channel per call (batch 1), the way its
    README renders, on that many channels. ``lucent_default`` also times lucent as it runs out
    of the box: it upsamples images smaller than 224 px to 224 before the model.
    """
    install_shim(model.device)
    input_size = model_input_size(case.size, case.transforms)
    candidates = {
        "ours": ours_renderer(model, case),
        "lucent": lucent_renderer(model.module, case.layer, case.channels, case.size, case.steps, input_size),
    }
    # What a lucent user passes: the model in PyTorch's default memory layout (the atlas loads
    # models channels_last; the "lucent" row above shares that module, so it gains from it too).
    plain = copy.deepcopy(model.module).to(memory_format=torch.contiguous_format)
    candidates[LUCENT_PLAIN] = lucent_renderer(
        plain, case.layer, case.channels, case.size, case.steps, input_size
    )
    counts = {"ours": len(case.channels), "lucent": len(case.channels), LUCENT_PLAIN: len(case.channels)}
    if single_channels:
        singles = [
            lucent_renderer(model.module, case.layer, [c], case.size, case.steps, input_size)
            for c in case.channels[:single_channels]
        ]
        candidates["lucent, batch 1"] = lambda: [run() for run in singles]
        counts["lucent, batch 1"] = len(singles)
    if lucent_default:
        candidates[LUCENT_DEFAULT] = lucent_renderer(
            model.module, case.layer, case.channels, case.size, case.steps, None
        )
        counts[LUCENT_DEFAULT] = len(case.channels)
    timings = interleaved(candidates, repeats, model.device)
    per_minute = {
        clock: {name: 60 * counts[name] / seconds for name, seconds in timings.medians(clock).items()}
        for clock in ("wall", "cpu")
    }
    return {
        "layer": case.layer,
        "channels": list(case.channels),
        "size": case.size,
        "model_input_size": input_size,
        "steps": case.steps,
        "transforms": case.transforms,
        "repeats": repeats,
        "seconds": timings.wall,
        "cpu_seconds": timings.cpu,
        "channels_per_minute": per_minute["wall"],
        "channels_per_cpu_minute": per_minute["cpu"],
        "speedup_vs_lucent": per_minute["wall"]["ours"] / per_minute["wall"]["lucent"],
        "cpu_speedup_vs_lucent": per_minute["cpu"]["ours"] / per_minute["cpu"]["lucent"],
        "speedup_vs_lucent_plain_model": per_minute["wall"]["ours"] / per_minute["wall"][LUCENT_PLAIN],
        "cpu_speedup_vs_lucent_plain_model": per_minute["cpu"]["ours"] / per_minute["cpu"][LUCENT_PLAIN],
    }


def _channel_loss(activations: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(len(channels), device=activations.device)
    return -activations[rows, channels].mean(dim=(1, 2)).sum()


WHOLE_MODEL = "bare, whole model"
CHANNELS_LAST = "bare, channels_last"


def overhead(model: LoadedModel, case: RenderCase, repeats: int, limits: bool = False) -> dict[str, object]:
    """Seconds per step: ``render`` vs truncated forward + backward on the same batch shape.

    A ``render`` call also pays one no-grad forward of the final images (to report their
    activations); with few steps that weighs on the per-step figure, so it is timed on its own
    too and ``ratio_steps_only`` leaves it out. ``ratio`` is the whole call, as a unit pays it.
    ``limits`` also times the bare step through the whole model (what lucent runs: the gain of
    truncation) and with the weights and images in channels_last memory order.
    """
    batch = len(case.channels)
    input_size = model_input_size(case.size, case.transforms)
    channels = torch.tensor(case.channels, device=model.device)
    objective = obj.channel(case.layer, list(case.channels), batch=list(range(batch)))

    def ours() -> None:
        param = make_param("fourier", batch, case.size, decorrelate=True)
        render(model, objective, param, steps=case.steps, transforms=case.transforms)

    def bare_step(loaded: LoadedModel, layer: str, memory_format: torch.memory_format) -> Callable[[], None]:
        def run() -> None:
            images = torch.rand(batch, 3, input_size, input_size, device=model.device)
            images = images.contiguous(memory_format=memory_format).requires_grad_(True)
            for _ in range(case.steps):
                images.grad = None
                activations = loaded.activations(images, [layer])[layer]
                if activations.ndim == 2:  # logits
                    activations = activations[:, :, None, None]
                _channel_loss(activations, channels).backward()

        return run

    bare = bare_step(model, case.layer, torch.contiguous_format)

    @torch.no_grad()
    def final_forward() -> None:
        model.activations(torch.rand(batch, 3, case.size, case.size, device=model.device), [case.layer])

    candidates = {"render": ours, "bare forward+backward": bare, "final forward": final_forward}
    if limits:
        candidates[WHOLE_MODEL] = bare_step(model, LOGITS, torch.contiguous_format)
        reordered = replace(model, module=copy.deepcopy(model.module).to(memory_format=torch.channels_last))
        candidates[CHANNELS_LAST] = bare_step(reordered, case.layer, torch.channels_last)
    timings = interleaved(candidates, repeats, model.device)
    ratios = {}
    for clock in ("wall", "cpu"):
        seconds = timings.medians(clock)
        bare_step = seconds["bare forward+backward"] / case.steps
        ratios[clock] = seconds["render"] / case.steps / bare_step
        ratios[f"{clock}_steps_only"] = (
            (seconds["render"] - seconds["final forward"]) / case.steps / bare_step
        )
    wall = timings.medians("wall")
    return {
        "layer": case.layer,
        "batch": batch,
        "size": case.size,
        "model_input_size": input_size,
        "steps": case.steps,
        "repeats": repeats,
        "seconds": timings.wall,
        "cpu_seconds": timings.cpu,
        "seconds_per_step": {name: wall[name] / case.steps for name in candidates if name != "final forward"},
        "ratio": ratios["wall"],
        "ratio_steps_only": ratios["wall_steps_only"],
        "cpu_ratio": ratios["cpu"],
        "cpu_ratio_steps_only": ratios["cpu_steps_only"],
    }


def batch_scaling(
    model: LoadedModel, layer: str, size: int, steps: int, batches: Sequence[int], repeats: int
) -> dict[str, object]:
    """Channels per minute of ``render_channels`` for several batch sizes (one call each)."""
    candidates = {
        f"batch {batch}": ours_renderer(model, RenderCase(layer, tuple(range(batch)), size, steps))
        for batch in batches
    }
    timings = interleaved(candidates, repeats, model.device)
    wall = timings.medians("wall")
    return {
        "layer": layer,
        "size": size,
        "steps": steps,
        "channels_per_minute": {
            name: 60 * batch / wall[name] for name, batch in zip(candidates, batches, strict=True)
        },
        "seconds": timings.wall,
    }
