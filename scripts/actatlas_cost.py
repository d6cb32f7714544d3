"""What an activation atlas costs, measured here, and projected to a 40x40 atlas of 100,000 images.

Measures, on the chosen device: the scan with vector collection (s per image), UMAP on the
collected sample (CPU, if umap-learn is installed), the grid, and icons (s per icon at the given
render settings). Projects: scan of `--project-images`, UMAP fit on `max_fit` of them (n log n
from the measured fit), and one icon per cell of a 40x40 grid (the upper bound: every cell kept).
Run it on a GPU machine (`--device cuda`) for the GPU figures; UMAP stays on the CPU either way.

    PYTHONPATH=$PWD python scripts/actatlas_cost.py --images 256 --icons 8
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import numpy as np

from atlas.data.open import open_source
from atlas.data.source import ShardRef
from atlas.kinds.actatlas.collect import collect_shard
from atlas.kinds.actatlas.grid import grid
from atlas.kinds.actatlas.icons import agreement, render_icons
from atlas.models import load_model
from atlas.plan.spec import RenderSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--layer", default="_blocks.5")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--icons", type=int, default=8)
    parser.add_argument("--steps", type=int, default=256, help="render steps per icon (the spec default)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--project-images", type=int, default=100_000)
    parser.add_argument("--grid", type=int, default=40)
    args = parser.parse_args()

    figures: dict[str, object] = vars(args).copy()
    model = load_model(args.model, device=args.device)
    source = open_source("demo")
    ids = source.ids()[: args.images]
    t0 = time.perf_counter()
    _, sample = collect_shard(model, [args.layer], source, ShardRef(0, tuple(ids)), size=args.images, k=1)
    scan_s = time.perf_counter() - t0
    vectors = sample.vectors[args.layer]
    figures["scan_s_per_image"] = scan_s / len(ids)

    try:
        from atlas.kinds.actatlas.layout import LayoutSettings, layout

        t0 = time.perf_counter()
        layout(vectors[:64], LayoutSettings(n_neighbors=10))  # numba's compile, counted apart
        figures["umap_compile_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        coords = layout(vectors)
        umap_s = time.perf_counter() - t0
        figures["umap_fit_s"] = umap_s
        n, big = len(vectors), min(args.project_images, 100_000)
        figures["umap_fit_s_projected"] = umap_s * (big * math.log(big)) / (n * math.log(n))
    except Exception as error:  # no umap-learn on this machine: the rest still measures
        figures["umap"] = f"not measured: {error}"
        centred = vectors - vectors.mean(axis=0)
        coords = np.linalg.svd(centred, full_matrices=False)[0][:, :2]

    t0 = time.perf_counter()
    cells = grid(coords, vectors, args.grid, min_count=1)
    figures["grid_s"] = time.perf_counter() - t0
    small = grid(coords, vectors, max(2, int(math.sqrt(args.icons)) + 1), min_count=2)
    means, kept = small.means[: args.icons], list(small.kept[: args.icons])
    settings = replace(RenderSpec(), steps=args.steps, size=args.size, batch=args.batch)
    t0 = time.perf_counter()
    icons = render_icons(model, args.layer, means, kept, settings)
    icon_s = (time.perf_counter() - t0) / len(icons)
    activations = np.stack([icon.vector for icon in icons])
    figures["icon_s"] = icon_s
    figures["icons_agreement"] = agreement(activations, means)
    figures["icons_agreement_shuffled"] = agreement(activations, np.roll(means, 1, axis=0))
    figures["cells_kept_of_measured_grid"] = int(len(cells.kept))
    cells_full = args.grid * args.grid
    figures["projected_40x40"] = {
        "scan_s": figures["scan_s_per_image"] * args.project_images,
        "umap_fit_s": figures.get("umap_fit_s_projected"),
        "icons_s": icon_s * cells_full,
        "icons": cells_full,
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
