"""The store: where units' results live (a local folder or a bucket), its journal, its lease and
the output-folder rules. No torch, no Ray. `Store` and `open_store` are in atlas.store.store
(imported on first use here, so that reading a location does not load pyarrow)."""

from typing import Any

__all__ = ["Store", "open_store"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'atlas.store' has no attribute {name!r}")
    from atlas.store import store

    return getattr(store, name)
