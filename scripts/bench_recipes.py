"""Recipe study: which render recipe gives pictures that hold up under the held-out check set?

A recipe is the job's render settings (`atlas.plan.spec.RenderSpec`) with some ingredients switched
on, written as ``+``-joined names (``default`` is none; see ``INGREDIENTS``), e.g.
``wide+cosine+multires``. Every image is rendered by the atlas's own recipe code
(`atlas.optvis.recipes.render_objective`), so what is measured here is what a job renders.
For each recipe and step count, on EfficientNet-Lite0 (or any registered model):

- class images: the logit of each of ``--classes`` classes (spread evenly over the model's
  outputs), one per batch element; reported is the share that is top-1 as rendered and after a
  plain resize to ``--resize`` px;
- channel images: ``--channels`` channels of ``--layer``, the channel objective; reported are
  the median share of the activation kept under the check set (atlas.quality.CHECK_SET), the
  worst check's median, the median high-frequency share, and the median activation relative
  to the best of the demo photos (mean activations at the render size, as in bench_quality.py).

Targets (issue 18): top-1 after resize >= 90%, kept >= 0.80, HF <= 0.20, relative >= 1.

    OMP_NUM_THREADS=2 PYTHONPATH=. python scripts/bench_recipes.py --recipes default,wide \\
        --steps 128,256 --photos 64
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from bench_quality import dataset_reference

from atlas.models import LOGITS, LoadedModel, load_model
from atlas.optvis import objectives as obj
from atlas.optvis.recipes import render_objective
from atlas.plan.spec import RenderSpec
from atlas.quality import check_activations, high_frequency_share

# ingredient -> the render settings it sets (on top of the defaults, in the order written)
INGREDIENTS: dict[str, dict[str, object]] = {
    "standard": {"transforms": "standard"},
    "wide": {"transforms": "wide"},  # random scale 0.6-1.4
    "wider": {"transforms": "wider"},  # scale 0.55-1.6, rotate +-20, jitter 32+16
    "constant": {"lr_schedule": "constant"},
    "cosine": {"lr_schedule": "warmup-cosine"},
    "multires": {"coarse_fraction": 0.5},  # half the steps at 1/4 then 1/2 resolution
    "multires25": {"coarse_fraction": 0.25},
    "multires75": {"coarse_fraction": 0.75},
    "blur": {"blur_weight": 0.02},
    "decay1.5": {"decay_power": 1.5},
    "lr0.1": {"lr": 0.1},
    "lr0.03": {"lr": 0.03},
}


def recipe_settings(recipe: str, steps: int, size: int) -> RenderSpec:
    """The defaults with the recipe's ingredients applied; ``default`` applies none."""
    settings = replace(RenderSpec(), steps=steps, size=size)
    for ingredient in recipe.split("+"):
        if ingredient != "default":
            settings = replace(settings, **INGREDIENTS[ingredient])
    return settings


def _logits(labels: list[int]) -> obj.Objective:
    """One logit per batch element: element i maximizes class ``labels[i]``."""
    wanted = torch.tensor(labels)

    def score(state: obj.StepState) -> torch.Tensor:
        logits = state.activations[LOGITS]
        return logits[torch.arange(len(wanted)), wanted.to(logits.device)]

    return obj.Objective(score, "class logits", frozenset([LOGITS]))


def _images(model: LoadedModel, objective: obj.Objective, settings: RenderSpec, batch: int) -> torch.Tensor:
    result = render_objective(model, objective, settings, batch, settings.seed, [])
    return (result.images.clamp(0, 1) * 255).round() / 255  # as stored (8-bit PNG)


@torch.no_grad()
def class_top1(model: LoadedModel, images: torch.Tensor, labels: list[int], size: int) -> tuple[float, float]:
    """Share of images whose class is top-1 as rendered, and after a plain resize to ``size`` px."""
    target = torch.tensor(labels)
    rendered = model.activations(images, [LOGITS])[LOGITS].argmax(dim=1).cpu()
    resized = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    after = model.activations(resized, [LOGITS])[LOGITS].argmax(dim=1).cpu()
    return float((rendered == target).float().mean()), float((after == target).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--layer", default="_blocks.9")
    parser.add_argument("--recipes", default="default,wide", help="comma-separated; ingredients joined by +")
    parser.add_argument("--steps", default="256", help="comma-separated step counts")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--resize", type=int, default=224, help="the held-out resize of the class images")
    parser.add_argument("--photos", type=int, default=None, help="demo photos for the reference (all)")
    args = parser.parse_args()
    model = load_model(args.model, None, "default", device=torch.device("cpu"))
    with torch.no_grad():
        count = model.activations(torch.full((1, 3, args.size, args.size), 0.5), [LOGITS])[LOGITS].shape[1]
    labels = [round(i * count / args.classes) for i in range(args.classes)]
    channels = list(range(args.channels))
    best = torch.tensor(
        dataset_reference(model, args.layer, channels, args.size, args.photos)["best_mean_activation"]
    )
    print(
        f"{args.model}, {args.size} px; {len(labels)} classes; {args.layer} channels 0-{args.channels - 1}\n"
    )
    header = (
        f"| recipe | steps | class top-1 as rendered | top-1 after resize {args.resize} | kept under check set "
        "(worst check) | HF share | activation / best photo | seconds |"
    )
    print(header + "\n" + "|" + " --- |" * (header.count(" | ") + 1), flush=True)
    per_check: dict[str, dict[str, float]] = {}
    for name in args.recipes.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            settings = recipe_settings(name, steps, args.size)
            start = time.perf_counter()
            class_images = _images(model, _logits(labels), settings, len(labels))
            as_rendered, after_resize = class_top1(model, class_images, labels, args.resize)
            channel_objective = obj.channel(args.layer, channels, batch=channels)
            channel_images = _images(model, channel_objective, settings, len(channels))
            checked = check_activations(model, channel_images, channel_objective)
            per_check[f"{name} | {steps}"] = {
                check: float(ratio.nanmedian()) for check, ratio in checked.ratios().items()
            }
            with torch.no_grad():
                means = model.activations(channel_images, [args.layer])[args.layer].mean(dim=(2, 3))
            relative = means[torch.arange(len(channels)), channels] / best
            hf = high_frequency_share(channel_images)
            print(
                f"| {name} | {steps} | {as_rendered:.0%} | {after_resize:.0%} | "
                f"{checked.robust().nanmedian():.2f} ({checked.worst().nanmedian():.2f}) | "
                f"{hf.median():.3f} | {relative.median():.2f} | {time.perf_counter() - start:.0f} |",
                flush=True,
            )
    checks = list(next(iter(per_check.values())))
    print("\nchannel images, median share kept per check:\n")
    print("| recipe | steps | " + " | ".join(checks) + " |\n|" + " --- |" * (len(checks) + 2))
    for name, kept in per_check.items():
        print(f"| {name} | " + " | ".join(f"{kept[c]:.2f}" for c in checks) + " |")


if __name__ == "__main__":
    main()
