"""torch.compile on the render step: seconds per step eager and compiled, in one run, interleaved.

    OMP_NUM_THREADS=2 python scripts/bench_compile.py                       # tiny-cnn conv2
    python scripts/bench_compile.py --model efficientnet-lite0 --layer _blocks.8 --steps 4

Both candidates render the same channels with the same settings from one loaded model; the
compiled one runs the model's module through `torch.compile` (what an opt-in setting would do).
Compilation (the first call) is timed apart; the figure is the median over rounds of wall and CPU
seconds per step, and the largest activation difference says whether the pictures stay the same.
Frames Dynamo could not compile run eager: the truncated forward stops by raising from a hook
(`LoadedModel.activations`), which Dynamo cannot trace, so the model's forward is one of them.
CUDA graphs (`mode="reduce-overhead"`) need a GPU: run this there with `--mode reduce-overhead`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import interleaved, machine  # noqa: E402

from atlas.models import load_model, pick_device  # noqa: E402
from atlas.optvis import render_channels  # noqa: E402
from atlas.spec import RenderSpec  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-cnn")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--layer", default="conv2")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    eager = load_model(args.model, weights=args.weights, device=device)
    compiled = copy.copy(eager)
    compiled.module = torch.compile(eager.module, mode=args.mode)
    settings = RenderSpec(steps=args.steps, size=args.size, batch=args.channels, objectives=("channel",))
    channels = tuple(range(args.channels))

    def run(model):
        return lambda: render_channels(model, args.layer, channels, settings)

    start = time.perf_counter()
    first = run(compiled)()
    compile_s = time.perf_counter() - start
    reference = run(eager)()
    gap = max(
        abs(a.activation - b.activation) / max(abs(b.activation), 1e-6)
        for a, b in zip(first, reference, strict=True)
    )
    timings = interleaved({"eager": run(eager), "compiled": run(compiled)}, args.repeats, device)
    counters = torch._dynamo.utils.counters
    frames = f"{counters['frames']['ok']} of {counters['frames']['total']} frames compiled"
    fallbacks = sum(counters["unimplemented"].values()) + sum(counters["graph_break"].values())
    print(machine(device))
    print(
        f"{args.model} {args.layer}: {args.channels} channels x {args.size} px, {args.steps} steps, "
        f"mode {args.mode}; first compiled call {compile_s:.1f} s ({frames}, {fallbacks} fell back to eager); "
        f"activations differ by at most {gap:.2%}"
    )
    figures = {"compile_s": compile_s, "activation_gap": gap, "fallbacks": fallbacks}
    for clock in ("wall", "cpu"):
        medians = timings.medians(clock)
        plain, fast = medians["eager"] / args.steps, medians["compiled"] / args.steps
        figures[clock] = plain / fast
        print(f"{clock}: {plain * 1000:.1f} ms/step eager, {fast * 1000:.1f} compiled: x{plain / fast:.2f}")
    return figures


if __name__ == "__main__":
    main()
