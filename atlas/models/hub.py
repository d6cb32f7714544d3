"""Hugging Face hub access for timm and open_clip weights: the local cache only, never the net.

Workers on a cluster must not each download gigabytes (or hang retrying on a machine without
network); the cache is filled once, by hand, with the command the error message prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def local_cache_only() -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE at import, so its module constant is what to switch."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
