"""Do the quality flags separate good pictures from adversarial ones? The figures behind THRESHOLDS.

Runs two jobs on the same channels of a pretrained model and the same dataset, then reads every
channel's quality record as the site does (`atlas.site.layer_quality.layer_records`):

- good: the default recipe (decorrelated Fourier images, the `wider` transforms);
- adversarial: planted pictures that reach their activation through exact pixels (pixel
  parameterization, no decorrelation, no transforms, more steps).

It prints, per job, each measure's quartiles and the share of channels each flag and any flag
catches at the current thresholds, then the share flagged for a sweep of the two trust
thresholds (`robust_relative`, `natural_path`). The targets: at most 20% of good channels
flagged, at least 90% of adversarial ones.

    python scripts/calibrate_flags.py --out /tmp/calibrate [--channels 8] [--steps 128]
"""

from __future__ import annotations

import argparse
import statistics
import textwrap
from pathlib import Path

from atlas.plan.spec import load_spec
from atlas.quality.thresholds import THRESHOLDS, flags
from atlas.run.job import run_job
from atlas.site.layer_quality import layer_records
from atlas.store.store import open_store

MEASURES = ("relative_activation", "robust_relative", "natural_path", "robust_activation", "high_frequency")
RECIPES = {
    "good": 'param = "fourier"\ndecorrelate = true\ntransforms = "wider"',
    "adversarial": 'param = "pixel"\ndecorrelate = false\ntransforms = "none"\nlr_schedule = "constant"\n'
    "coarse_fraction = 0.0",
}


def write_spec(folder: Path, name: str, args: argparse.Namespace) -> Path:
    layers = "\n".join(
        f'[[layers]]\nname = "{layer}"\nchannels = "0:{args.channels}"\n' for layer in args.layers.split(",")
    )
    steps = args.steps if name == "good" else args.steps * 2
    text = f"""
[job]
name = "{name}"
out = "{folder / name}"
[model]
name = "{args.model}"
{layers}
[render]
steps = {steps}
size = {args.size}
objectives = ["channel"]
channels_per_unit = {args.channels}
{RECIPES[name]}
[examples]
source = "{args.source}"
k = 6
[interactions]
random_directions = 0
"""
    path = folder / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def records_of(out: Path) -> list[dict]:
    store = open_store(out)
    return [record for layer in store.layers("render") for record in layer_records(store, layer).values()]


def quartiles(values: list[float]) -> str:
    if len(values) < 2:
        return " ".join(f"{v:.3g}" for v in values) or "-"
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.3g} / {q2:.3g} / {q3:.3g}"


def share(records: list[dict], caught: object) -> str:
    hits = sum(bool(caught(record)) for record in records)
    return f"{hits}/{len(records)} ({100 * hits / max(len(records), 1):.0f}%)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder for the two jobs")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--layers", default="_blocks.5,_blocks.9")
    parser.add_argument("--channels", type=int, default=8, help="channels per layer")
    parser.add_argument("--steps", type=int, default=128, help="good recipe; adversarial gets twice as many")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--source", default="demo")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    records = {}
    for name in RECIPES:
        run_job(load_spec(write_spec(args.out, name, args)), build=False)
        records[name] = records_of(args.out / name)
    print(f"{args.model} {args.layers} x {args.channels} channels, {args.size} px, {args.steps} steps (good)")
    print("measure quartiles (25% / median / 75%):")
    for measure in MEASURES:
        cells = [quartiles([r[measure] for r in records[name] if measure in r]) for name in RECIPES]
        print(
            f"  {measure:20s} "
            + "   ".join(f"{name}: {cell}" for name, cell in zip(RECIPES, cells, strict=True))
        )
    print("flagged at the current thresholds:")
    for measure, (direction, limit) in THRESHOLDS.items():
        cells = [share(records[name], lambda r, m=measure: m in flags(r)) for name in RECIPES]
        print(
            f"  {measure:20s} {direction} {limit:<5g} "
            + "   ".join(f"{n}: {c}" for n, c in zip(RECIPES, cells, strict=True))
        )
    cells = [share(records[name], flags) for name in RECIPES]
    print(
        "  any flag                   " + "   ".join(f"{n}: {c}" for n, c in zip(RECIPES, cells, strict=True))
    )
    print("sweep (share flagged by that measure alone):")
    for measure in ("robust_relative", "natural_path"):
        for limit in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            cells = [
                share(records[name], lambda r, m=measure, x=limit: r.get(m, 1e9) < x) for name in RECIPES
            ]
            print(
                f"  {measure:20s} < {limit:<4g} "
                + "   ".join(f"{n}: {c}" for n, c in zip(RECIPES, cells, strict=True))
            )


if __name__ == "__main__":
    main()
