"""The render step's cost against the number of parts (render units) packed into one batch.

For 1, 16 and 64 parts of the appendix's objectives (channel, negative, diversity), packed into
one physical batch by ``render_channel_sets``, prints the operator calls per optimization step
(torch dispatcher calls, counted with a TorchDispatchMode) and the wall milliseconds per step.
The transform draws a render makes before its step loop (host work on CPU tensors, one set per
part and step from each part's generator) are counted apart; on a version of the renderer
without them that count is 0 and the draws fall in the loop's.
Both are differences between a run of ``steps`` steps and one of 1 step, so setup, the final
forward and result splitting are not counted. A step whose cost is independent of the number
of parts keeps the operator count flat; CUDA launches one kernel per operator, so on a GPU the
count is what the per-part overhead costs.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/bench_step.py --model tiny-cnn
    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/bench_step.py --model torchvision:googlenet --layer inception4a
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import time
from collections import Counter
from collections.abc import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from atlas.models import LoadedModel, load_model
from atlas.optvis.param import PARAMS
from atlas.optvis.recipes import render_channel_sets
from atlas.plan.spec import RenderSpec

# The module, not the ``render`` function atlas.optvis exports under the same name.
render_module = importlib.import_module("atlas.optvis.render")


class OpCounter(TorchDispatchMode):
    """Counts every operator call that reaches the dispatcher (one CUDA launch or more each)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def settings(steps: int, size: int, param: str = "fourier") -> RenderSpec:
    """The appendix recipe, small: a unit's 8 channels become 2-image chunks here (one part each)."""
    return RenderSpec(
        steps=steps,
        size=size,
        batch=4,
        objectives=("channel", "negative", "diversity"),
        diversity=2,
        coarse_fraction=0.0,
        param=param,
    )


def requests(model: LoadedModel, layer: str, parts: int) -> list[tuple[str, list[int]]]:
    """Enough one-channel requests for ``parts`` chunks of 4 images (channel + negative + 2 diverse)."""
    count = model.channels(layer)
    return [(layer, [index % count]) for index in range(parts)]


@contextlib.contextmanager
def draws_apart(counter: OpCounter) -> Iterator[None]:
    """Count the transform draws made before the step loop (host work on CPU tensors, one set
    per part and step, from each part's own generator) in ``counter`` rather than the step's."""
    original = getattr(render_module, "_transforms", None)
    if original is None:  # a renderer that draws inside its loop
        yield
        return

    def drawn(*args: object) -> Callable[[torch.Tensor, int], torch.Tensor]:
        with _disable_current_modes(), counter:
            return original(*args)

    render_module._transforms = drawn
    try:
        yield
    finally:
        render_module._transforms = original


def run(model: LoadedModel, layer: str, parts: int, steps: int, size: int, param: str = "fourier") -> None:
    wanted = requests(model, layer, parts)
    render_channel_sets(model, wanted, settings(steps, size, param), images_per_pass=4 * parts)


def ops_per_step(
    model: LoadedModel, layer: str, parts: int, size: int, steps: int = 3, param: str = "fourier"
) -> tuple[float, float]:
    """Operator calls per step: in the step loop, and in the transform draws made up front."""
    run(model, layer, parts, 1, size, param)  # warm-up: first-call caches are no step's work
    counts = []
    for n in (1, 1 + steps):
        draws = OpCounter()
        with OpCounter() as counter, draws_apart(draws):
            run(model, layer, parts, n, size, param)
        counts.append((sum(counter.calls.values()), sum(draws.calls.values())))
    return ((counts[1][0] - counts[0][0]) / steps, (counts[1][1] - counts[0][1]) / steps)


def ms_per_step(
    model: LoadedModel, layer: str, parts: int, size: int, steps: int, param: str
) -> tuple[float, float]:
    """Wall and CPU (this process) milliseconds per step; on a shared machine the CPU time is the
    steadier figure of the two."""
    run(model, layer, parts, 2, size, param)  # warm-up
    times = []
    for n in (1, 1 + steps):
        start = time.perf_counter(), time.process_time()
        run(model, layer, parts, n, size, param)
        times.append((time.perf_counter() - start[0], time.process_time() - start[1]))
    return tuple((times[1][i] - times[0][i]) / steps * 1000 for i in (0, 1))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-cnn")
    parser.add_argument("--layer", default=None, help="default: the model's last layer but the logits")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=5, help="steps timed per figure")
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--param", default="fourier", choices=PARAMS.names())
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, weights="none") if ":" in args.model else load_model(args.model)
    layer = args.layer or model.resolve_layer("conv2" if args.model == "tiny-cnn" else "inception4a")
    print(
        f"{args.model} {layer} {args.size} px, {args.param}, 4 images per part, threads {torch.get_num_threads()}"
    )
    for parts in args.parts:
        ops, draws = ops_per_step(model, layer, parts, args.size, param=args.param)
        wall, cpu = ms_per_step(model, layer, parts, args.size, args.steps, args.param)
        print(
            f"parts {parts:3d} ({4 * parts:4d} images): {ops:6.0f} ops/step in the loop, "
            f"{draws:6.0f} in draws up front, {wall:8.1f} ms/step wall, {cpu:8.1f} ms/step CPU"
        )


if __name__ == "__main__":
    main()
