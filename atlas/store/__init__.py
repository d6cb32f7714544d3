"""The store: where units' results live (a local folder or a bucket), its journal, its lease and
the output-folder rules. No torch, no Ray."""

from atlas.store.store import Store, open_store

__all__ = ["Store", "open_store"]
