"""Dictionaries of directions: a (K, C) matrix per layer, from SAEs, NMF or probes, as units.

A dictionary is a `.npy` file (names optional, from a `.names.txt` beside it, one per line) or a
`.safetensors` file with one 2-D tensor (names optional, as a JSON list in the metadata key
`names`). `attach_dictionary` makes it a derived layer of the model whose channel i is the
projection onto row i, so every view a channel has (optimized images with the channel objective,
which is then the direction objective, diversity, dataset examples with buckets and histograms,
deep links) comes from the same code as for channels, and a one-hot dictionary gives exactly the
channels' results.

K is any count of rows (SAEs are 8-64 x C); only the columns must be the base layer's C channels.
`layer_dictionary` is the one reader of a `[[layers]]` entry's file, so C always comes from the
base layer. Anything that is not K >= 1 finite real rows (as float32) of C columns, with K names
where names are given, is a `DictionaryError` when the job is planned, before any work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import MAGIC_PREFIX
from torch import nn

from atlas.core.errors import AtlasError
from atlas.models import LoadedModel
from atlas.models.layout import CLS_SUFFIX
from atlas.plan.layer_names import DICTIONARY_MARK, base_layer
from atlas.plan.spec import LayerSpec

SUFFIXES = (".npy", ".safetensors")
REAL_KINDS = "biuf"  # bool, signed and unsigned integers, floats: exactly representable or rounded


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
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:  # torch reads every dtype (bfloat16 too)
            keys = list(handle.keys())
            if len(keys) != 1:
                held = f" ({', '.join(keys)})" if keys else ""
                raise DictionaryError(
                    f"dictionary {path} holds {len(keys)} tensors{held}; keep exactly one (K, C) matrix"
                )
            tensor = handle.get_tensor(keys[0])
            names = (handle.metadata() or {}).get("names")
    except (SafetensorError, OSError) as err:
        raise DictionaryError(
            f"dictionary {path} is not a readable safetensors file ({_one_line(err)}); "
            "write it with safetensors' save_file"
        ) from err
    matrix = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return matrix, None if names is None else _metadata_names(path, names)


def _metadata_names(path: Path, text: str) -> list[str]:
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) and _is_text(name) for name in names):
        raise DictionaryError(f"dictionary {path}: its metadata `names` must be a JSON list of strings")
    return names


def _is_text(name: str) -> bool:
    """False for a string with lone surrogates (JSON can escape them; UTF-8 cannot hold them)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _read_npy(path: Path) -> tuple[np.ndarray, list[str] | None]:
    with path.open("rb") as handle:
        if handle.read(len(MAGIC_PREFIX)) != MAGIC_PREFIX:
            raise DictionaryError(
                f"dictionary {path} is not a .npy file; write it with numpy.save(path, matrix)"
            )
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:  # a damaged header or data, or Python objects
        raise DictionaryError(
            f"dictionary {path} cannot be read as an array of numbers (numpy: {_one_line(err)}); "
            "write a (K, C) float matrix with numpy.save(path, matrix)"
        ) from err
    names_file = path.with_suffix(".names.txt")
    return matrix, _file_names(names_file) if names_file.is_file() else None


def _file_names(path: Path) -> list[str]:
    """One name per line, split at newlines only: a name may hold any other character (where
    str.splitlines also splits at U+2028, vertical tabs, file separators...). A final newline ends the
    last line; a carriage return before a newline belongs to the line ending."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DictionaryError(f"direction names {path} are not UTF-8 text; save the file as UTF-8") from err
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _checked_matrix(path: Path, matrix: np.ndarray, layer: str, channels: int) -> np.ndarray:
    """The (K, C) float32 matrix, or the reason the file's array cannot be one."""
    if matrix.dtype.kind not in REAL_KINDS:
        raise DictionaryError(
            f"dictionary {path} holds {matrix.dtype} values; directions need real numbers (float, int or bool)"
        )
    if matrix.ndim != 2 or matrix.shape[1] != channels:
        raise DictionaryError(
            f"dictionary {path} has shape {list(matrix.shape)}; layer {layer!r} needs (K, {channels}): "
            "one row per direction, one column per channel"
        )
    if len(matrix) == 0:
        raise DictionaryError(f"dictionary {path} holds no directions; give at least one row")
    if not np.isfinite(matrix).all():
        raise DictionaryError(f"dictionary {path} holds NaN or infinite values")
    with np.errstate(over="ignore"):
        vectors = matrix.astype(np.float32)
    if not np.isfinite(vectors).all():
        raise DictionaryError(
            f"dictionary {path} holds values beyond float32's range (largest magnitude "
            f"{float(np.abs(matrix).max()):.3g}); rescale the directions"
        )
    return vectors


def load_dictionary(path: Path | str, layer: str, channels: int) -> Dictionary:
    """Read and check a dictionary for `layer` (which has `channels` channels: C, not K)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise DictionaryError(f"dictionary {path}: use a {' or '.join(SUFFIXES)} file")
    if not path.is_file():
        raise DictionaryError(f"dictionary {path} does not exist; check the path in the job spec")
    matrix, names = (_read_npy if path.suffix == ".npy" else _read_safetensors)(path)
    vectors = _checked_matrix(path, matrix, layer, channels)
    if names is not None and len(names) != len(vectors):
        raise DictionaryError(
            f"dictionary {path} names {len(names)} directions but holds {len(vectors)}; "
            "give one name per row (one line each in a .names.txt)"
        )
    labels = tuple(names) if names is not None else tuple(f"direction {i}" for i in range(len(vectors)))
    return Dictionary(layer, vectors, labels, path.stem)


def layer_dictionary(model: LoadedModel, layer: LayerSpec) -> Dictionary:
    """The dictionary of a `[[layers]]` entry, checked against its base layer's channels (its C).

    Every reader of a dictionary comes here: C is the base layer's width, never the K of the
    dictionary layer it makes.
    """
    base = model.resolve_layer(base_layer(layer.name))  # a typo names the closest layers
    if layer.name.endswith(CLS_SUFFIX) or base not in {info.name for info in model.layers()}:
        raise DictionaryError(
            f"layer {layer.name!r} has no map or tokens to project: a dictionary stands on a layer that "
            f"`atlas layers {model.name}` lists (not logits or a class token)"
        )
    return load_dictionary(layer.dictionary, base, model.channels(base))


def attach_layers(model: LoadedModel, layers: Sequence[LayerSpec]) -> tuple[LayerSpec, ...]:
    """Attach every [[layers]] dictionary and SAE; those layers are renamed to the layers they make.

    Idempotent (a renamed layer keeps its name), so the driver and every worker attach the same.
    """
    from atlas.plan.sae import attach_sae, layer_sae

    attached = []
    for layer in layers:
        if layer.sae is not None:
            attached.append(replace(layer, name=attach_sae(model, layer_sae(model, layer))))
            continue
        if layer.dictionary is None:
            attached.append(layer)
            continue
        found = layer_dictionary(model, layer)
        name = found.layer_name
        if name not in {info.name for info in model.layers()}:
            attach_dictionary(model, found)
        attached.append(replace(layer, name=name))
    return tuple(attached)
