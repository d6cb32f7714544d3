"""The site's registry of views, keyed by unit kind (the names of atlas.plan.kinds): what a kind
shows on the layer page of each layer it has finished units on. No torch, no Ray.

A kind's module registers its view beside its `register_kind` call. The site builder asks the
store which kinds have finished units on a layer and adds, for each registered one, a section
with the view's title and the HTML its function returns (None leaves it out). The function reads
what it needs from the store; it must escape what it puts in the page (`html.escape`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from atlas.core.registry import Registry
from atlas.store.store import Store

# (store, layer name, keys of the kind's finished units on the layer) -> an HTML fragment, or None
Section = Callable[[Store, str, Sequence[str]], str | None]


@dataclass(frozen=True)
class View:
    kind: str
    title: str
    section: Section


@dataclass(frozen=True)
class ShownView:
    """A view's section on one layer page."""

    kind: str
    title: str
    html: str


VIEWS: Registry[View] = Registry("site view")


def register_view(kind: str, title: str, section: Section) -> View:
    """Show units of `kind` on the layer pages with `section` (a second view of a kind is an error)."""
    return VIEWS.register(kind, View(kind, title, section))


def layer_views(store: Store, layer: str) -> list[ShownView]:
    """The sections of the registered views whose kind has finished units on `layer`."""
    keys: dict[str, list[str]] = {}
    for entry in store.entries():
        if entry.status == "done" and entry.layer == layer and entry.kind in VIEWS:
            keys.setdefault(entry.kind, []).append(entry.key)
    shown = []
    for kind, found in keys.items():
        view = VIEWS.get(kind)
        html = view.section(store, layer, found)
        if html is not None:
            shown.append(ShownView(kind, view.title, html))
    return shown
