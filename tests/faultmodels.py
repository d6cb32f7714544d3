"""Test-only models for the fault tests, loaded as `module:faultmodels:<callable>`.

They are importable in Ray worker processes because pytest puts tests/ on the driver's sys.path
and Ray gives workers the driver's sys.path (see test_faults.py, which checks it). Both are the
tiny CNN underneath, so they stay fast on two cores.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from atlas.models.registry import build

# The channel of layer `poisoned` whose activation is NaN.
POISONED_CHANNEL = 3
# Seconds each forward pass of `slow_cnn` sleeps; the environment variable lets a test slow it more.
SLOW_FORWARD_SECONDS = float(os.environ.get("ATLAS_TEST_SLOW_FORWARD", "0.05"))


class _Slow(nn.Module):
    """Identity that sleeps, so a unit runs long enough to kill its worker or driver mid-unit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLOW_FORWARD_SECONDS)
        return x


class _Poison(nn.Module):
    """Sets one channel to NaN: rendering that channel fails deterministically, the others work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[:, POISONED_CHANNEL] = float("nan")
        return out


def _tiny_with(name: str, extra: nn.Module) -> nn.Module:
    tiny, preprocessing = build("tiny-cnn", weights="none")
    module = nn.Sequential()
    for child_name, child in tiny.named_children():
        module.add_module(child_name, child)
        if child_name == "conv2":
            module.add_module(name, extra)
    module.input_size = preprocessing.input_size
    return module


def slow_cnn() -> nn.Module:
    """The tiny CNN with a sleeping layer `slow` after conv2."""
    return _tiny_with("slow", _Slow())


def poisoned_cnn() -> nn.Module:
    """The tiny CNN with a layer `poisoned` after conv2 whose channel POISONED_CHANNEL is NaN."""
    return _tiny_with("poisoned", _Poison())


class _Amplify(nn.Module):
    """Multiplies by 1e6: fine in float32, beyond float16's range (65504) under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e6


def overflow_cnn() -> nn.Module:
    """The tiny CNN with a layer `amplify` after conv2 that overflows in half precision."""
    return _tiny_with("amplify", _Amplify())
