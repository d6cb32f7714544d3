"""Where a layer keeps its channels and positions, found once from the loaded model.

Three layouts occur in vision models: convolutional maps (B, C, H, W); token sequences
(B, N, C) of a ViT, whose first ``prefix`` tokens are class/register tokens and the rest a
square grid of patches; and Swin's channels-last maps (B, H, W, C). ``Layout.to_map`` turns every
one of them into a (B, C, H, W) view, so objectives, scans and the site keep one convention:
a channel of a token layer is a feature dimension and its positions are the patches. The class
token of a token layer is its own 1 x 1 map, named ``<layer>@cls``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

MAP = "map"
TOKENS = "tokens"
CHANNELS_LAST = "channels_last"
CLS_SUFFIX = "@cls"
MAX_PREFIX = 16  # class + register tokens; larger remainders are not a patch grid

ATTENTION = "attention"
MLP = "mlp"
BLOCK = "block"


@dataclass(frozen=True)
class Layout:
    """How one layer's output is laid out; ``grid`` is the (height, width) of its positions."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0  # class/register tokens before the patches (tokens only)

    def to_map(self, out: torch.Tensor) -> torch.Tensor:
        """The (B, C, H, W) view of an output in this layout (no copy)."""
        if self.kind == TOKENS:
            patches = out[:, self.prefix :, :]
            return patches.transpose(1, 2).unflatten(2, self.grid)
        if self.kind == CHANNELS_LAST:
            return out.permute(0, 3, 1, 2)
        return out

    def cls_map(self, out: torch.Tensor) -> torch.Tensor:
        """The first (class) token as a (B, C, 1, 1) map."""
        return out[:, :1, :].transpose(1, 2)[..., None]

    def describe(self) -> str:
        """How `atlas layers` prints the layout."""
        height, width = self.grid
        if self.kind == TOKENS:
            extra = f"{self.prefix} cls/reg + " if self.prefix else ""
            return f"tokens (B,N,C): {extra}{height}x{width} patches"
        if self.kind == CHANNELS_LAST:
            return f"{height}x{width} (B,H,W,C)"
        return f"{height}x{width}"


def find_layout(shape: tuple[int, ...], prefix_hint: int | None = None) -> Layout | None:
    """The layout of a batch-of-one output ``shape`` at a square input, or None if it is neither.

    4-d outputs are maps when dims 2 and 3 agree (the input is square), channels-last (a Swin
    stage) when dims 1 and 2 do, and neither otherwise (e.g. MaxViT's window partitions). 3-d outputs are tokens when N is ``prefix_hint`` (the model's own count of class and
    register tokens) plus a square, or else a square plus at most MAX_PREFIX tokens.
    """
    if not shape or shape[0] != 1:  # e.g. windows folded into the batch dimension
        return None
    if len(shape) == 4:
        if shape[2] == shape[3]:
            return Layout(MAP, (shape[2], shape[3]))
        if shape[1] == shape[2]:
            return Layout(CHANNELS_LAST, (shape[1], shape[2]))
        return None
    if len(shape) == 3:
        count = shape[1]
        candidates = [prefix_hint] if prefix_hint is not None else []
        candidates.append(count - math.isqrt(count) ** 2)
        for prefix in candidates:
            side = math.isqrt(max(count - prefix, 0))
            if 0 <= prefix <= MAX_PREFIX and side > 0 and side * side == count - prefix:
                return Layout(TOKENS, (side, side), prefix)
    return None


def prefix_tokens(module: nn.Module) -> int | None:
    """The model's own count of class/register tokens where it says (timm, torchvision, open_clip)."""
    count = getattr(module, "num_prefix_tokens", None)
    if isinstance(count, int):
        return count
    if hasattr(module, "class_token") or hasattr(module, "class_embedding"):
        return 1
    return None


def unwrap(out: object, module: nn.Module) -> object:
    """nn.MultiheadAttention returns (output, weights): its layer output is the first."""
    if isinstance(module, nn.MultiheadAttention) and isinstance(out, tuple):
        return out[0]
    return out


def role(name: str, module: nn.Module) -> str:
    """``attention``, ``mlp`` (the hidden units after a block MLP's activation), ``block`` or ''."""
    kind = type(module).__name__.lower()
    if any("attention" in type(child).__name__.lower() for child in module.children()):
        return BLOCK
    if "attention" in kind:
        return ATTENTION
    last = name.rsplit(".", 1)[-1].lower()
    in_mlp = any(part in name.lower() for part in ("mlp", "ffn"))
    is_activation = module.__class__.__module__ == "torch.nn.modules.activation" or any(
        word in kind for word in ("gelu", "swish", "silu")
    )
    if in_mlp and (is_activation or last in ("act", "gelu")):
        return MLP
    return ""
