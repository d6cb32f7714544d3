"""A tiny sparse autoencoder trained in a test, on planted structure, saved as SAELens saves it.

`layer_positions` collects the position vectors of a layer of the four-family CNN
(tests/families.py) over seeded family images, each with its image's family. `train_sae` fits a
ReLU SAE (L1 penalty on activations times decoder norms, unit decoder rows) or a TopK SAE to
them with full-batch Adam, in a few seconds on one CPU core, the same weights for the same seed.
`save_saelens` writes `cfg.json` and `sae_weights.safetensors` (W_enc (C, K), b_enc, W_dec
(K, C), b_dec), the folder `[[layers]] sae = ...` reads. `planted_vectors` makes data whose
features are known: sparse sums of planted directions, which every SAE trained on it recovers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from families import FAMILIES, FAMILY_LAYER, family_images
from safetensors.numpy import save_file
from torch import nn

from atlas.models import LoadedModel


@dataclass(frozen=True)
class TrainedSae:
    """An SAE's tensors as SAELens names them, and its activation."""

    w_enc: np.ndarray  # (C, K)
    b_enc: np.ndarray  # (K,)
    w_dec: np.ndarray  # (K, C), unit rows
    b_dec: np.ndarray  # (C,)
    activation: str  # relu | topk
    k: int = 0

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, C) -> (n, K) feature activations, as atlas.plan.sae computes them."""
        pre = (x - self.b_dec) @ self.w_enc + self.b_enc
        if self.activation == "topk":
            kth = np.sort(pre, axis=1)[:, -self.k][:, None]
            pre = np.where(pre >= kth, pre, 0.0)
        return np.maximum(pre, 0.0)


def layer_positions(model: LoadedModel, per_family: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n * H * W, C) position vectors of `FAMILY_LAYER` over seeded family images, and the
    family of each position's image."""
    images, labels = family_images(per_family, seed)
    with torch.no_grad():
        maps = model.activations(images, [FAMILY_LAYER])[FAMILY_LAYER]  # (n, C, H, W)
    positions = maps.shape[2] * maps.shape[3]
    vectors = maps.movedim(1, -1).reshape(-1, maps.shape[1]).numpy()
    return vectors.astype(np.float32), np.repeat(labels.numpy(), positions)


def planted_vectors(
    directions: int, width: int, count: int, seed: int, active: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """(count, width) vectors, each a sum of `active` of `directions` planted unit directions with
    weights in [1, 2] plus a little noise, and the planted directions (directions, width)."""
    rng = np.random.default_rng(seed)
    planted = rng.normal(size=(directions, width))
    planted /= np.linalg.norm(planted, axis=1, keepdims=True)
    codes = np.zeros((count, directions))
    for row in codes:
        row[rng.choice(directions, active, replace=False)] = rng.uniform(1.0, 2.0, active)
    vectors = codes @ planted + 0.01 * rng.normal(size=(count, width))
    return vectors.astype(np.float32), planted.astype(np.float32)


def train_sae(
    vectors: np.ndarray,
    features: int,
    seed: int,
    activation: str = "relu",
    k: int = 4,
    steps: int = 400,
    l1: float = 0.05,
) -> TrainedSae:
    """Fit an SAE of `features` features to (n, C) `vectors` with `steps` full-batch Adam steps."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(vectors).float()
    width = x.shape[1]
    w_dec = torch.randn(features, width, generator=generator)
    w_dec = nn.Parameter(w_dec / w_dec.norm(dim=1, keepdim=True))
    w_enc = nn.Parameter(w_dec.detach().T.clone())
    b_enc = nn.Parameter(torch.zeros(features))
    b_dec = nn.Parameter(x.mean(dim=0).clone())
    optimizer = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=0.01)
    for _ in range(steps):
        pre = (x - b_dec) @ w_enc + b_enc
        if activation == "topk":
            top = pre.topk(k, dim=1)
            f = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
            penalty = torch.zeros(())
        else:
            f = torch.relu(pre)
            penalty = l1 * (f * w_dec.norm(dim=1)).sum(dim=1).mean()
        loss = ((f @ w_dec + b_dec - x) ** 2).sum(dim=1).mean() + penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # unit decoder rows: the L1 penalty cannot shrink features by growing rows
            w_dec /= w_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return TrainedSae(
        *(t.detach().numpy().astype(np.float32).copy() for t in (w_enc, b_enc, w_dec, b_dec)),
        activation=activation,
        k=k if activation == "topk" else 0,
    )


def save_saelens(sae: TrainedSae, folder: Path) -> Path:
    """Write `sae` as SAELens's folder (cfg.json + sae_weights.safetensors); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"W_enc": sae.w_enc, "b_enc": sae.b_enc, "W_dec": sae.w_dec, "b_dec": sae.b_dec}
    save_file(
        {name: np.ascontiguousarray(t) for name, t in tensors.items()},
        str(folder / "sae_weights.safetensors"),
    )
    config: dict[str, object] = {
        "d_in": int(sae.w_enc.shape[0]),
        "d_sae": int(sae.w_enc.shape[1]),
        "architecture": "standard" if sae.activation == "relu" else "topk",
        "apply_b_dec_to_input": True,
        "hook_name": FAMILY_LAYER,
    }
    if sae.activation == "topk":
        config["activation_fn_kwargs"] = {"k": sae.k}
    (folder / "cfg.json").write_text(json.dumps(config, indent=1))
    return folder


def family_selectivity(sae: TrainedSae, vectors: np.ndarray, families: np.ndarray) -> np.ndarray:
    """(4, K): each feature's mean activation on a family's positions minus its mean on the others'."""
    acts = sae.encode(vectors)
    own = np.stack([acts[families == f].mean(axis=0) for f in range(len(FAMILIES))])
    rest = np.stack([acts[families != f].mean(axis=0) for f in range(len(FAMILIES))])
    return own - rest
