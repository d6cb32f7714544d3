"""Do the demo's optimized images excite their channels more than any demo photo does?

Reads a built demo atlas (`atlas demo`), measures each `channel` image's mean channel activation
at the model's input size, and compares it with the best of the demo dataset's images.

    python scripts/check_demo.py [atlas-out/demo]
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
from PIL import Image

from atlas.data.open import open_source
from atlas.models import load_model
from atlas.store.store import Store


def as_batch(images: list[Image.Image], size: int) -> torch.Tensor:
    arrays = [np.asarray(i.convert("RGB").resize((size, size)), dtype=np.float32) / 255 for i in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def main(out: str = "atlas-out/demo") -> None:
    store = Store(out)
    job = store.job()
    model = load_model(job["model"])
    source = open_source(job["spec"]["examples"]["source"])
    rows = [r for r in store.read("render").to_pylist() if r["objective"] == "channel"]
    layers = sorted({r["layer"] for r in rows})
    size = model.input_size
    best: dict[str, torch.Tensor] = {}
    ids = source.ids()
    with torch.no_grad():
        for start in range(0, len(ids), 64):
            good, _ = source.load_batch(ids[start : start + 64])
            acts = model.activations(as_batch([image for _, image in good], size), layers)
            for layer, act in acts.items():
                top = act.mean(dim=(2, 3)).max(dim=0).values
                best[layer] = top if layer not in best else torch.maximum(best[layer], top)
        ratios = []
        for row in sorted(rows, key=lambda r: (r["layer"], r["channel"])):
            image = Image.open(io.BytesIO(row["image"]))
            act = model.activations(as_batch([image], size), [row["layer"]])[row["layer"]]
            value = float(act.mean(dim=(2, 3))[0, row["channel"]])
            photo = float(best[row["layer"]][row["channel"]])
            ratios.append(value / photo)
            print(
                f"{row['layer']} channel {row['channel']}: optimized {value:.2f}, best photo {photo:.2f}, x{value / photo:.1f}"
            )
    print(
        f"{len(ratios)} channels vs {len(ids)} images: ratio min x{min(ratios):.1f}, median x{np.median(ratios):.1f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", default="atlas-out/demo", help="a built atlas's output folder")
    main(parser.parse_args().out)
