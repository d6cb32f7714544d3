"""A loaded model with layer discovery and a forward pass truncated at the deepest needed layer."""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atlas.errors import AtlasError
from atlas.models.fold import Folded, fold_batchnorm
from atlas.models.layout import CLS_SUFFIX, MAP, TOKENS, Layout, find_layout, prefix_tokens, role, unwrap
from atlas.models.registry import ModelError, Preprocessing, build

LOGITS = "logits"


class UnknownLayerError(AtlasError, KeyError):
    """A layer name that the model does not have; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@dataclass(frozen=True)
class LayerInfo:
    """One layer at the model's input size; height x width is its grid of positions (patches)."""

    name: str
    channels: int
    height: int
    width: int
    layout: str = MAP  # map, tokens or channels_last (atlas.models.layout)
    prefix: int = 0  # class/register tokens ahead of the patches
    role: str = ""  # block, attention, mlp (hidden units after the activation) or ''

    @property
    def shape(self) -> Layout:
        return Layout(self.layout, (self.height, self.width), self.prefix)


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
    def fixed_size(self) -> bool:
        """The model takes only input_size: its source says so, or it has patch tokens (learned
        position embeddings), as a user's own ViT behind module:... does."""
        return self.preprocessing.fixed_size or any(info.layout == TOKENS for info in self._layer_infos)

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

            def hook(mod, _i, out, name=name):
                out = unwrap(out, mod)
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
        hint = prefix_tokens(self.module)
        infos = []
        for name, shape in shapes.items():
            layout = find_layout(shape, hint)
            if layout is not None:
                channels = shape[1] if layout.kind == MAP else shape[-1]
                height, width = layout.grid
                infos.append(
                    LayerInfo(
                        name,
                        channels,
                        height,
                        width,
                        layout.kind,
                        layout.prefix,
                        role(name, self._modules[name]),
                    )
                )
        return infos

    @cached_property
    def _info_by_name(self) -> dict[str, LayerInfo]:
        return {info.name: info for info in self._layer_infos}

    def add_derived_layer(self, name: str, source: str, module: nn.Module) -> None:
        """A layer whose output is `module` applied to layer `source`'s output as a (B, C, H, W) map.

        It runs inside the forward pass, so renders, scans and receptive fields treat it like any
        layer (a dictionary of directions becomes a layer with one channel per direction).
        """
        source = self.resolve_layer(source)
        if name in self._modules:
            raise UnknownLayerError(f"model {self.name!r} already has a layer {name!r}; choose another name")
        module = module.to(self.device)
        layout = self.layout(source)
        self._modules[name] = module

        def derive(mod: nn.Module, _inputs: object, out: object) -> None:
            """Runs `module` for its own hooks; returns None so the source's output stays as it was."""
            module(layout.to_map(self.folded.restore(source, unwrap(out, mod))))

        self._modules[source].register_forward_hook(derive)
        for found in ("_layer_infos", "_info_by_name"):  # found again, now with the new layer
            self.__dict__.pop(found, None)

    def layers(self) -> list[LayerInfo]:
        """Every module with a map, token or channels-last output, in forward order, at input_size."""
        return list(self._layer_infos)

    def layout(self, name: str) -> Layout:
        """How `name` lays out its output (class-token pseudo-layers are 1 x 1 maps)."""
        name = self.resolve_layer(name)
        if name == LOGITS or name.endswith(CLS_SUFFIX):
            return Layout(MAP, (1, 1))
        if name not in self._info_by_name:
            raise UnknownLayerError(
                f"layer {name!r} of {self.name!r} outputs neither a (B, C, H, W) map nor patch tokens "
                f"(run `atlas layers {self.name}` for the layers it has)"
            )
        return self._info_by_name[name].shape

    def resolve_layer(self, name: str) -> str:
        if name == LOGITS or name in self._modules:
            return name
        base = name.removesuffix(CLS_SUFFIX)
        if base != name and base in self._info_by_name:
            info = self._info_by_name[base]
            if info.layout == TOKENS and info.prefix > 0:
                return name
            raise UnknownLayerError(
                f"layer {base!r} of {self.name!r} has no class token, so {name!r} does not exist"
            )
        known = [info.name for info in self._layer_infos]
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
        if not close:
            close = [n for n in known if name.lower() in n.lower()][:5]
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise UnknownLayerError(
            f"model {self.name!r} has no layer {name!r}{hint} (run `atlas layers {self.name}` for all)"
        )

    def channels(self, name: str) -> int:
        """Channels of a map, feature dimensions of tokens, classes (or embedding size) of logits."""
        name = self.resolve_layer(name)
        if name == LOGITS:
            size = self.input_size
            with torch.no_grad():
                probe = torch.zeros(1, 3, size, size, device=self.device)
                return int(self.activations(probe, [LOGITS])[LOGITS].shape[1])
        self.layout(name)  # a module with neither a map nor tokens raises here, naming the problem
        return self._info_by_name[name.removesuffix(CLS_SUFFIX)].channels

    def check_input_size(self, side: int) -> None:
        """Fail before any work when a model with a fixed input cannot take ``side`` pixels."""
        if self.fixed_size and side != self.input_size:
            raise ModelError(
                f"model {self.name!r} takes only {self.input_size}x{self.input_size} inputs (its position "
                f"embeddings fix the size): render at that size (render.size = {self.input_size} in a job "
                f"spec, --size {self.input_size} for `atlas render`)"
            )

    def activations(
        self, x01: torch.Tensor, layer_names: list[str] | tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """Outputs of the requested layers for [0, 1] RGB images as (B, C, H, W) maps.

        Token and channels-last outputs come back as maps over their patch grid; ``<layer>@cls``
        is the class token as a 1 x 1 map. Nothing after the deepest requested layer runs. A
        fixed-size model gets its input resampled to its size (transforms change the side by a
        few pixels).
        """
        wanted = {self.resolve_layer(n) for n in layer_names}
        captured: dict[str, torch.Tensor] = {}
        handles = []
        needs_logits = LOGITS in wanted
        by_module: dict[str, list[str]] = {}
        for name in wanted - {LOGITS}:
            by_module.setdefault(name.removesuffix(CLS_SUFFIX), []).append(name)
        for module_name, views in by_module.items():
            layout = self._info_by_name[module_name].shape if module_name in self._info_by_name else None

            def hook(mod, _i, out, views=views, layout=layout, module_name=module_name):
                out = self.folded.restore(module_name, unwrap(out, mod))
                for view in views:
                    if layout is None:
                        captured[view] = out
                    elif view.endswith(CLS_SUFFIX):
                        captured[view] = layout.cls_map(out)
                    else:
                        captured[view] = layout.to_map(out)
                if not needs_logits and len(captured) == len(wanted):
                    raise _StopForward

            handles.append(self._modules[module_name].register_forward_hook(hook))
        if self.fixed_size and x01.shape[-1] != self.input_size:
            x01 = F.interpolate(
                x01, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
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
    loaded.layers()  # layouts are found once, now, by one probe pass before anyone hooks the model
    return loaded


def pick_device(prefer: str = "auto") -> torch.device:
    """CUDA when present (or asked for), CPU otherwise."""
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(prefer)
