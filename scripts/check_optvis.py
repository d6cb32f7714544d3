"""Figures for the renderer's claims on EfficientNet-Lite0 (prints a small report; takes minutes).

1. Optimized vs photos: each channel's mean activation on its visualization (Fourier +
   decorrelation + standard transforms) divided by the best of the demo photos (scikit-image's
   data folder and scikit-learn's sample images, square-cropped and resized to 224).
2. High-frequency energy at equal steps: share of luminance power above 0.25 cycles/pixel, for the
   pixel and the Fourier parameterization (same objective, transforms, optimizer, steps), and for
   the article's three steepest-descent notions (L2, L-inf, decorrelated).
3. Diversity: mean Gram cosine within a group with and without the diversity term, and the
   activation kept.
4. Class logit: top-1 of the untransformed optimized image.

Run: python scripts/check_optvis.py [--steps 128] [--size 224] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas.data.source import DEMO_EXCLUDED, model_view
from atlas.models import LoadedModel, load_model
from atlas.optvis import make_param, render
from atlas.optvis import objectives as obj
from atlas.optvis.render import STEEPEST_DESCENT
from atlas.quality import HIGH_FREQUENCY_CUTOFF, high_frequency_share

CHANNELS = {"_blocks.5": (0, 1, 2, 3), "_blocks.9": (0, 1, 2, 3)}
CLASSES = (1, 94, 309, 417, 980)  # goldfish, hummingbird, bee, balloon, volcano


def demo_photos(size: int) -> torch.Tensor:
    """The installed demo photos as a (N, 3, size, size) batch in [0, 1]."""
    import skimage
    import sklearn.datasets

    folder = Path(skimage.__file__).parent / "data"
    paths = sorted(
        p for p in folder.iterdir() if p.suffix in (".png", ".jpg") and p.name not in DEMO_EXCLUDED
    )
    images = [Image.open(p).convert("RGB") for p in paths]
    images += [Image.fromarray(sklearn.datasets.load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    arrays = [np.asarray(model_view(image, size), dtype=np.float32) / 255 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def channel_means(model: LoadedModel, images: torch.Tensor, layer: str) -> torch.Tensor:
    with torch.no_grad():
        return model.activations(images, [layer])[layer].mean(dim=(2, 3))


def optimized_vs_photos(model: LoadedModel, photos: torch.Tensor, steps: int, size: int) -> None:
    print(
        f"\n1. optimized / best photo ({len(photos)} photos), fourier+decorrelation+standard, {steps} steps"
    )
    for layer, channels in CHANNELS.items():
        best = channel_means(model, photos, layer)[:, list(channels)].max(dim=0).values
        objective = obj.channel(layer, list(channels))
        result = render(model, objective, make_param("fourier", len(channels), size), steps=steps)
        reached = result.activations[layer].mean(dim=(2, 3))[torch.arange(len(channels)), list(channels)]
        for channel, got, photo in zip(channels, reached.tolist(), best.tolist(), strict=True):
            print(
                f"  {layer} ch {channel}: optimized {got:7.2f}  best photo {photo:6.2f}  ratio {got / photo:5.2f}"
            )


def frequency_energy(model: LoadedModel, photos: torch.Tensor, steps: int, size: int) -> None:
    layer, channels = "_blocks.5", [0, 1, 2, 3]
    print(f"\n2. high-frequency share (> {HIGH_FREQUENCY_CUTOFF} cycles/px), {steps} steps, {layer} ch 0-3")
    photo_share = high_frequency_share(torch.nn.functional.interpolate(photos, size=(size, size))).mean()
    print(f"  demo photos: {photo_share:.4f}")
    objective = obj.channel(layer, channels)
    for label, kind in (("pixel + adam", "pixel"), ("fourier + decorrelation + adam", "fourier")):
        result = render(model, objective, make_param(kind, len(channels), size), steps=steps)
        activation = result.activations[layer].mean(dim=(2, 3))[torch.arange(4), channels].mean()
        share = high_frequency_share(result.images).mean()
        print(f"  {label:32s} share {share:.4f}  mean activation {activation:.2f}")
    for mode, (kind, decorrelate, optimizer) in STEEPEST_DESCENT.items():
        param = make_param(kind, len(channels), size, decorrelate=decorrelate)
        result = render(model, objective, param, steps=steps, lr=0.01, optimizer=optimizer, transforms="none")
        activation = result.activations[layer].mean(dim=(2, 3))[torch.arange(4), channels].mean()
        share = high_frequency_share(result.images).mean()
        print(f"  steepest descent {mode:15s} share {share:.4f}  mean activation {activation:.2f}")


def diversity_effect(model: LoadedModel, steps: int, size: int, weights: tuple[float, ...]) -> None:
    print(f"\n3. diversity (groups of 4, {steps} steps): mean Gram cosine within the group, activation kept")
    for layer, channel in (("_blocks.5", 2), ("_blocks.9", 1)):
        plain = render(model, obj.channel(layer, channel), make_param("fourier", 4, size), steps=steps)
        base_cos = _mean_off_diagonal(obj.gram_cosines(plain.activations[layer]))
        base_act = plain.activations[layer][:, channel].mean()
        print(f"  {layer} ch {channel}: without  cosine {base_cos:.3f}  activation {base_act:.2f}")
        for weight in weights:
            objective = obj.channel(layer, channel) + weight * obj.diversity(layer)
            diverse = render(model, objective, make_param("fourier", 4, size), steps=steps)
            cos = _mean_off_diagonal(obj.gram_cosines(diverse.activations[layer]))
            act = diverse.activations[layer][:, channel].mean()
            print(f"    weight {weight:5.1f}  cosine {cos:.3f}  activation {act:.2f} ({act / base_act:.0%})")


def _mean_off_diagonal(cosines: torch.Tensor) -> float:
    count = cosines.shape[-1]
    return float((cosines.sum() - cosines.diagonal().sum()) / (count * (count - 1)))


def class_logits(model: LoadedModel, steps: int, size: int) -> None:
    print(f"\n4. class logit -> top-1 of the optimized image ({steps} steps, {size}px)")
    labels = list(CLASSES)
    objective = sum(obj.class_logit(c, batch=i) for i, c in enumerate(labels))
    result = render(model, objective, make_param("fourier", len(labels), size), steps=steps)
    top = result.activations["logits"].argmax(dim=1).tolist()
    for label, predicted in zip(labels, top, strict=True):
        print(f"  class {label:4d}: top-1 {predicted:4d} {'ok' if predicted == label else 'MISS'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--diversity-weights", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--only", nargs="+", default=["photos", "frequency", "diversity", "classes"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("efficientnet-lite0")
    started = time.time()
    photos = demo_photos(model.input_size)
    if "photos" in args.only:
        optimized_vs_photos(model, photos, args.steps, args.size)
    if "frequency" in args.only:
        frequency_energy(model, photos, args.steps, args.size)
    if "diversity" in args.only:
        diversity_effect(model, args.steps, args.size, tuple(args.diversity_weights))
    if "classes" in args.only:
        class_logits(model, args.steps, args.size)
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
