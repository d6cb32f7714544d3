"""A loaded model with layer discovery and a forward pass truncated at the deepest needed layer."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atlas.core.errors import AtlasError
from atlas.models.fold import Folded, fold_batchnorm
from atlas.models.layout import CLS_SUFFIX, MAP, TOKENS, Layout, find_layout, prefix_tokens, role, unwrap
from atlas.models.registry import ModelError, Preprocessing, build, importable, is_registry_name

LOGITS = "logits"
log = logging.getLogger(__name__)


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
    """Raised by a hook once every requested layer has been seen, to skip the rest of the net
    (the fallback for models ``torch.fx`` cannot trace; see ``LoadedModel.truncated``)."""


# A traced sub-network must give the hook path's activations on a probe before it is used.
_TRACE_RTOL = 1e-4
_TRACE_ATOL = 1e-5


@dataclass
class LoadedModel:
    name: str
    module: nn.Module
    preprocessing: Preprocessing
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    folded: Folded = field(default_factory=Folded, repr=False)
    # False: every forward stops by raising from a hook (what ran before sub-networks were traced).
    trace: bool = True
    # An execution setting, never part of a content key: the torch.compile backend that traced
    # sub-networks run through in optimization steps ("inductor"; "aot_eager" traces without
    # generating code), or "" for none. Blocks are compiled one by one where they can be
    # (``_regional``), once per worker whatever the layer sets; else one graph per layer set.
    compile: str = ""
    # Layer set -> seconds of its compiled sub-network's first forward call (the one-time
    # compilation of the forward; the backward's happens in the first backward).
    compile_seconds: dict[frozenset[str], float] = field(default_factory=dict, repr=False)
    # The input the job's spec stated where the model's own declaration was not used: part of the
    # digest, so a changed size or normalization recomputes what it changes (None: as declared).
    stated: dict[str, object] | None = None
    # Derived layer -> (its source layer, the source's layout, the module applied to its map).
    _derived: dict[str, tuple[str, Layout, nn.Module]] = field(default_factory=dict, repr=False)
    # (id of the module, modules read) -> the traced sub-network, or None where tracing failed.
    # (its compiled form: the key ends in the compile backend).
    _subnets: dict[tuple, nn.Module | None] = field(default_factory=dict, repr=False)

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """One name per logit, where the model's source knows them (see Preprocessing)."""
        return self.preprocessing.class_names

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
        if self.stated:  # only then: models used as declared keep the keys they always had
            h.update(json.dumps(self.stated, sort_keys=True, default=list).encode())
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
            with torch.no_grad(), self._derive_hooks(self._derived):
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
        self._derived[name] = (source, self.layout(source), module)
        self._modules[name] = module
        for found in ("_layer_infos", "_info_by_name"):  # found again, now with the new layer
            self.__dict__.pop(found, None)
        self._subnets.clear()

    def derived(self, name: str) -> nn.Module | None:
        """The module of a derived layer (a dictionary's projection, an SAE's encoder), else None."""
        found = self._derived.get(name)
        return found[2] if found else None

    def _derive(self, name: str, source_out: torch.Tensor) -> torch.Tensor:
        """The derived layer ``name`` from its source's raw output."""
        source, layout, module = self._derived[name]
        return module(layout.to_map(self.folded.restore(source, source_out)))

    @contextlib.contextmanager
    def _derive_hooks(self, names: object) -> Iterator[None]:
        """While open, the derived layers ``names`` run inside the forward pass, after their
        sources, so that hooks on them see their outputs (the probe and the hook path)."""
        handles = []
        for name in names:  # type: ignore[attr-defined]
            source = self._derived[name][0]

            def derive(mod: nn.Module, _inputs: object, out: object, name: str = name) -> None:
                self._derive(name, unwrap(out, mod))  # returns None: the source's output stays

            handles.append(self._modules[source].register_forward_hook(derive))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

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
                f"({self.listing} for the layers it has)"
            )
        return self._info_by_name[name].shape

    @property
    def listing(self) -> str:
        """How a user lists this model's layers: the CLI for a registry name, else the notebook."""
        return (
            f"run `atlas layers {self.name}`" if is_registry_name(self.name) else "run `atlas.layers(model)`"
        )

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
        raise UnknownLayerError(f"model {self.name!r} has no layer {name!r}{hint} ({self.listing} for all)")

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
        if self.fixed_size and x01.shape[-1] != self.input_size:
            x01 = F.interpolate(
                x01, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        x = self.normalize(x01)
        if self.device.type == "cuda":  # the weights are channels_last (freeze); cuDNN wants both
            x = x.contiguous(memory_format=torch.channels_last)
        subnet = self.truncated(wanted) if self.trace and LOGITS not in wanted else None
        if subnet is None:
            return self._hooked(x, wanted)
        if self.compile and torch.is_grad_enabled() and x.requires_grad:
            # Only optimization steps: measurements and scans (no gradient) take other shapes,
            # each of which would cost a compilation.
            return self._views(wanted, self._compiled(self._sources(wanted), subnet, x))
        return self._views(wanted, subnet(x))

    def _compiled(self, sources: frozenset[str], subnet: nn.Module, x: torch.Tensor) -> dict[str, object]:
        """The sub-network's outputs through torch.compile; the first call per layer set is the
        compilation, timed into ``compile_seconds`` and logged (it is paid once per worker)."""
        key = (id(self.module), sources, self.compile)
        compiled = self._subnets.get(key)
        if compiled is None:
            compiled = self._regional(sources) or torch.compile(subnet, backend=self.compile)
            self._subnets[key] = compiled
        if sources in self.compile_seconds:
            return compiled(x)
        start = time.perf_counter()
        out = compiled(x)
        self.compile_seconds[sources] = seconds = time.perf_counter() - start
        log.warning(
            "compiled %s (%s) up to %s in %.1f s, forward (the backward compiles at its first step; "
            "once per worker and layer set)",
            self.name,
            self.compile,
            ", ".join(sorted(sources)),
            seconds,
        )
        return out

    def _regional(self, sources: frozenset[str]) -> nn.Module | None:
        """A sub-network whose blocks (every module of a requested module's own class, e.g.
        GoogLeNet's Inception blocks) stay whole and run compiled, one compilation per block
        shared by every layer set: nine truncation depths cost what one does. None where a
        requested module is a torch.nn built-in or the blocks cannot stay whole."""
        kinds = {type(self._modules[name]) for name in sources}
        if any(kind.__module__.startswith("torch.") for kind in kinds):
            return None
        subnet = self._trace(sources, self._views_of(sources), leaves=tuple(kinds))
        if subnet is None:
            return None
        for node in subnet.graph.nodes:
            if node.op == "call_module" and type(subnet.get_submodule(node.target)) in kinds:
                parent, _, child = node.target.rpartition(".")
                setattr(subnet.get_submodule(parent) if parent else subnet, child, self._region(node.target))
        return subnet

    def _region(self, name: str) -> nn.Module:
        """Module ``name`` through torch.compile, made once and shared by every layer set."""
        key = (id(self.module), name, self.compile, "region")
        if key not in self._subnets:
            self._subnets[key] = torch.compile(self._modules[name], backend=self.compile)
        return self._subnets[key]  # type: ignore[return-value]

    def _views_of(self, sources: frozenset[str]) -> set[str]:
        """The plain views of ``sources`` (what a check of their sub-network compares)."""
        return {name for name in sources if name in self._info_by_name}

    def _sources(self, wanted: set[str]) -> frozenset[str]:
        """The modules whose raw outputs give the views ``wanted`` (derived layers: their sources)."""
        modules = {name.removesuffix(CLS_SUFFIX) for name in wanted}
        return frozenset(self._derived[m][0] if m in self._derived else m for m in modules)

    def _view(self, view: str, raw: object) -> torch.Tensor:
        """A requested layer's (B, C, H, W) map from its module's raw output."""
        module_name = view.removesuffix(CLS_SUFFIX)
        out = self.folded.restore(module_name, unwrap(raw, self._modules[module_name]))
        if module_name not in self._info_by_name:
            return out
        layout = self._info_by_name[module_name].shape
        return layout.cls_map(out) if view.endswith(CLS_SUFFIX) else layout.to_map(out)

    def _views(self, wanted: set[str], raw: dict[str, object]) -> dict[str, torch.Tensor]:
        """Every view ``wanted`` from the raw outputs of its source modules (a traced sub-network's)."""
        views = {}
        for view in wanted:
            module_name = view.removesuffix(CLS_SUFFIX)
            if module_name in self._derived:
                source = self._derived[module_name][0]
                views[view] = self._view(
                    view, self._derive(module_name, unwrap(raw[source], self._modules[source]))
                )
            else:
                views[view] = self._view(view, raw[module_name])
        return views

    def truncated(self, wanted: set[str] | frozenset[str]) -> nn.Module | None:
        """The model cut after the deepest module that ``wanted`` reads, as a traced graph
        (``torch.fx`` through torchvision's feature extraction) that returns those modules' raw
        outputs by name: nothing after them runs, and it has no hooks, so ``torch.compile`` can
        trace it whole. Built once per set of modules and checked against the hook path on a
        probe; None (the hook path is used) where the model cannot be traced or disagrees.
        """
        sources = self._sources(set(wanted))
        key = (id(self.module), sources)
        if key not in self._subnets:
            self._subnets[key] = self._trace(sources, set(wanted))
        return self._subnets[key]

    def _trace(
        self, sources: frozenset[str], wanted: set[str], leaves: tuple[type, ...] = ()
    ) -> nn.Module | None:
        """The traced sub-network returning ``sources`` (modules of the classes ``leaves`` kept
        whole), or None where fx cannot trace it or it disagrees with the hook path on a probe."""
        from torchvision.models.feature_extraction import create_feature_extractor

        try:
            subnet = create_feature_extractor(
                self.module,
                return_nodes={name: name for name in sources},
                tracer_kwargs={"leaf_modules": list(leaves)} if leaves else None,
                suppress_diff_warning=True,
            )
        except Exception:  # noqa: BLE001 - fx cannot trace this model: the hook path serves it
            return None
        size = self.input_size
        probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            probe = self.normalize(probe)
            try:
                traced = self._views(wanted, subnet(probe))
            except Exception:  # noqa: BLE001 - e.g. a module called twice returns another call's output
                return None
            hooked = self._hooked(probe, wanted)
        for view, expected in hooked.items():
            got = traced.get(view)
            if got is None or got.shape != expected.shape:
                return None
            scale = float(expected.abs().max()) or 1.0
            if not torch.allclose(got, expected, rtol=_TRACE_RTOL, atol=_TRACE_ATOL * scale):
                return None
        return subnet

    def _hooked(self, x: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        """The activations of normalized input ``x`` by forward hooks; the forward stops by raising
        once every requested layer has been seen (works for every model, but cannot be compiled)."""
        captured: dict[str, torch.Tensor] = {}
        handles = []
        needs_logits = LOGITS in wanted
        # The hooks read the layers' layouts; finding them runs a probe forward, which must not
        # run into this call's hooks (it recursed until Python's limit on a model not yet probed).
        self._layer_infos  # noqa: B018 (cached: computed here, before the hooks are in place)
        by_module: dict[str, list[str]] = {}
        for name in wanted - {LOGITS}:
            by_module.setdefault(name.removesuffix(CLS_SUFFIX), []).append(name)
        for module_name, views in by_module.items():

            def hook(mod, _i, out, views=views):
                for view in views:
                    captured[view] = self._view(view, out)
                if not needs_logits and len(captured) == len(wanted):
                    raise _StopForward

            handles.append(self._modules[module_name].register_forward_hook(hook))
        derived = [name for name in by_module if name in self._derived]
        try:
            with self._derive_hooks(derived):
                out = self.module(x)
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
    search: str | Path | None = None,
    stated: dict[str, object] | None = None,
) -> LoadedModel:
    """Build, load and freeze a model from the registry for inference and input optimization.

    A `module:` model is imported from `search` (a spec's `model.path`: by default the spec's
    folder), then the working directory, then the installed packages. `stated` (a spec's
    `ModelSpec.input_overrides()`: input_size, mean, std of [0, 1] RGB) replaces what the model
    declares of its input."""
    with importable(search):
        module, preprocessing = build(name, weights, Path(checkpoint) if checkpoint else None)
    changed = {k: v for k, v in (stated or {}).items() if getattr(preprocessing, k) != v}
    if changed:
        preprocessing = replace(preprocessing, **changed)  # type: ignore[arg-type]
    try:
        return freeze(name, module, preprocessing, device, fold, stated=changed or None)
    except ModelError:
        raise
    except (AssertionError, RuntimeError, ValueError) as err:  # the model refuses the probe input
        side = preprocessing.input_size
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ModelError(
            f"{name} fails on a {side}x{side} input ({reason}); if it takes another side or "
            "normalization, state it: [model] input_size = N (a module: model may declare `input_size`)"
        ) from err


def freeze(
    name: str,
    module: nn.Module,
    preprocessing: Preprocessing,
    device: str | torch.device = "cpu",
    fold: bool = True,
    stated: dict[str, object] | None = None,
) -> LoadedModel:
    """eval(), no parameter gradients, BatchNorm folded (``fold``), channels_last on ``device``.

    ``module`` is changed in place (eval, requires_grad); pass a copy to keep the original. The
    digest hashes the weights as loaded, before folding, so folding changes no content key.
    """
    module = module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    loaded = LoadedModel(name=name, module=module, preprocessing=preprocessing, stated=stated)
    if fold:
        _ = loaded.digest  # cached now, from the unfolded weights
        loaded.module, loaded.folded = fold_batchnorm(module, preprocessing.input_size)
    loaded.device = torch.device(device)
    # channels_last: depthwise and 1x1 convolutions run ~20% faster per render step on CPU
    # (EfficientNet-Lite0, scripts/bench.py overhead figures); cuDNN prefers it too.
    loaded.module = loaded.module.to(loaded.device, memory_format=torch.channels_last)
    loaded.folded = loaded.folded.to(loaded.device)
    loaded.layers()  # layouts are found once, now, by one probe pass before anyone hooks the model
    if preprocessing.class_names is not None:
        check_class_names(loaded)
    return loaded


def check_class_names(model: LoadedModel) -> None:
    """Raise ModelError unless the model's output is (batch, classes) with one name per class."""
    names = model.class_names or ()
    side = model.input_size
    with torch.no_grad():
        out = model.activations(torch.zeros(1, 3, side, side, device=model.device), [LOGITS])[LOGITS]
    classes = int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    if classes != len(names):
        what = f"{classes} classes" if classes is not None else "no (batch, classes) output"
        raise ModelError(
            f"{model.name} declares {len(names)} class_names but its output has {what}; declare one "
            "string per output class (class_names[i] names logit i) or drop class_names"
        )


def pick_device(prefer: str = "auto") -> torch.device:
    """CUDA when present (or asked for), CPU otherwise."""
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(prefer)
