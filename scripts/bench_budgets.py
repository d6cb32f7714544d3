"""Render recipes at every budget: does the default optimize as well as the simpler recipes?

For each model, render size and step count, a few channels of one layer are rendered with each
recipe by the atlas's own code (`atlas.optvis.recipes.render_channels`, the channel objective,
every channel one element of one batch, seed 0) and the channel's mean activation on the final
image is compared. Recipes (the other render settings are the defaults: decorrelated Fourier, Adam
lr 0.05, `wider` transforms; token layers use their own defaults, `atlas.plan.units.TOKEN_RENDER`):

- ``old``: constant lr, no coarse phase (the recipe before issue 18);
- ``current``: warm-up over 10% then a cosine to 0.05 of lr, half the steps coarse, with the
  stages of that time (1/4 and 1/2 of the size whatever the size: a 64 px render started at 16 px);
- ``new``: the defaults of `atlas.plan.spec.RenderSpec` (``warmup-hold-cosine``, 20% coarse,
  stages of at least 32 px).

Printed per cell: each recipe's mean activation over the channels, the ratio of the new
recipe's mean to the larger of the other two (the issue's bar: >= 0.95 in every cell) and, in
brackets, the smallest of the same ratio taken channel by channel (one channel's figure moves by
about 0.1 between recipes that differ in nothing that matters, so it is a spread, not the bar).

Models: ``efficientnet-lite0`` (ImageNet weights), ``torchvision:resnet18`` (random weights,
seeded) and ``planted-vit``, the one-block ViT that tests/test_planted_detectors.py trains to
detect a checkerboard (32 px only: its input size is fixed, so it gets one size column).

    OMP_NUM_THREADS=2 PYTHONPATH=.:scripts python scripts/bench_budgets.py            # full grid
    OMP_NUM_THREADS=2 PYTHONPATH=.:scripts python scripts/bench_budgets.py --quick    # 64/128 px, 64/128 steps
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from atlas.models import LoadedModel, load_model
from atlas.optvis import schedules
from atlas.optvis.recipes import render_channels
from atlas.plan.spec import RenderSpec
from atlas.plan.units import TOKEN_RENDER

# recipe -> (lr_schedule, coarse_fraction, smallest coarse stage in px); None: the spec defaults
RECIPES: dict[str, tuple[str, float, int] | None] = {
    "old": ("constant", 0.0, schedules.MIN_COARSE_SIZE),
    "current": ("warmup-cosine", 0.5, 0),  # 0: the stages before issue 25 (no smallest size)
    "new": None,
}
# model -> (layer, channels); the layer is a mid layer with structured channels
LAYERS = {
    "efficientnet-lite0": "_blocks.8",
    "torchvision:resnet18": "layer3",
    "planted-vit": "encoder.layers.encoder_layer_0.mlp.1",
    "tiny-cnn": "conv2",  # the smoke test's
}


def load(name: str) -> tuple[LoadedModel, bool]:
    """The model and whether its layer is a token layer (ViT: TOKEN_RENDER, fixed size)."""
    if name == "planted-vit":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_planted_detectors import CASES, _train  # the test's own model and training

        return _train(CASES["vit"].build(), seed=1), True
    weights = "none" if name.startswith("torchvision:") else "default"
    torch.manual_seed(0)  # random weights are seeded
    return load_model(name, None, weights, device=torch.device("cpu")), False


def settings_of(recipe: str, steps: int, size: int, count: int, tokens: bool) -> tuple[RenderSpec, int]:
    """The recipe's render settings and its smallest coarse stage."""
    settings = replace(RenderSpec(), steps=steps, size=size, batch=count, objectives=("channel",))
    if tokens:
        settings = replace(settings, **TOKEN_RENDER)
    chosen = RECIPES[recipe]
    if chosen is None:
        return settings, schedules.MIN_COARSE_SIZE
    schedule, coarse, smallest = chosen
    return replace(settings, lr_schedule=schedule, coarse_fraction=coarse), smallest


def activations(
    model: LoadedModel, layer: str, channels: list[int], settings: RenderSpec, smallest: int
) -> list[float]:
    default = schedules.MIN_COARSE_SIZE
    schedules.MIN_COARSE_SIZE = smallest
    try:
        rows = render_channels(model, layer, channels, settings)
    finally:
        schedules.MIN_COARSE_SIZE = default
    return [row.activation for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="efficientnet-lite0,torchvision:resnet18,planted-vit")
    parser.add_argument("--steps", default="64,128,256", help="comma-separated step counts")
    parser.add_argument("--sizes", default="64,128,224", help="comma-separated render sizes")
    parser.add_argument("--channels-64", type=int, default=4, help="channels 0..N-1 at 64 px or less")
    parser.add_argument("--channels", type=int, default=2, help="channels 0..N-1 at 65 to 128 px")
    parser.add_argument("--channels-224", type=int, default=1, help="channels at sizes above 128 px")
    parser.add_argument("--quick", action="store_true", help="64 and 128 steps at 64 and 128 px only")
    args = parser.parse_args()
    steps_grid = [64, 128] if args.quick else [int(s) for s in args.steps.split(",")]
    sizes = [64, 128] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(
        "| model | layer | size | steps | channels | old | current | new | new / max(old, current) "
        "(smallest per channel) | seconds |\n" + "|" + " --- |" * 10,
        flush=True,
    )
    for name in args.models.split(","):
        model, tokens = load(name)
        layer = LAYERS[name]
        for size in [model.preprocessing.input_size] if tokens else sizes:
            count = args.channels_64 if size <= 64 else args.channels if size <= 128 else args.channels_224
            channels = list(range(count))
            for steps in steps_grid:
                start = time.perf_counter()
                reached = {}
                for recipe in RECIPES:
                    settings, smallest = settings_of(recipe, steps, size, count, tokens)
                    reached[recipe] = activations(model, layer, channels, settings, smallest)
                ratios = [
                    new / best if (best := max(old, cur)) > 0 else math.nan
                    for new, old, cur in zip(reached["new"], reached["old"], reached["current"], strict=True)
                ]
                mean = {recipe: statistics.fmean(values) for recipe, values in reached.items()}
                best = max(mean["old"], mean["current"])
                ratio = mean["new"] / best if best > 0 else math.nan
                print(
                    f"| {name} | {layer} | {size} | {steps} | {count} | {mean['old']:.3f} | "
                    f"{mean['current']:.3f} | {mean['new']:.3f} | {ratio:.2f} "
                    f"({min(ratios):.2f}) | {time.perf_counter() - start:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
