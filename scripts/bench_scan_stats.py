"""Benchmark of the scan's per-batch step (forward + statistics) on images already decoded.

    python scripts/bench_scan_stats.py                       # this checkout
    python scripts/bench_scan_stats.py --against /tmp/main   # and another checkout, side by side

Per case, images/s of `BatchScanner.scan` (one batch -> one `PartialScan`, read back per batch)
and, where the checkout has it, of the shard fold (`BatchScanner.add` into one `RunningScan`,
read back once at the end, as `scan_shard` runs), on one thread: GoogLeNet (no weights) over the
nine mixed layers of jobs/inceptionv1.toml at batch 128 and 64 px, and tiny-cnn's layers at
batch 128. `--against` runs the same measurement with that checkout first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "googlenet-64px": ("torchvision:googlenet", 64),
    "tiny-cnn": ("tiny-cnn", 64),
}
BATCH = 128


def measure(seconds: float) -> dict[str, dict[str, float]]:
    """Images/s of each case in this process."""
    import numpy as np
    import torch

    from atlas.kinds.examples import BatchScanner
    from atlas.models import load_model

    torch.set_num_threads(1)
    results = {}
    for case, (name, size) in CASES.items():
        model = load_model(name, weights="none") if name.startswith("torchvision:") else load_model(name)
        if name == "tiny-cnn":
            layers = ["conv1", "conv2", "conv3", "logits"]
        else:
            layers = [f"inception{b}" for b in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
        scanner = BatchScanner(model, layers)
        pixels = np.random.default_rng(0).integers(0, 256, (BATCH, size, size, 3), np.uint8)
        ids = [f"x{i}" for i in range(BATCH)]

        scanner.scan(ids, pixels)  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            scanner.scan(ids, pixels)
            done += BATCH
        results[case] = {"scan_images_per_s": round(done / (time.perf_counter() - start), 1)}
        if hasattr(scanner, "running"):
            running, batches, start = scanner.running(), 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                scanner.add(running, [f"{batches}-{i}" for i in ids], pixels)
                batches += 1
            running.partial()
            results[case]["fold_images_per_s"] = round(batches * BATCH / (time.perf_counter() - start), 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout to measure in the same run")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the child's output
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.seconds)))
        return
    rows = {"this": measure(args.seconds)}
    if args.against:
        env = {**os.environ, "PYTHONPATH": str(args.against.resolve()), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, __file__, "--json", "--seconds", str(args.seconds)]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        rows[str(args.against)] = json.loads(out.splitlines()[-1])
    for checkout, results in rows.items():
        for case, figures in results.items():
            print(f"{checkout:>20} {case:>16} " + " ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
