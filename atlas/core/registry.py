"""Named choices, one registry per kind: the single list that checks, CLI choices and docs read.

Objectives, parameterizations, transform presets, precisions, unit kinds and model sources are
each a `Registry`. The code that implements a choice registers it next to its definition; the
spec's checks, click's `Choice` options, the site's columns and the docs' tables ask the
registry, so adding a choice is one edit in one place.

Plugins: an installed package lists modules under the entry point group `neuron_atlas.plugins`
(`[project.entry-points."neuron_atlas.plugins"] mine = "mine.atlas_plugin"`); each registry
imports them all on its first lookup, in every process (CLI, driver and Ray workers alike), so a
plugin's names are valid everywhere the package is installed. A plugin that fails to import
makes every lookup raise `PluginError`, naming it and its package (docs/ERRORS.md).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from atlas.core.errors import AtlasError

PLUGIN_GROUP = "neuron_atlas.plugins"

T = TypeVar("T")

_plugins_loaded = False
_plugin_error: PluginError | None = None  # the first plugin that failed to import, raised on every lookup


class RegistryError(AtlasError, ValueError):
    """A name registered twice, or a plugin that cannot be imported."""


class PluginError(RegistryError):
    """An installed plugin whose module raises on import; the message names it and its package."""


def load_plugins() -> None:
    """Import every module listed under the `neuron_atlas.plugins` entry point group, once.

    A plugin that fails to import raises `PluginError` here, then on every later call: no lookup
    goes on with a registry that lacks names the user installed.
    """
    global _plugins_loaded, _plugin_error
    if _plugin_error is not None:
        raise _plugin_error
    if _plugins_loaded:
        return
    _plugins_loaded = True  # before importing: a plugin may look names up while it registers
    for point in entry_points(group=PLUGIN_GROUP):
        try:
            point.load()
        except Exception as err:
            dist = getattr(getattr(point, "dist", None), "name", None)
            package = f"`pip uninstall {dist}`" if dist else "uninstall the package that declares it"
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            _plugin_error = PluginError(
                f"plugin {point.name!r} ({point.value}) failed to import ({reason}); fix it or {package} "
                f"(it is listed under the {PLUGIN_GROUP!r} entry points)"
            )
            raise _plugin_error from err


def plugin_error() -> PluginError | None:
    """The error of a plugin that failed to import, or None when every plugin imports."""
    try:
        load_plugins()
    except PluginError as err:
        return err
    return None


def close_matches(name: str, options: list[str]) -> str:
    """`did you mean 'a' or 'b'? ` for a misspelt name, or nothing."""
    match = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f"did you mean {' or '.join(repr(m) for m in match)}? " if match else ""


class Registry(Generic[T]):
    """Names of one kind in registration order, each mapped to what implements it.

    `what` names the kind in messages ("parameterization"); `error` is the exception a failed
    lookup raises, so callers keep catching the error family of their module.
    """

    def __init__(self, what: str, error: type[AtlasError] = RegistryError):
        self.what = what
        self.error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str, value: T) -> T:
        """Add `name`; a second registration of a name is a mistake, not an override."""
        if name in self._entries:
            raise RegistryError(f"{self.what} {name!r} is registered twice; choose another name")
        self._entries[name] = value
        return value

    def names(self) -> tuple[str, ...]:
        load_plugins()
        return tuple(self._entries)

    def known(self) -> tuple[str, ...]:
        """The names registered so far, without importing plugins (help text beside a broken one)."""
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        load_plugins()
        return list(self._entries.items())

    def get(self, name: str) -> T:
        """The entry for `name`, or this registry's error naming close matches and the choices."""
        load_plugins()
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name]

    def unknown(self, name: str) -> AtlasError:
        """The error for a name that is not registered: close matches, then every choice."""
        names = list(self._entries)
        return self.error(
            f"unknown {self.what} {name!r}; {close_matches(name, names)}use one of {', '.join(names)}"
        )

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self._entries)})"
