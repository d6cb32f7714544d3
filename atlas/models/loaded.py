"""A loaded model with layer discovery and a forward pass truncated at the deepest needed layer."""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.models.fold import Folded, fold_batchnorm
from atlas.models.registry import Preprocessing, build

LOGITS = "logits"


class UnknownLayerError(AtlasError, KeyError):
    """A layer name that the model does not have; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@dataclass(frozen=True)
class LayerInfo:
    name: str
    channels: int
    height: int
    width: int


class _StopForward(Exception):
    """Raised by a hook once every requested layer has been seen, to skip the rest of the net."""


@dataclass
class LoadedModel:
    name: str
    module: nn.Module
    preprocessing: Preprocessing
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    folded: Folded = field(default_factory=Folded, repr=False)

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @cached_property
    def digest(self) -> str:
        """sha256 over the weights, so a changed checkpoint changes every content key."""
        h = hashlib.sha256(self.name.encode())
        for key, tensor in sorted(self.module.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @cached_property
    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Made outside inference mode: cached here, they must also serve later autograd passes.
        with torch.inference_mode(False):
            mean = torch.tensor(self.preprocessing.mean, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(self.preprocessing.std, device=self.device).view(1, 3, 1, 1)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        mean, std = self._mean_std
        return (x01 - mean.to(x01.dtype)) / std.to(x01.dtype)

    @cached_property
    def _modules(self) -> dict[str, nn.Module]:
        return {name: mod for name, mod in self.module.named_modules() if name}

    @cached_property
    def _layer_infos(self) -> list[LayerInfo]:
        shapes: dict[str, tuple[int, ...]] = {}
        handles = []
        for name, mod in self._modules.items():

            def hook(_m, _i, out, name=name):
                if isinstance(out, torch.Tensor) and name not in shapes:
                    shapes[name] = tuple(out.shape)

            handles.append(mod.register_forward_hook(hook))
        try:
            with torch.no_grad():
                size = self.input_size
                self.module(torch.zeros(1, 3, size, size, device=self.device))
        finally:
            for handle in handles:
                handle.remove()
        return [
            LayerInfo(name, shape[1], shape[2], shape[3]) for name, shape in shapes.items() if len(shape) == 4
        ]

    def add_derived_layer(self, name: str, source: str, module: nn.Module) -> None:
        """A layer whose output is `module` applied to layer `source`'s output (as `activations` reads it).

        It runs inside the forward pass, so renders, scans and receptive fields treat it like any
        layer (a dictionary of directions becomes a layer with one channel per direction).
        """
        source = self.resolve_layer(source)
        if name in self._modules:
            raise UnknownLayerError(f"model {self.name!r} already has a layer {name!r}; choose another name")
        module = module.to(self.device)
        self._modules[name] = module
        self._modules[source].register_forward_hook(
            lambda _m, _i, out: module(self.folded.restore(source, out))
        )
        self.__dict__.pop("_layer_infos", None)  # found again, now with the new layer

    def layers(self) -> list[LayerInfo]:
        """Every module whose output is a (B, C, H, W) map, in forward order, at input_size."""
        return list(self._layer_infos)

    def resolve_layer(self, name: str) -> str:
        if name == LOGITS or name in self._modules:
            return name
        known = [info.name for info in self._layer_infos]
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
        if not close:
            close = [n for n in known if name.lower() in n.lower()][:5]
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise UnknownLayerError(
            f"model {self.name!r} has no layer {name!r}{hint} (run `atlas layers {self.name}` for all)"
        )

    def channels(self, name: str) -> int:
        name = self.resolve_layer(name)
        for info in self._layer_infos:
            if info.name == name:
                return info.channels
        if name == LOGITS:
            size = self.input_size
            with torch.no_grad():
                probe = torch.zeros(1, 3, size, size, device=self.device)
                return int(self.activations(probe, [LOGITS])[LOGITS].shape[1])
        raise UnknownLayerError(f"layer {name!r} of {self.name!r} does not output a (B, C, H, W) map")

    def activations(
        self, x01: torch.Tensor, layer_names: list[str] | tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """Outputs of the requested layers for [0, 1] RGB images; nothing after the deepest runs."""
        wanted = {self.resolve_layer(n) for n in layer_names}
        captured: dict[str, torch.Tensor] = {}
        handles = []
        needs_logits = LOGITS in wanted
        for name in wanted - {LOGITS}:

            def hook(_m, _i, out, name=name):
                captured[name] = self.folded.restore(name, out)
                if not needs_logits and len(captured) == len(wanted):
                    raise _StopForward

            handles.append(self._modules[name].register_forward_hook(hook))
        try:
            out = self.module(self.normalize(x01))
            if needs_logits:
                captured[LOGITS] = out
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return captured


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    weights: str = "default",
    device: str | torch.device = "cpu",
    fold: bool = True,
) -> LoadedModel:
    """Build, load and freeze a model from the registry for inference and input optimization."""
    module, preprocessing = build(name, weights, Path(checkpoint) if checkpoint else None)
    return freeze(name, module, preprocessing, device, fold)


def freeze(
    name: str,
    module: nn.Module,
    preprocessing: Preprocessing,
    device: str | torch.device = "cpu",
    fold: bool = True,
) -> LoadedModel:
    """eval(), no parameter gradients, BatchNorm folded (``fold``), channels_last on ``device``.

    ``module`` is changed in place (eval, requires_grad); pass a copy to keep the original. The
    digest hashes the weights as loaded, before folding, so folding changes no content key.
    """
    module = module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    loaded = LoadedModel(name=name, module=module, preprocessing=preprocessing)
    if fold:
        _ = loaded.digest  # cached now, from the unfolded weights
        loaded.module, loaded.folded = fold_batchnorm(module, preprocessing.input_size)
    loaded.device = torch.device(device)
    # channels_last: depthwise and 1x1 convolutions run ~20% faster per render step on CPU
    # (EfficientNet-Lite0, scripts/bench.py overhead figures); cuDNN prefers it too.
    loaded.module = loaded.module.to(loaded.device, memory_format=torch.channels_last)
    loaded.folded = loaded.folded.to(loaded.device)
    return loaded


def pick_device(prefer: str = "auto") -> torch.device:
    """CUDA when present (or asked for), CPU otherwise."""
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(prefer)
