"""Benchmark of the Ray Data scan: images/s against its two ceilings, decoding and the forward pass.

    python scripts/bench_scan_data.py                          # tiny-cnn and efficientnet-lite0
    python scripts/bench_scan_data.py --images 2000 --models tiny-cnn

Per model, on one local Ray (decoders + 1 logical CPUs), side by side in one run:
- decode  (1 core): images/s of decoding + resizing alone, in this process on one core; n
  decoding CPUs can give at most n times that (the ceiling assumes perfect scaling);
- forward (1 actor): images/s of the forward pass + statistics (`BatchScanner.scan`) on
  images already in memory, in this process on one thread, as one actor runs it;
- scan    (n CPUs): images/s of the whole pipeline (decode tasks -> actor -> partials);
- ceiling: the slower of n x decode and forward; the target is scan >= 0.85 x ceiling, and
  scan(2) / scan(1) >= 1.7 where decoding is the bottleneck (tiny-cnn).
Rates leave out start-up (Ray Data's first shard, the model load): they run from the first
shard's arrival to the last one's. Shards that arrive bunched (decoded ahead while the first one
was scanned) make that window too short, so each line also prints the rate over the whole call,
start-up included: a lower bound. Shards of a few dozen images are dominated by Ray Data's cost per
task; the default job's 64, or 128, show the pipeline's own rate. The images are generated JPEGs of 500x375 (ImageNet's typical
size; 64 distinct ones, copied) written to a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from atlas.data.source import decode_for_model
from atlas.kinds.examples import BatchScanner
from atlas.plan.spec import parse_spec
from atlas.run.executor import WorkerPlan
from atlas.run.job import prepare
from atlas.run.scans import ScanPlan, decoded_shards, scan_dataset

LAYERS = {"tiny-cnn": "conv3", "efficientnet-lite0": "_blocks.9"}
SPEC = """
[job]
name = "bench-scan-data"
out = "{out}"
[model]
name = "{model}"
[[layers]]
name = "{layer}"
[render]
enabled = false
[examples]
source = "{source}"
shard_size = {shard_size}
batch_size = {shard_size}
"""


def write_jpegs(folder: Path, count: int, distinct: int = 64) -> None:
    """`count` 500x375 JPEGs: smooth colour fields with noise, so they decode like photos.

    `distinct` of them are drawn and the rest are copies of their bytes (decoding costs the same).
    """
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:375, 0:500].astype(np.float32)
    encoded = []
    for _ in range(min(count, distinct)):
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([np.sin(xs / (40 + 9 * c) + ys / 57 + phase[c]) for c in range(3)], axis=-1)
        pixels = np.clip(127 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    for index in range(count):
        (folder / f"{index:05d}.jpg").write_bytes(encoded[index % len(encoded)])


def rate(arrivals: Iterable[int]) -> float:
    """Images/s from the first shard's arrival to the last's (start-up left out)."""
    first_time, counted = None, 0
    for images in arrivals:
        now = time.perf_counter()
        if first_time is None:
            first_time = now
        else:
            counted += images
    return counted / (now - first_time) if first_time is not None and now > first_time else float("nan")


def forward_rate(prepared, seconds: float = 6.0) -> float:
    """The forward pass + statistics on one thread, on images already decoded (as one actor)."""
    torch.set_num_threads(1)
    model, spec = prepared.model, prepared.spec
    scanner = BatchScanner(model, [layer.name for layer in spec.layers], spec.examples.k)
    batch = spec.examples.batch_size
    pixels = np.random.default_rng(0).integers(
        0, 256, (batch, model.input_size, model.input_size, 3), np.uint8
    )
    ids = [f"x{i}" for i in range(batch)]
    scanner.scan(ids, pixels)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        scanner.scan(ids, pixels)
        done += batch
    return done / (time.perf_counter() - start)


def decode_rate(source, units, size: int, seconds: float = 6.0) -> float:
    """Decoding + resizing on one core, in this process: what each decoding CPU can give."""
    done, start = 0, time.perf_counter()
    for unit in units:
        if time.perf_counter() - start > seconds:
            break
        ids, _, _, _ = decode_for_model(source, unit.inputs.source_ids, size)
        done += len(ids)
    return done / (time.perf_counter() - start)


def bench_model(model: str, folder: Path, out: Path, count: int, shard_size: int) -> dict[str, float]:
    text = SPEC.format(out=out, model=model, layer=LAYERS[model], source=folder, shard_size=shard_size)
    prepared = prepare(parse_spec(text))
    units = [u for u in prepared.plan.units if u.kind == "scan"][: max(2, count // shard_size)]
    size = prepared.model.input_size
    figures = {
        "images": float(sum(len(u.inputs.source_ids) for u in units)),
        "forward": forward_rate(prepared),
        "decode": decode_rate(prepared.source, units, size),
    }
    for _ in decoded_shards(prepared.source, units[:4], size, 2).iter_rows():
        pass  # warm-up: starts the worker processes both decoders run in
    for decoders in (1, 2):
        plan = ScanPlan(WorkerPlan(1, 1.0, 0.0), decoders)
        start = time.perf_counter()
        scanned = scan_dataset(prepared.spec, prepared.source, units, size, plan)
        figures[f"scan{decoders}"] = rate(len(unit.inputs.source_ids) for unit, _, _, _ in scanned)
        figures[f"wall{decoders}"] = figures["images"] / (time.perf_counter() - start)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1200, help="JPEGs for tiny-cnn")
    parser.add_argument("--images-efficientnet", type=int, default=256, help="JPEGs for efficientnet-lite0")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--models", default="tiny-cnn,efficientnet-lite0")
    args = parser.parse_args()
    os.environ.setdefault("RAY_worker_niceness", "0")  # as `atlas run` starts its local Ray
    with tempfile.TemporaryDirectory(prefix="bench-scan-data-") as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        counts = {"tiny-cnn": args.images, "efficientnet-lite0": args.images_efficientnet}
        models = args.models.split(",")
        count = max(counts[model] for model in models)  # only what the models run here read
        start = time.perf_counter()
        write_jpegs(folder, count)
        print(f"generated {count} JPEGs of 500x375 in {time.perf_counter() - start:.0f} s")
        ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
        try:
            for model in models:
                f = bench_model(model, folder, Path(tmp) / model, counts[model], args.shard_size)
                print(f"{model}: {f['images']:.0f} images, shards of {args.shard_size}")
                print(f"  forward (1 actor, 1 thread): {f['forward']:8.1f} images/s")
                print(f"  decode  (1 core, in-process): {f['decode']:8.1f} images/s")
                for n in (1, 2):
                    ceiling = min(n * f["decode"], f["forward"])
                    print(
                        f"  {n} decoding CPU(s): scan {f[f'scan{n}']:8.1f} images/s"
                        f"  = x{f[f'scan{n}'] / ceiling:.2f} of the ceiling {ceiling:.1f} "
                        f"(min of {n} x decode, forward); start-up included: {f[f'wall{n}']:.1f} images/s"
                    )
                print(f"  scan speed-up from 1 to 2 decoding CPUs: x{f['scan2'] / f['scan1']:.2f}")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
