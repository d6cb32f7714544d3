"""Sparse autoencoders as units: `[[layers]] sae = "path"` makes each SAE feature a channel.

A feature's activation is what the SAE's encoder computes, nonlinearity included, at every
position (or patch token) of the layer:

    pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    relu:     f = relu(pre)
    jumprelu: f = relu(pre) * (pre > threshold)
    topk:     the k largest `pre` per position, through relu; every other feature 0
              (`pre` first multiplied by each decoder row's norm where the SAE says
              rescale_acts_by_decoder_norm)

with W_enc (C, K), b_enc (K,), W_dec (K, C), b_dec (C,) and, for JumpReLU, threshold (K,) (or
log_threshold). With `[[layers]] sae_objective = "decoder"` a unit is instead the projection
of each position's vector onto its decoder row, `x . W_dec[i]` (what the feature writes, not
what reads it); the layer's name then differs, an encoder layer's stays as it was. Like a dictionary of directions (atlas.plan.dictionary) the SAE becomes a derived
layer of the model, `<layer>@<stem>:<hash>`, so renders optimize the feature's real activation
and scans rank images by it, from the same code as channels. Three files are read:

- SAELens's folder: `cfg.json` (d_in, d_sae, `architecture` standard / jumprelu / topk or
  `activation_fn` relu / topk / jumprelu, `k` or `activation_fn_kwargs.k`,
  `apply_b_dec_to_input`, `rescale_acts_by_decoder_norm`) and `sae_weights.safetensors`; an
  input normalization or reshape other than "none" is refused (the atlas feeds the layer's raw
  activations, so such an SAE's features would be wrong);
- a `.safetensors` file with those tensor names, the activation (and `k`,
  `apply_b_dec_to_input`) in its metadata, JumpReLU where it holds a threshold;
- a `.npz` file with the same array names; `activation` and `k` as arrays of one value.

Anything else (a missing tensor, shapes that do not fit the layer's C channels, an unknown
activation, top-k without k, values that are not finite) is an `SaeError` before any work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atlas.core.errors import AtlasError
from atlas.models import LoadedModel
from atlas.plan.layer_names import DICTIONARY_MARK, base_layer
from atlas.plan.spec import LayerSpec

ACTIVATIONS = ("relu", "jumprelu", "topk")
# SAELens's names for an architecture or activation function -> ours
_ALIASES = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}
WEIGHTS_FILE, CONFIG_FILE = "sae_weights.safetensors", "cfg.json"


class SaeError(AtlasError, ValueError):
    """An SAE file or folder that cannot be read as an encoder of its layer."""


@dataclass(frozen=True)
class Sae:
    layer: str
    w_enc: np.ndarray  # (C, K)
    b_enc: np.ndarray  # (K,)
    w_dec: np.ndarray  # (K, C)
    b_dec: np.ndarray  # (C,)
    activation: str  # relu | jumprelu | topk
    k: int = 0  # topk only
    threshold: np.ndarray | None = None  # jumprelu only, (K,)
    apply_b_dec_to_input: bool = False
    stem: str = "sae"
    rescale_by_decoder_norm: bool = False  # topk only: pre-activations times each decoder row's norm
    objective: str = "encoder"  # "decoder": a unit is the projection onto its decoder row instead

    @property
    def features(self) -> int:
        return self.w_enc.shape[1]

    @property
    def layer_name(self) -> str:
        """`<layer>@<stem>:<hash>`: the hash puts every tensor and setting into the content keys."""
        digest = hashlib.sha256()
        for array in (self.w_enc, self.b_enc, self.w_dec, self.b_dec, self.threshold):
            digest.update(b"-" if array is None else array.tobytes())
        digest.update(f"{self.activation}|{self.k}|{self.apply_b_dec_to_input}".encode())
        if self.rescale_by_decoder_norm:  # only then: the names of SAEs without it stay as they were
            digest.update(b"|rescale")
        if self.objective != "encoder":  # encoder layers keep the names (and content keys) they had
            digest.update(f"|{self.objective}".encode())
        return f"{self.layer}{DICTIONARY_MARK}{self.stem}:{digest.hexdigest()[:8]}"


class SaeEncoder(nn.Module):
    """Channel i of the output is SAE feature i's activation at each position of a (B, C, ...) map;
    with the "decoder" objective, the projection of each position's vector onto decoder row i."""

    def __init__(self, sae: Sae):
        super().__init__()
        self.activation, self.k, self.shift = sae.activation, sae.k, sae.apply_b_dec_to_input
        self.rescale = sae.rescale_by_decoder_norm
        self.objective = sae.objective
        self.register_buffer("w_enc", torch.from_numpy(sae.w_enc))
        self.register_buffer("b_enc", torch.from_numpy(sae.b_enc))
        self.register_buffer("b_dec", torch.from_numpy(sae.b_dec))
        self.register_buffer("w_dec", torch.from_numpy(sae.w_dec))  # what a feature writes back
        threshold = sae.threshold if sae.threshold is not None else np.zeros(0, np.float32)
        self.register_buffer("threshold", torch.from_numpy(threshold))

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        x = acts.float().movedim(1, -1)  # (B, ..., C)
        if self.objective == "decoder":
            return (x @ self.w_dec.T).movedim(-1, 1)
        if self.shift:
            x = x - self.b_dec
        pre = x @ self.w_enc + self.b_enc
        if self.rescale:
            pre = pre * self.w_dec.norm(dim=1)
        if self.activation == "jumprelu":
            features = torch.relu(pre) * (pre > self.threshold)
        elif self.activation == "topk":
            top = pre.topk(min(self.k, pre.shape[-1]), dim=-1)
            features = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        else:
            features = torch.relu(pre)
        return features.movedim(-1, 1)


def _tensors_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())  # a handle, not a dict: keys() is its listing
            tensors = {name: handle.get_tensor(name).float().numpy() for name in names}
            return tensors, dict(handle.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise SaeError(
            f"SAE {path} is not a readable safetensors file ({' '.join(str(err).split())})"
        ) from err


def _tensors_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        with np.load(path, allow_pickle=False) as held:
            arrays = {key: held[key] for key in held.files}
    except (ValueError, OSError, EOFError) as err:
        raise SaeError(
            f"SAE {path} is not a readable .npz of numbers ({' '.join(str(err).split())})"
        ) from err
    settings = {key: str(arrays.pop(key).reshape(-1)[0]) for key in ("activation", "k") if key in arrays}
    numbers = {}
    for key, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise SaeError(f"SAE {path}: {key} holds {array.dtype} values; the tensors must be numbers")
        numbers[key] = array
    return numbers, settings


def _settings_of_folder(folder: Path) -> dict[str, str]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise SaeError(f"SAE folder {folder}: {CONFIG_FILE} is not readable JSON ({err})") from err
    if not isinstance(config, dict):
        raise SaeError(f"SAE folder {folder}: {CONFIG_FILE} must hold a JSON object")
    activation = (
        config.get("architecture") or config.get("activation_fn") or config.get("activation_fn_str") or "relu"
    )
    kwargs = config.get("activation_fn_kwargs") or {}
    settings = {
        "activation": str(activation),
        "apply_b_dec_to_input": str(config.get("apply_b_dec_to_input", False)),
    }
    for name in ("normalize_activations", "reshape_activations"):
        if config.get(name) not in (None, "none"):
            raise SaeError(
                f"SAE folder {folder}: {CONFIG_FILE} sets {name} = {config[name]!r}; the atlas feeds "
                f'the layer\'s raw activations, so save the SAE with {name} = "none" (fold the '
                "normalization into W_enc and b_enc)"
            )
    if config.get("rescale_acts_by_decoder_norm"):
        settings["rescale_acts_by_decoder_norm"] = "True"
    k = config.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if k is not None:
        settings["k"] = str(k)
    for name in ("d_in", "d_sae"):
        if name in config:
            settings[name] = str(config[name])
    return settings


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
            raise SaeError(
                f"SAE folder {path} needs {CONFIG_FILE} and {WEIGHTS_FILE} (SAELens's layout); "
                "or give a .safetensors or .npz file"
            )
        tensors, _ = _tensors_safetensors(path / WEIGHTS_FILE)
        return tensors, _settings_of_folder(path), path.name
    if path.suffix == ".safetensors":
        return (*_tensors_safetensors(path), path.stem)
    if path.suffix == ".npz":
        return (*_tensors_npz(path), path.stem)
    raise SaeError(
        f"SAE {path}: give SAELens's folder (cfg.json + {WEIGHTS_FILE}), a .safetensors or a .npz file"
    )


def _checked(path: Path, tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
        raise SaeError(f"SAE {path} has no tensor {name!r}; it needs W_enc, b_enc, W_dec and b_dec")
    array = np.asarray(tensors[name])
    if array.shape != shape:
        raise SaeError(
            f"SAE {path}: {name} has shape {list(array.shape)}, the layer needs {list(shape)} "
            "(W_enc is (C, K) and W_dec (K, C), as SAELens stores them)"
        )
    with np.errstate(over="ignore"):
        values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise SaeError(f"SAE {path}: {name} holds NaN, infinite or out-of-range values")
    return values


def load_sae(path: Path | str, layer: str, channels: int | None) -> Sae:
    """Read and check an SAE of `layer` (which has `channels` channels: C; None takes C from W_enc)."""
    path = Path(path)
    if not path.exists():
        raise SaeError(f"SAE {path} does not exist; check the path in the job spec")
    tensors, settings, stem = _read(path)
    if "W_enc" not in tensors or np.ndim(tensors["W_enc"]) != 2:
        raise SaeError(f"SAE {path} needs a 2-D W_enc tensor (C, K) beside b_enc, W_dec and b_dec")
    channels = int(np.shape(tensors["W_enc"])[0]) if channels is None else channels
    count = int(np.shape(tensors["W_enc"])[1])
    for name, expected in (("d_in", channels), ("d_sae", count)):
        if name in settings and settings[name] != str(expected):
            raise SaeError(
                f"SAE {path}: its config says {name} = {settings[name]}, the weights and layer give {expected}"
            )
    w_enc = _checked(path, tensors, "W_enc", (channels, count))
    b_enc = _checked(path, tensors, "b_enc", (count,))
    w_dec = _checked(path, tensors, "W_dec", (count, channels))
    b_dec = _checked(path, tensors, "b_dec", (channels,))
    activation = settings.get("activation")
    if activation is None:
        activation = "jumprelu" if "threshold" in tensors or "log_threshold" in tensors else "relu"
    if activation not in _ALIASES:
        raise SaeError(f"SAE {path}: activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    activation = _ALIASES[activation]
    threshold, k = None, 0
    if activation == "jumprelu":
        if "threshold" in tensors:
            threshold = _checked(path, tensors, "threshold", (count,))
        elif "log_threshold" in tensors:
            threshold = np.exp(_checked(path, tensors, "log_threshold", (count,))).astype(np.float32)
        else:
            raise SaeError(
                f"SAE {path}: a jumprelu SAE needs a threshold (or log_threshold) tensor of {count}"
            )
    if activation == "topk":
        try:
            k = int(settings.get("k", ""))
        except ValueError:
            k = 0
        if not 1 <= k <= count:
            raise SaeError(
                f"SAE {path}: a topk SAE needs k between 1 and {count} (in cfg.json or the metadata)"
            )
    shift = settings.get("apply_b_dec_to_input", "False").lower() in ("true", "1")
    rescale = settings.get("rescale_acts_by_decoder_norm", "False").lower() in ("true", "1")
    if rescale and activation != "topk":
        raise SaeError(
            f"SAE {path}: rescale_acts_by_decoder_norm is read for topk SAEs only, not {activation}"
        )
    return Sae(layer, w_enc, b_enc, w_dec, b_dec, activation, k, threshold, shift, stem, rescale)


def sae_digest(path: Path | str) -> str:
    """A digest of an SAE's bytes (a folder: cfg.json and the weights), for content keys."""
    path = Path(path)
    digest = hashlib.sha256()
    for part in [path / CONFIG_FILE, path / WEIGHTS_FILE] if path.is_dir() else [path]:
        with part.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def layer_sae(model: LoadedModel, layer: LayerSpec) -> Sae:
    """The SAE of a `[[layers]]` entry, checked against its base layer's channels (its C)."""
    base = model.resolve_layer(base_layer(layer.name))
    if base not in {info.name for info in model.layers()}:
        raise SaeError(
            f"layer {layer.name!r} has no map or tokens to encode: an SAE stands on a layer that "
            f"`atlas layers {model.name}` lists (not logits or a class token)"
        )
    if layer.sae_compare is not None:  # checked now, before any work; matched by a stability unit
        load_sae(layer.sae_compare, base, model.channels(base))
    return replace(load_sae(layer.sae, base, model.channels(base)), objective=layer.sae_objective)


def attach_sae(model: LoadedModel, sae: Sae) -> str:
    """Make the SAE a layer of `model` (one channel per feature); returns its name."""
    name = sae.layer_name
    if name not in {info.name for info in model.layers()}:
        model.add_derived_layer(name, sae.layer, SaeEncoder(sae))
    return name
