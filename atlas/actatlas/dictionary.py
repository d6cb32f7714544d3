"""Dictionaries of directions: a (K, C) matrix per layer, from SAEs, NMF or probes, as units.

A dictionary is a `.npy` file (names optional, from a `.names.txt` beside it, one per line) or a
`.safetensors` file with one 2-D tensor (names optional, as a JSON list in the metadata key
`names`). `attach_dictionary` makes it a derived layer of the model whose channel i is the
projection onto row i, so every view a channel has (optimized images with the channel objective,
which is then the direction objective, diversity, dataset examples with buckets and histograms,
deep links) comes from the same code as for channels, and a one-hot dictionary gives exactly the
channels' results.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.models import LoadedModel
from atlas.spec import LayerSpec

SUFFIXES = (".npy", ".safetensors")
DICTIONARY_MARK = "@"


class DictionaryError(AtlasError, ValueError):
    """A dictionary file that cannot be read as (K, C) directions of its layer."""


@dataclass(frozen=True)
class Dictionary:
    layer: str
    vectors: np.ndarray  # (K, C) float32
    names: tuple[str, ...]  # K labels ("direction i" where the file names none)
    stem: str = "dictionary"

    @property
    def layer_name(self) -> str:
        """`<layer>@<file stem>:<hash>`: the content hash puts the matrix into every content key."""
        digest = hashlib.sha256(self.vectors.tobytes() + "\n".join(self.names).encode()).hexdigest()[:8]
        return f"{self.layer}{DICTIONARY_MARK}{self.stem}:{digest}"


class Projection(nn.Module):
    """Channel i of the output is the projection of each position's activation vector onto row i."""

    def __init__(self, vectors: np.ndarray):
        super().__init__()
        self.register_buffer("vectors", torch.from_numpy(np.asarray(vectors, np.float32)))

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bc...,kc->bk...", acts.float(), self.vectors)


def attach_dictionary(model: LoadedModel, dictionary: Dictionary) -> str:
    """Make the dictionary a layer of `model` (one channel per direction); returns its name."""
    name = dictionary.layer_name
    model.add_derived_layer(name, dictionary.layer, Projection(dictionary.vectors))
    return name


def _read_safetensors(path: Path) -> tuple[np.ndarray, list[str] | None]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        keys = list(handle.keys())
        if len(keys) != 1:
            raise DictionaryError(
                f"{path} holds {len(keys)} tensors ({', '.join(keys)}); keep exactly one (K, C) matrix"
            )
        matrix = handle.get_tensor(keys[0])
        names = (handle.metadata() or {}).get("names")
    return matrix, json.loads(names) if names else None


def _read_npy(path: Path) -> tuple[np.ndarray, list[str] | None]:
    matrix = np.load(path, allow_pickle=False)
    names_file = path.with_suffix(".names.txt")
    names = names_file.read_text().splitlines() if names_file.is_file() else None
    return matrix, names


def load_dictionary(path: Path | str, layer: str, channels: int) -> Dictionary:
    """Read and check a dictionary for `layer` (which has `channels` channels)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise DictionaryError(f"dictionary {path}: use a {' or '.join(SUFFIXES)} file")
    if not path.is_file():
        raise DictionaryError(f"dictionary {path} does not exist; check the path in the job spec")
    matrix, names = (_read_npy if path.suffix == ".npy" else _read_safetensors)(path)
    if matrix.ndim != 2 or matrix.shape[1] != channels:
        raise DictionaryError(
            f"dictionary {path} has shape {list(matrix.shape)}; layer {layer!r} needs (K, {channels}): "
            "one row per direction, one column per channel"
        )
    if not np.isfinite(matrix).all():
        raise DictionaryError(f"dictionary {path} holds NaN or infinite values")
    if names is not None and len(names) != len(matrix):
        raise DictionaryError(f"dictionary {path} names {len(names)} directions but holds {len(matrix)}")
    labels = tuple(names) if names is not None else tuple(f"direction {i}" for i in range(len(matrix)))
    return Dictionary(layer, matrix.astype(np.float32), labels, path.stem)


def attach_layers(model: LoadedModel, layers: Sequence[LayerSpec]) -> tuple[LayerSpec, ...]:
    """Attach every [[layers]] dictionary; those layers are renamed to their dictionary layers.

    Idempotent (a renamed layer keeps its name), so the driver and every worker attach the same.
    """
    attached = []
    for layer in layers:
        if layer.dictionary is None:
            attached.append(layer)
            continue
        base = layer.name.split(DICTIONARY_MARK)[0]
        found = load_dictionary(layer.dictionary, base, model.channels(base))
        name = found.layer_name
        if name not in {info.name for info in model.layers()}:
            attach_dictionary(model, found)
        attached.append(replace(layer, name=name))
    return tuple(attached)
