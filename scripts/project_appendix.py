"""Projected wall time and cost of the full appendix atlas on N GPUs, from FLOP counts.

    python scripts/project_appendix.py                      # jobs/inceptionv1.toml, the table below
    python scripts/project_appendix.py --rate 58 --rate 20 --gpus 1 --gpus 8 --price 3.0

Projected, not measured: no GPU has run the job. The renders' FLOPs are counted with
`torch.utils.flop_counter` on the job's own model and settings (the truncated forward + backward
of one image at the side the transforms give, per layer, times the layer's channels, images per
channel and steps); wall time is that over N GPUs at an assumed achieved rate (TFLOP/s). Ray's
per-unit overhead, PNG and Parquet writes are left out; `scripts/gpu_check.sh` measures them on
a GPU and projects the job from a slice of it. Dataset examples are decode-bound: their time
is the dataset's size over the decode rate of the CPUs (--decode-rate images/s, per GPU node).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import flops_per_image_step, model_input_side  # noqa: E402

from atlas.models import load_model  # noqa: E402
from atlas.optvis.named import OBJECTIVES  # noqa: E402
from atlas.plan.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=ROOT / "jobs" / "inceptionv1.toml")
    parser.add_argument("--rate", type=float, action="append", help="achieved TFLOP/s per GPU (repeatable)")
    parser.add_argument("--gpus", type=int, action="append", help="GPUs (repeatable)")
    parser.add_argument("--price", type=float, default=3.0, help="price per GPU-hour, for the cost")
    parser.add_argument("--dataset", type=int, default=1_281_167, help="images scanned (ImageNet train)")
    parser.add_argument("--decode-rate", type=float, default=4_900.0, help="images/s decoded per GPU node")
    args = parser.parse_args(argv)
    rates, counts = args.rate or [58.0, 20.0], args.gpus or [1, 4, 8]
    spec = load_spec(args.job)
    model = load_model(spec.model.name, weights="none", device="cpu")  # FLOPs do not need weights
    side = model_input_side(spec.render.size, spec.render.transforms)
    images = sum(spec.render.diversity if OBJECTIVES.get(o).diverse else 1 for o in spec.render.objectives)
    total, channels = 0.0, 0
    for layer in spec.layers:
        count = model.channels(layer.name)
        channels += count
        total += count * images * spec.render.steps * flops_per_image_step(model, layer.name, side)
    print(
        f"{args.job.name}: {channels} channels x {images} images x {spec.render.steps} steps at {side} px "
        f"= {channels * images * spec.render.steps / 1e6:.1f} M image-steps, {total / 1e15:.1f} PFLOP "
        "(renders; counted, not measured)"
    )
    print("| achieved TFLOP/s per GPU | GPUs | projected wall time | GPU-hours | cost at "
          f"{args.price:g}/GPU-hour |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    rows = []
    for rate in rates:
        gpu_hours = total / (rate * 1e12) / 3600
        for n in counts:
            minutes = gpu_hours * 60 / n
            rows.append({"rate": rate, "gpus": n, "minutes": minutes, "gpu_hours": gpu_hours})
            print(f"| {rate:g} | {n} | {minutes:.1f} min | {gpu_hours:.2f} | {gpu_hours * args.price:.2f} |")
    scan_minutes = args.dataset / args.decode_rate / 60
    print(
        f"dataset examples: {args.dataset:,} images at {args.decode_rate:,.0f} images/s per GPU node "
        f"= {scan_minutes:.1f} min on one node, / N on N"
    )
    return {"pflop": total / 1e15, "rows": rows, "scan_minutes_one_node": scan_minutes}


if __name__ == "__main__":
    main()
