"""Matching two SAEs at dashboard scale: time and memory of `atlas.kinds.stability.match_features`.

Two decoders of `--features` rows of width `--width` (49,152 x 768 by default, a 64x SAE of a
ViT-B layer): the second holds, in shuffled order, noisy copies of a `--shared` share of the
first's rows (cosine about 0.95 with their source) and new random rows for the rest, as a
second seed's SAE shares part of its features. Printed: the path taken (dense Hungarian or the
sparse candidate graph), seconds, the process's peak RSS beside the dense matrix it avoids, and
how many of the planted pairs were recovered.

    python scripts/bench_sae_match.py --features 49152 --width 768
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from atlas.kinds.stability import DENSE_MAX, match_features
from atlas.site.stability import distribution


def decoders(
    features: int, width: int, shared: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, planted): second[planted[i]] copies first[i] for i < shared * features."""
    rng = np.random.default_rng(seed)
    first = rng.standard_normal((features, width), dtype=np.float32)
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    copies = int(shared * features)
    second = rng.standard_normal((features, width), dtype=np.float32)
    second /= np.linalg.norm(second, axis=1, keepdims=True)
    second[:copies] = first[:copies] + 0.33 * second[:copies]  # cosine about 0.95
    order = rng.permutation(features)
    shuffled = np.empty_like(second)
    shuffled[order] = second
    return first, shuffled, order[:copies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=49152)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--shared", type=float, default=0.5, help="share of features both SAEs learned")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--dense-max", type=int, default=DENSE_MAX, help="largest K1 x K2 matched densely")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    first, second, planted = decoders(args.features, args.width, args.shared)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    found = match_features(first, second, args.candidates, args.dense_max)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    recovered = float((found.partner[: len(planted)] == planted).mean()) if len(planted) else 1.0
    dense_gib = args.features**2 * 4 / 2**30
    print(
        f"{args.features} x {args.features} features of width {args.width}, {found.method} "
        f"({args.candidates} candidates each way), {torch.get_num_threads()} threads"
    )
    print(
        f"match {seconds:.1f} s, peak RSS {peak:.0f} MiB (decoders loaded: {before:.0f} MiB; "
        f"a dense cosine matrix alone: {dense_gib:.1f} GiB); planted pairs recovered {100 * recovered:.1f}%"
    )
    print(distribution(found.partner, found.cosine).line())


if __name__ == "__main__":
    main()
