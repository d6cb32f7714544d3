"""Vision transformers: which rendering works, what a render step costs, what a worker holds.

- study: on the tiny ViT that tests/test_planted_detectors.py trains (a checkerboard detector;
  no pretrained ViT weights can be had here), each parameterization with each transform preset
  renders the four units that best separate planted from clean images; the score is the unit's
  mean activation on the final image over the highest any dataset image reaches (median over
  units and seeds). Confirm on a pretrained ViT before trusting it at scale.
- overhead: seconds per render step vs a bare truncated forward + backward on torchvision's
  vit_b_16 (random weights: speed does not depend on them), and the process's peak RSS after
  loading it and rendering (what one worker holds).

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/bench_vit.py [--only study,overhead] [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_common import peak_rss_mib, spread
from bench_render import RenderCase, overhead

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_planted_detectors import CASES, Setting, _images, _train  # noqa: E402

from atlas.models import load_model  # noqa: E402
from atlas.optvis.recipes import render_channels  # noqa: E402

PARAMS = ("fourier", "pixel", "maco")
TRANSFORMS = ("none", "vit", "standard")
LAYER = CASES["vit"].layer


def study(steps: int, seeds: int) -> list[dict]:
    """Relative activation per (param, transforms) on the tiny planted-pattern ViT."""
    model = _train(CASES["vit"].build(), seed=1)
    generator = torch.Generator().manual_seed(99)
    with torch.no_grad():
        clean = model.activations(_images(64, False, generator), [LAYER])[LAYER]
        planted = model.activations(_images(64, True, generator), [LAYER])[LAYER]
    gap = planted.amax(dim=(2, 3)).min(dim=0).values - clean.amax(dim=(2, 3)).max(dim=0).values
    units = gap.argsort(descending=True)[:4].tolist()
    best = torch.cat([clean, planted]).mean(dim=(2, 3)).amax(dim=0)  # per unit, over dataset images
    rows = []
    for param in PARAMS:
        for transforms in TRANSFORMS:
            scores, started = [], time.perf_counter()
            for seed in range(seeds):
                settings = Setting(param=param, transforms=transforms, steps=steps, batch=4, seed=seed)
                for row in render_channels(model, LAYER, units, settings):
                    scores.append(row.activation / float(best[row.channel]))
            rows.append(
                {
                    "param": param,
                    "transforms": transforms,
                    "relative": statistics.median(scores),
                    "worst": min(scores),
                    "seconds": time.perf_counter() - started,
                }
            )
            print(
                f"  | {param} | {transforms} | {rows[-1]['relative']:.2f} | {rows[-1]['worst']:.2f} |",
                flush=True,
            )
    return rows


def vit_overhead(steps: int, repeats: int, batch: int) -> dict:
    model = load_model("torchvision:vit_b_16", weights="none")
    layer = "encoder.layers.encoder_layer_5.mlp.1"
    case = RenderCase(layer, tuple(range(batch)), size=model.input_size, steps=steps)
    result = overhead(model, case, repeats)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="study,overhead")
    parser.add_argument("--steps", type=int, default=64, help="render steps of the study")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--overhead-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    sections = args.only.split(",")
    if "study" in sections:
        print(f"study: tiny planted-pattern ViT, {LAYER}, {args.steps} steps, {args.seeds} seeds, 4 units")
        print("  | parameterization | transforms | activation / best dataset image (median) | worst |")
        print("  | --- | --- | --- | --- |")
        study(args.steps, args.seeds)
    if "overhead" in sections:
        result = vit_overhead(args.overhead_steps, args.repeats, args.batch)
        print(
            f"overhead: vit_b_16 {result['layer']}, batch {result['batch']}, {result['size']} px "
            f"(transforms give {result['model_input_size']} px, resampled to 224), {result['steps']} steps"
        )
        for name, seconds in result["seconds_per_step"].items():
            print(
                f"  {name:22s} {seconds:7.3f} s/step   (whole runs: wall {spread(result['seconds'][name])})"
            )
        print(
            f"  render / bare: x{result['ratio']:.3f} wall, x{result['cpu_ratio']:.3f} CPU (whole call); "
            f"x{result['ratio_steps_only']:.3f} wall without the final no-grad forward"
        )
        print(f"  peak RSS of this process (one worker's model + render): {result['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
