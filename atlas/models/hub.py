"""Hugging Face hub access for timm and open_clip weights: the local cache only, never the net.

Workers on a cluster must not each download gigabytes (or hang retrying on a machine without
network); the cache is filled once, by hand, with the command the error message prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from atlas.models.registry import ModelError


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


def weights_not_cached(what: str, fill_command: str, err: Exception) -> ModelError:
    """The error for weights missing from the local cache: how to fill it, or do without them."""
    return ModelError(
        f"could not load {what} ({type(err).__name__}: {err}); this machine has no copy in the Hugging "
        f"Face cache and cannot download one. On a machine with network run `{fill_command}` and copy "
        f"~/.cache/huggingface here, or save the model's state_dict and pass it as model.checkpoint, "
        f'or use weights = "none"'
    )
