"""Do a finished atlas's icons show their own cells? The issue's measure, read from the store.

For every stored icon: the mean activation vector of the icon image (as stored, PNG) at the atlas
layer, and the fraction of icons more cosine-similar to their own cell's mean than to any other
cell's (`atlas.kinds.actatlas.icons.agreement`); the same with the cells shuffled is the negative control;
`agreement_pairs`, the fraction of (icon, other cell) pairs where the icon is closer to its own cell.

    PYTHONPATH=$PWD python scripts/actatlas_agreement.py /tmp/aa-demo/out _blocks.5
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import torch
from PIL import Image

from atlas.kinds.actatlas.icons import agreement, pairwise_agreement
from atlas.models import load_model
from atlas.store.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the job's output folder")
    parser.add_argument("layer")
    parser.add_argument("--grid", type=int, default=None, help="one grid size (default: the smallest)")
    args = parser.parse_args()
    store = open_store(args.out)
    model = load_model(store.job()["model"])
    icons = store.read("icons", args.layer).to_pylist()
    size = args.grid or min(r["grid"] for r in icons)
    icons = [r for r in icons if r["grid"] == size]
    cells = {
        r["cell"]: r["mean"] for r in store.read("atlas_grid", args.layer).to_pylist() if r["grid"] == size
    }
    pixels = [np.array(Image.open(io.BytesIO(r["image"])).convert("RGB")) for r in icons]
    x01 = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acts = model.activations(x01, [args.layer])[args.layer].mean(dim=(2, 3)).numpy()
    means = np.array([cells[r["cell"]] for r in icons], np.float32)
    figures = {
        "grid": size,
        "cells": len(icons),
        "agreement": agreement(acts, means),
        "agreement_shuffled": agreement(acts, np.roll(means, 1, axis=0)),
        "chance": 1 / len(icons),
        "agreement_pairs": pairwise_agreement(acts, means),  # chance 0.5
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
