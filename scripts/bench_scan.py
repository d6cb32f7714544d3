"""Benchmark of the dataset scan: throughput against a bare forward pass, and memory vs dataset size.

    python scripts/bench_scan.py                                   # tiny-cnn, CPU
    python scripts/bench_scan.py --model efficientnet-lite0 --layers _blocks.3,_blocks.5,_blocks.9

Figures printed:
- decode: images/s of decoding + resizing alone (the loader, no model);
- forward: images/s of the truncated forward pass alone, on images already decoded into memory;
- decode + forward: the bare pass over the images, without any statistics;
- scan: images/s of `scan_shard` (decode + forward + per-channel extremes, histograms, sample,
  merges) over the same images; its ratio to the bare pass is the cost of the statistics;
- memory: peak RSS of fresh processes that scan N images shard by shard and merge the partials
  the way the driver does, for several N: the scan keeps top-k, fixed histograms and a bounded
  sample, so the peak should not grow with N.

The images are demo photo crops (JPEG, at most 256 px) repeated into a Parquet file as needed.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from atlas.data.open import open_source
from atlas.data.source import ShardRef, model_view
from atlas.kinds.examples import PartialScan, scan_shard
from atlas.models import load_model, pick_device

DEFAULT_LAYERS = {"tiny-cnn": "conv2,conv3", "efficientnet-lite0": "_blocks.3,_blocks.5,_blocks.9"}


def write_dataset(path: Path, count: int) -> None:
    """`count` rows of JPEG bytes cycling through the demo crops."""
    demo = open_source("demo")
    encoded = []
    for source_id in demo.ids():
        image = demo.load(source_id)
        image.thumbnail((256, 256))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    rows = [encoded[i % len(encoded)] for i in range(count)]
    pq.write_table(pa.table({"image": pa.array(rows, pa.binary())}), path, row_group_size=256)


def peak_rss_mb() -> float:
    """VmHWM of this process; not getrusage's ru_maxrss, which survives exec and so would report
    the parent's peak (the parent held the whole synthetic dataset while writing it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the memory figures need Linux")


def current_rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def scan_all(args: argparse.Namespace, path: Path) -> dict:
    """Child process: scan every shard of `path` and merge, as the driver would."""
    model = load_model(args.model, device=pick_device(args.device))
    layers = args.layers.split(",")
    source = open_source(path)
    model.layers()
    baseline = current_rss_mb()
    start = time.perf_counter()
    merged: PartialScan | None = None
    after_first = 0.0
    for shard in source.shards(args.shard_size):
        partial = scan_shard(model, layers, source, shard, k=args.k, batch_size=args.batch_size)
        merged = partial if merged is None else merged.merge(partial)
        after_first = after_first or current_rss_mb()
    seconds = time.perf_counter() - start
    return {
        "images": len(source),
        "seconds": seconds,
        "rss_after_model_mb": baseline,
        "rss_after_first_shard_mb": after_first,
        "rss_at_end_mb": current_rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
        "scanned": merged.stats.get("scanned", 0) if merged else 0,
    }


def throughput(args: argparse.Namespace, path: Path) -> None:
    device = pick_device(args.device)
    model = load_model(args.model, device=device)
    layers = args.layers.split(",")
    source = open_source(path)
    ids = source.ids()
    size = model.input_size
    model.layers()

    def decode(chunk: list[str]) -> torch.Tensor:
        good, _ = source.load_batch(chunk, draft_size=size)
        return torch.from_numpy(np.stack([np.asarray(model_view(image, size)) for _, image in good])).permute(
            0, 3, 1, 2
        )

    chunks = [ids[i : i + args.batch_size] for i in range(0, len(ids), args.batch_size)]
    decoded = [decode(chunk) for chunk in chunks]

    def forward(pixels: torch.Tensor) -> None:
        with torch.no_grad():
            model.activations(pixels.to(device).float().div_(255), layers)

    runs: dict[str, Callable[[], object]] = {
        "decode+resize only": lambda: [decode(chunk) for chunk in chunks],
        "forward only": lambda: [forward(pixels) for pixels in decoded],
        "decode + forward": lambda: [forward(decode(chunk)) for chunk in chunks],
        "scan_shard": lambda: scan_shard(
            model, layers, source, ShardRef(0, tuple(ids)), k=args.k, batch_size=args.batch_size
        ),
    }
    for run in runs.values():  # warm up (allocator, cudnn autotune, lazy init)
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):  # interleaved, best of: other load only ever slows a round down
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    rate = {name: len(ids) / seconds for name, seconds in best.items()}
    print(
        f"model {args.model} on {device} ({torch.get_num_threads()} threads), layers {args.layers}, "
        f"{len(ids)} images, batch {args.batch_size}, k {args.k}, best of {args.rounds} interleaved rounds"
    )
    print(f"  decode+resize only : {rate['decode+resize only']:8.1f} images/s")
    print(
        f"  forward only       : {rate['forward only']:8.1f} images/s (pre-decoded; truncated at the deepest layer)"
    )
    print(f"  decode + forward   : {rate['decode + forward']:8.1f} images/s (the bare pass: no statistics)")
    print(
        f"  scan_shard         : {rate['scan_shard']:8.1f} images/s "
        f"(x{rate['scan_shard'] / rate['decode + forward']:.2f} of the bare pass)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-cnn")
    parser.add_argument("--layers", default=None, help="comma-separated; default depends on the model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=512, help="images for the throughput figures")
    parser.add_argument(
        "--memory", default="500,4000", help="dataset sizes for the memory figures ('' skips)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the best is reported")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.layers = args.layers or DEFAULT_LAYERS.get(args.model, "")
    if args.child is not None:
        print(json.dumps(scan_all(args, args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "throughput.parquet"
        write_dataset(path, args.images)
        throughput(args, path)
        for count in [int(c) for c in args.memory.split(",") if c]:
            data = Path(tmp) / f"memory{count}.parquet"
            write_dataset(data, count)
            command = [
                sys.executable,
                __file__,
                "--child",
                str(data),
                "--model",
                args.model,
                "--layers",
                args.layers,
                "--device",
                args.device,
                "--batch-size",
                str(args.batch_size),
                "--shard-size",
                str(args.shard_size),
                "--k",
                str(args.k),
            ]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            print(
                f"  memory, {result['images']:5d} images: peak RSS {result['peak_rss_mb']:6.1f} MB; RSS after "
                f"model load {result['rss_after_model_mb']:.1f}, after the first shard "
                f"{result['rss_after_first_shard_mb']:.1f}, at the end {result['rss_at_end_mb']:.1f} MB; "
                f"{result['images'] / result['seconds']:.1f} images/s"
            )


if __name__ == "__main__":
    main()
