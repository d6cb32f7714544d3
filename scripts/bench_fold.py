"""BatchNorm folding: seconds per render step with and without it, in one run, interleaved.

    python scripts/bench_fold.py                      # EfficientNet-Lite0 _blocks.9, 8 channels
    python scripts/bench_fold.py --model torchvision:googlenet --layer inception4e --weights none

Both models come from the same weights (the digests are printed: equal, since folding changes
no content key); each candidate renders the same channels for the same steps, and the figure is
the median over rounds of wall and CPU seconds per step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import interleaved, machine  # noqa: E402

from atlas.models import load_model, pick_device  # noqa: E402
from atlas.optvis import render_channels  # noqa: E402
from atlas.plan.spec import RenderSpec  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--layer", default="_blocks.9")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    plain = load_model(args.model, weights=args.weights, device=device, fold=False)
    torch.manual_seed(0)
    folded = load_model(args.model, weights=args.weights, device=device)
    settings = RenderSpec(steps=args.steps, batch=args.channels, objectives=("channel",))
    channels = tuple(range(args.channels))
    timings = interleaved(
        {
            "unfolded": lambda: render_channels(plain, args.layer, channels, settings),
            "folded": lambda: render_channels(folded, args.layer, channels, settings),
        },
        args.repeats,
        device,
    )
    print(machine(device))
    print(
        f"{args.model} {args.layer}: {len(folded.folded.affine)} BatchNorms folded; digests "
        f"{plain.digest} / {folded.digest}"
    )
    figures = {}
    for clock in ("wall", "cpu"):
        medians = timings.medians(clock)
        before, after = medians["unfolded"] / args.steps, medians["folded"] / args.steps
        figures[clock] = before / after
        print(
            f"{clock}: {before * 1000:.1f} ms/step unfolded, {after * 1000:.1f} folded: x{before / after:.2f}"
        )
    return figures


if __name__ == "__main__":
    main()
