"""Ours against torch-lucent at equal quality: how many of our steps reach lucent's 512-step picture.

lucent renders the channels once at ``--lucent-steps`` (512 by default, what its README uses),
with its standard transforms and the same model input our transforms give. The atlas renders the
same channels with its default recipe at each step count of ``--ladder``. Both sets of pictures
are quantized to 8 bits (what either would save) and judged by one function:

- activation: the channel's mean over positions (both renderers' objective) at the picture's own
  size, no transforms, the model in eval mode; reported as the mean over channels of
  ours / lucent's for the same channel;
- HF: the share of spectral power above a quarter cycle per pixel (``high_frequency_share``).

"Equal quality" is the first rung of the ladder whose mean activation is at least lucent's and
whose mean HF is at most lucent's; the figure is its steps and the wall-time ratio of that
render against lucent's (timed in this run, same model, same thread count).

    pip install --no-deps torch-lucent==0.1.8 && pip install kornia   # the peer, benchmark only
    python scripts/bench_equal_quality.py --model efficientnet-lite0 --layer _blocks.9
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import numpy as np
import torch
from bench_common import timed
from bench_lucent import install_shim, lucent_renderer
from bench_render import model_input_size

from atlas.models import LoadedModel, load_model
from atlas.optvis import render_channels
from atlas.plan.spec import RenderSpec
from atlas.quality.measures import high_frequency_share


def as_batch(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(B, 3, H, W) floats in [0, 1] from 8-bit (H, W, 3) pictures or lucent's floats, quantized."""
    array = np.stack([np.asarray(image) for image in images])
    if array.dtype != np.uint8:
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def judge(model: LoadedModel, layer: str, channels: Sequence[int], images: torch.Tensor) -> np.ndarray:
    """Each picture's own channel, its mean activation over positions (picture i is channels[i])."""
    name = model.resolve_layer(layer)
    maps = model.activations(images.to(model.device), [name])[name].float()
    rows = torch.arange(len(channels))
    return maps.flatten(2).mean(dim=2)[rows, torch.tensor(list(channels))].cpu().numpy()


def measured(run: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    """The pictures ``run`` returns and the wall seconds it took (``bench_common.timed``)."""
    kept: list[torch.Tensor] = []
    wall, _cpu = timed(lambda: kept.append(run()), device)
    return kept[0], wall


def ours(model: LoadedModel, layer: str, channels: Sequence[int], size: int, steps: int) -> torch.Tensor:
    settings = RenderSpec(steps=steps, size=size, batch=len(channels), objectives=("channel",))
    rendered = render_channels(model, layer, channels, settings)
    by_channel = {r.channel: r.image for r in rendered}
    return as_batch([by_channel[c] for c in channels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--layer", default="_blocks.9")
    parser.add_argument("--channels", default="0,1,2,3,4,5,6,7", help="comma-separated")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--lucent-steps", type=int, default=512)
    parser.add_argument("--ladder", default="64,96,128,192,256,384,512", help="our step counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    channels = [int(c) for c in args.channels.split(",")]
    ladder = sorted(int(s) for s in args.ladder.split(","))
    model = load_model(args.model, weights="none" if ":" in args.model else "default")
    install_shim(model.device)

    run = lucent_renderer(
        model.module,
        args.layer,
        channels,
        args.size,
        args.lucent_steps,
        model_input_size(args.size, "standard"),
    )
    theirs, lucent_seconds = measured(lambda: as_batch(run()), model.device)
    their_act = judge(model, args.layer, channels, theirs)
    their_hf = float(high_frequency_share(theirs).mean())
    print(
        f"{args.model} {args.layer}, channels {args.channels}, {args.size} px, threads {torch.get_num_threads()}"
    )
    print(
        f"lucent {args.lucent_steps} steps: mean activation {their_act.mean():.3f}, "
        f"HF {their_hf:.3f}, {lucent_seconds:.1f} s"
    )
    print(
        "| ours, steps | mean activation (/ lucent's) | channels at or above lucent's | HF | wall s | wall / lucent's |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    equal = None
    for steps in ladder:
        images, seconds = measured(
            lambda steps=steps: ours(model, args.layer, channels, args.size, steps), model.device
        )
        act = judge(model, args.layer, channels, images)
        mean = float(act.mean())
        ratio = f" (x{mean / their_act.mean():.2f})" if their_act.mean() > 0 else ""
        hf = float(high_frequency_share(images).mean())
        print(
            f"| {steps} | {mean:.3f}{ratio} | {int((act >= their_act).sum())}/{len(channels)} | {hf:.3f} "
            f"| {seconds:.1f} | {seconds / lucent_seconds:.2f} |"
        )
        if equal is None and mean >= their_act.mean() and hf <= their_hf:
            equal = (steps, seconds / lucent_seconds)
    if equal is None:
        print(f"equal quality: not reached within {ladder[-1]} steps")
    else:
        print(
            f"equal quality: {equal[0]} of our steps reach lucent's {args.lucent_steps} "
            f"(x{args.lucent_steps / equal[0]:.1f} fewer steps, wall x{1 / equal[1]:.1f} faster)"
        )


if __name__ == "__main__":
    main()
