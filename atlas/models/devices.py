"""Host-to-device copies that do not stop the host.

A plain `tensor.to(cuda)` from host memory waits until the GPU has drained its queue (PyTorch
synchronises the stream after a blocking copy), so one small index tensor moved per step stalls
every step of a render. Made non-blocking, the copy is queued behind the work already there.
Host memory that is not pinned is staged by CUDA before the call returns, so the source may
be freed at once. Copies from the device to the host stay blocking: they are rare and final.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`tensor` on `device` (and in `dtype`), queued without waiting for the device."""
    return tensor.to(device=device, dtype=dtype, non_blocking=True)
