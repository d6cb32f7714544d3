"""torch.compile on the render step: seconds per step with the hook-truncated forward, the traced
(returning) truncation, and the traced truncation compiled, in one run, interleaved.

    OMP_NUM_THREADS=2 python scripts/bench_compile.py                       # tiny-cnn conv2
    python scripts/bench_compile.py --model efficientnet-lite0 --layer _blocks.8 --steps 4

All candidates render the same channels with the same settings from one loaded model: "hooks"
stops the forward by raising from a hook (``LoadedModel.trace = False``, what ran before the
sub-networks were traced), "traced" runs the sub-network cut after the layer
(``LoadedModel.truncated``), "compiled" runs it through torch.compile (``LoadedModel.compile``,
what ``execute.compile`` sets). Compilation (the first compiled call) is timed apart; the figure
is the median over rounds of wall and CPU seconds per step, and the largest activation difference
says whether the pictures stay the same. CUDA graphs (``mode="reduce-overhead"``) need a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import interleaved, machine  # noqa: E402

from atlas.models import load_model, pick_device  # noqa: E402
from atlas.optvis import render_channels  # noqa: E402
from atlas.plan.spec import RenderSpec  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-cnn")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--layer", default="conv2")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    model = load_model(args.model, weights=args.weights, device=device)
    settings = RenderSpec(steps=args.steps, size=args.size, batch=args.channels, objectives=("channel",))
    channels = tuple(range(args.channels))
    candidates = {"hooks": (False, ""), "traced": (True, ""), "compiled": (True, args.backend)}

    def run(name: str):
        def go():
            model.trace, model.compile = candidates[name]
            return render_channels(model, args.layer, channels, settings)

        return go

    start = time.perf_counter()
    first = run("compiled")()
    compile_s = time.perf_counter() - start
    reference = run("hooks")()
    gap = max(
        abs(a.activation - b.activation) / max(abs(b.activation), 1e-6)
        for a, b in zip(first, reference, strict=True)
    )
    timings = interleaved({name: run(name) for name in candidates}, args.repeats, device)
    counters = torch._dynamo.utils.counters
    frames = f"{counters['frames']['ok']} of {counters['frames']['total']} frames compiled"
    fallbacks = sum(counters["unimplemented"].values()) + sum(counters["graph_break"].values())
    print(machine(device))
    print(
        f"{args.model} {args.layer}: {args.channels} channels x {args.size} px, {args.steps} steps, "
        f"backend {args.backend}; first compiled call {compile_s:.1f} s ({frames}, {fallbacks} graph "
        f"breaks or fallbacks); activations differ from the hook path's by at most {gap:.2%}"
    )
    figures = {"compile_s": compile_s, "activation_gap": gap, "fallbacks": fallbacks}
    for clock in ("wall", "cpu"):
        per_step = {name: median / args.steps for name, median in timings.medians(clock).items()}
        hooks = per_step["hooks"]
        figures[clock] = {name: hooks / value for name, value in per_step.items()}
        print(
            f"{clock}: "
            + ", ".join(
                f"{name} {value * 1000:.1f} ms/step (x{hooks / value:.2f})"
                for name, value in per_step.items()
            )
        )
    return figures


if __name__ == "__main__":
    main()
