"""An SAE layer at dashboard scale: does the scan's memory stay flat as the dataset grows?

A random TopK SAE of `--features` features (49,152 by default, 1,536 x the 32 channels of
tiny-cnn's conv2) is attached as a layer and a fresh process scans N images of a synthetic
Parquet dataset for each N, shard by shard, merging the partials as the driver does (top-k,
fixed histograms and a bounded sample per feature: nothing grows with N). Printed per N: scan
time, images/s and the process's peak RSS; the examples are then finalized for the first 256
features of the largest N (their crops) to time that step too.

    python scripts/bench_sae.py --features 49152 --images 256,1024 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_scan import current_rss_mb, peak_rss_mb, write_dataset
from safetensors.numpy import save_file

from atlas.data.open import open_source
from atlas.kinds.examples import PartialScan, finalize_layer, scan_shard
from atlas.models import load_model
from atlas.plan.sae import attach_sae, load_sae

MODEL, LAYER, CHANNELS = "tiny-cnn", "conv2", 32


def write_sae(path: Path, features: int, k: int) -> Path:
    rng = np.random.default_rng(0)
    weights = {
        "W_enc": rng.normal(0, 1 / np.sqrt(CHANNELS), (CHANNELS, features)).astype(np.float32),
        "b_enc": np.zeros(features, np.float32),
        "W_dec": rng.normal(0, 1 / np.sqrt(features), (features, CHANNELS)).astype(np.float32),
        "b_dec": np.zeros(CHANNELS, np.float32),
    }
    save_file(weights, str(path), metadata={"activation": "topk", "k": str(k)})
    return path


def scan_all(args: argparse.Namespace, data: Path) -> dict:
    """Child process: scan every shard of `data` on the SAE layer and merge, as the driver does."""
    model = load_model(MODEL)
    layer = attach_sae(model, load_sae(args.sae, LAYER, CHANNELS))
    source = open_source(data)
    baseline = current_rss_mb()
    start = time.perf_counter()
    merged: PartialScan | None = None
    for shard in source.shards(args.shard_size):
        partial = scan_shard(model, [layer], source, shard, k=args.k, batch_size=args.batch_size)
        merged = partial if merged is None else merged.merge(partial)
    seconds = time.perf_counter() - start
    figures = {
        "images": len(source),
        "seconds": round(seconds, 1),
        "images_per_s": round(len(source) / seconds, 1),
        "rss_after_model_mb": round(baseline),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    if args.finalize:
        start = time.perf_counter()
        wanted = list(range(min(256, model.channels(layer))))
        finalize_layer(model, layer, merged, source, 96, 64, unit_key="bench", channels=wanted)
        figures["finalize_256_features_s"] = round(time.perf_counter() - start, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=49152)
    parser.add_argument("--topk", type=int, default=32, help="the SAE's k")
    parser.add_argument("--images", default="256,1024", help="dataset sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--k", type=int, default=10, help="top and bottom examples per feature")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sae", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--finalize", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(scan_all(args, args.child)))
        return
    counts = [int(n) for n in args.images.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        sae = write_sae(Path(folder) / "sae.safetensors", args.features, args.topk)
        print(
            f"tiny-cnn {LAYER} ({CHANNELS} channels) + TopK SAE of {args.features} features (k={args.topk})"
        )
        for count in counts:
            data = Path(folder) / f"data-{count}.parquet"
            write_dataset(data, count)
            command = [sys.executable, __file__, "--child", str(data), "--sae", str(sae)]
            command += [
                "--batch-size",
                str(args.batch_size),
                "--shard-size",
                str(args.shard_size),
                "--k",
                str(args.k),
            ]
            command += ["--finalize"] if count == max(counts) else []
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{count:>6} images: scan {figures['seconds']} s ({figures['images_per_s']} images/s), "
                f"peak RSS {figures['peak_rss_mb']} MiB (after loading {figures['rss_after_model_mb']} MiB)"
                + (
                    f", finalize 256 features {figures['finalize_256_features_s']} s"
                    if "finalize_256_features_s" in figures
                    else ""
                )
            )


if __name__ == "__main__":
    main()
