"""Do activation-atlas icons reach their cells? Old and new icon objective side by side (issue 25).

On the four-family CNN of tests/families.py (red disks, green stripes, blue checkerboards, grey
noise; its atlas layer is a batch norm's output: centred, signed), for each model seed: the cells
of a 4 x 4 grid over held-out images, then per cell a flat image of the cell's mean colour (the
baseline), an icon with the earlier objective (dot product x cosine^2, the cosine floored at 1e-4:
`direction` with `cosine_power`) and an icon with the current one (`mean_match`, what
`render_icons` uses), all with the same render settings. Figures per objective: `pairs`, the
fraction of (icon, other cell) pairs where the icon is more cosine-similar to its own cell's mean
(chance 0.5); `agreement`, the fraction of icons most similar to their own cell (chance 1/k, the
measure of scripts/actatlas_agreement.py); the mean and lowest own-cell cosine.

    PYTHONPATH=$PWD python scripts/actatlas_icons.py --seeds 0,1,2,3,4,5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the family model and data
from families import FAMILY_LAYER, family_cells, family_model, flat_colour_images, layer_vectors  # noqa: E402

from atlas.kinds.actatlas.icons import agreement, cosine_matrix, pairwise_agreement, render_icons  # noqa: E402
from atlas.optvis.recipes import render_vectors  # noqa: E402
from atlas.plan.spec import RenderSpec  # noqa: E402

OLD_COSINE_POWER = 2.0  # the spec default of the earlier objective


def figures(activations: np.ndarray, means: np.ndarray) -> dict[str, float]:
    """The measures of one set of icons (one row per cell) against the cells' means."""
    own = np.diag(cosine_matrix(activations, means))
    return {
        "pairs": round(pairwise_agreement(activations, means), 3),
        "agreement": round(agreement(activations, means), 3),
        "own_cosine_mean": round(float(own.mean()), 3),
        "own_cosine_min": round(float(own.min()), 3),
        "negative_cosines": int((own < 0).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5", help="model seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=RenderSpec().lr)
    parser.add_argument("--transforms", default=RenderSpec().transforms)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a busy CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.perf_counter()
        model = family_model(seed=seed)
        cells = family_cells(model)
        settings = replace(
            RenderSpec(),
            steps=args.steps,
            size=args.size,
            lr=args.lr,
            transforms=args.transforms,
            batch=len(cells.kept),
        )
        labels = [f"cell {c}" for c in cells.kept]
        vectors = torch.from_numpy(cells.means)
        old = render_vectors(model, FAMILY_LAYER, vectors, settings, labels, "icon", OLD_COSINE_POWER)
        new = render_icons(model, FAMILY_LAYER, cells.means, list(cells.kept), settings)
        row = {
            "seed": seed,
            "cells": len(cells.kept),
            "purity": round(cells.purity(), 3),
            "flat": figures(layer_vectors(model, flat_colour_images(cells)), cells.means),
            "old": figures(np.stack([icon.vector for icon in old]), cells.means),
            "new": figures(np.stack([icon.vector for icon in new]), cells.means),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    summary = {
        name: {
            key: round(float(np.mean([r[name][key] for r in rows])), 3)
            for key in ("pairs", "agreement", "own_cosine_mean")
        }
        for name in ("flat", "old", "new")
    }
    beats = sum(r["new"]["pairs"] > r["flat"]["pairs"] for r in rows)
    print(json.dumps({"models": len(rows), "mean": summary, "new_beats_flat_pairs": beats}))


if __name__ == "__main__":
    main()
