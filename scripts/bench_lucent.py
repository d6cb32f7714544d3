"""torch-lucent 0.1.8 as the peer in the render benchmark, with the small shim it needs today.

Install it for the benchmark only, without letting pip touch torch:

    pip install --no-deps torch-lucent==0.1.8 && pip install kornia

The shim (nothing of lucent is vendored):
- lucent's ``random_rotate`` calls ``kornia.get_rotation_matrix2d`` and ``kornia.warp_affine``,
  which newer kornia only offers under ``kornia.geometry.transform``: the shim adds the two
  top-level aliases when they are missing;
- lucent picks its device once at import (``cuda:0`` when present): the shim points it at the
  device being benchmarked;
- ``render_vis`` leaves a forward hook on every module of the model when it returns; the shim
  removes them after each run, otherwise every repetition would run slower than the last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


class PeerMissing(RuntimeError):
    """torch-lucent or kornia is not installed; the message says how to install them."""


INSTALL_HINT = "pip install --no-deps torch-lucent==0.1.8 && pip install kornia"


def install_shim(device: torch.device) -> None:
    """Make lucent 0.1.8 run with the installed kornia on ``device``."""
    try:
        import kornia
        from kornia.geometry import transform as geometry
        from lucent.optvis import transform as lucent_transform
        from lucent.optvis.param import spatial as lucent_spatial
    except ImportError as err:
        raise PeerMissing(
            f"the render comparison needs torch-lucent and kornia ({err}); {INSTALL_HINT}"
        ) from err
    for name in ("get_rotation_matrix2d", "warp_affine"):
        if not hasattr(kornia, name):
            setattr(kornia, name, getattr(geometry, name))
    lucent_transform.device = device
    lucent_spatial.device = device


def lucent_layer_name(layer: str) -> str:
    """lucent names a module by joining the ``named_modules`` path with '_' instead of '.'."""
    return layer.replace(".", "_")


def _remove_forward_hooks(module: nn.Module) -> None:
    for submodule in module.modules():
        submodule._forward_hooks.clear()


def lucent_renderer(
    module: nn.Module,
    layer: str,
    channels: Sequence[int],
    size: int,
    steps: int,
    model_input_size: int | None,
    seed: int = 0,
) -> Callable[[], np.ndarray]:
    """A call that renders ``channels`` (one batch element each) the way a lucent user would.

    Fourier + decorrelated parameterization, Adam at lr 0.05, lucent's standard transforms and
    ImageNet normalization. ``model_input_size`` is lucent's ``fixed_image_size``: lucent
    resizes every transformed image to it (224 when None and the image is smaller).
    """
    from lucent.optvis import objectives, param, render, transform

    name = lucent_layer_name(layer)

    def run() -> np.ndarray:
        np.random.seed(seed)
        torch.manual_seed(seed)
        objective = objectives.channel(name, channels[0], batch=0)
        for element, channel in enumerate(channels[1:], start=1):
            objective = objective + objectives.channel(name, channel, batch=element)
        try:
            images = render.render_vis(
                module,
                objective,
                lambda: param.image(size, batch=len(channels)),
                transforms=list(transform.standard_transforms),
                thresholds=(steps,),
                progress=False,
                show_image=False,
                fixed_image_size=model_input_size,
            )
        finally:
            _remove_forward_hooks(module)
        return images[-1]

    return run
