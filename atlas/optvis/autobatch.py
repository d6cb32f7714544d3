"""How many images one optimization step may push through the model: the physical batch.

The job's ``render.batch`` is a logical batch: it decides which images are optimized together
(their seeds and diversity groups), so it is part of the content key. A GPU wants far larger
batches than that to be busy, so several logical batches share each step's forward and backward
pass (``atlas.optvis.render.render_parts``). How many fit is read from the free GPU memory and a
measured cost per image, capped; more room packs more of the same fixed-key chunks into a pass,
it never changes a chunk. On CPU a bigger batch buys nothing, so one chunk runs per pass.
"""

from __future__ import annotations

import torch

from atlas.models import LoadedModel

# Images per pass at most. On an H200 the compiled bf16 step of GoogLeNet to inception4d runs
# 31,516 image-steps/s at batch 256 and 37,553 at 1024 (../shared/gpu ceiling, 2026-12-04): a
# pass of several units' chunks (render_channel_sets) fills the larger batch.
DEFAULT_CAP = 1024
# Share of the free memory a pass may plan to use; the rest covers the transforms, the optimizer
# state, autocast copies and the estimate's error.
HEADROOM = 0.6

_BYTES_PER_IMAGE: dict[tuple[str, str, int], float] = {}


def capacity_from_memory(
    free_bytes: int, bytes_per_image: float, logical_batch: int, cap: int = DEFAULT_CAP
) -> int:
    """Images per pass: what ``HEADROOM`` of the free memory holds, capped, never below one chunk."""
    fits = int(free_bytes * HEADROOM // max(bytes_per_image, 1.0))
    return max(logical_batch, min(cap, fits))


def bytes_per_image(model: LoadedModel, size: int) -> float:
    """Peak CUDA memory of one forward + backward of the whole model per image at ``size`` px.

    The whole model bounds every truncated forward from above. Measured once per model, device
    and size with a batch of two.
    """
    key = (model.digest, str(model.device), size)
    if key not in _BYTES_PER_IMAGE:
        torch.cuda.synchronize(model.device)
        before = torch.cuda.memory_allocated(model.device)
        torch.cuda.reset_peak_memory_stats(model.device)
        probe = torch.rand(2, 3, size, size, device=model.device, requires_grad=True)
        out = model.module(model.normalize(probe))
        if isinstance(out, dict):
            out = list(out.values())
        first = out if isinstance(out, torch.Tensor) else next(t for t in out if isinstance(t, torch.Tensor))
        first.float().sum().backward()
        peak = torch.cuda.max_memory_allocated(model.device)
        _BYTES_PER_IMAGE[key] = (peak - before) / 2
    return _BYTES_PER_IMAGE[key]


def pass_capacity(
    model: LoadedModel,
    logical_batch: int,
    size: int,
    free_bytes: int | None = None,
    cap: int = DEFAULT_CAP,
) -> int:
    """Images per optimization pass on the model's device; ``free_bytes`` overrides the query."""
    if model.device.type != "cuda":
        return logical_batch
    free = free_bytes if free_bytes is not None else torch.cuda.mem_get_info(model.device)[0]
    # Leave room for the transform's margin (up to 10% more pixels a side).
    return capacity_from_memory(free, bytes_per_image(model, size + size // 5), logical_batch, cap)
