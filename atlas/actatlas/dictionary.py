"""Dictionaries of directions: a (K, C) matrix per layer, from SAEs, NMF or probes, as units.

A dictionary is a `.npy` file (names optional, from a `.names.txt` beside it, one per line) or a
`.safetensors` file with one 2-D tensor (names optional, as a JSON list in the metadata key
`names`). Its rows are scored by the scan exactly like random directions (the pseudo-layer
`<layer>@direction` of `atlas.examples`) and rendered with the direction objective
(`atlas.optvis.render_vectors`), so a one-hot dictionary reproduces the channels' results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atlas.errors import AtlasError

SUFFIXES = (".npy", ".safetensors")


class DictionaryError(AtlasError, ValueError):
    """A dictionary file that cannot be read as (K, C) directions of its layer."""


@dataclass(frozen=True)
class Dictionary:
    layer: str
    vectors: np.ndarray  # (K, C) float32
    names: tuple[str, ...]  # K labels ("direction i" where the file names none)


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
    return Dictionary(layer, matrix.astype(np.float32), labels)
