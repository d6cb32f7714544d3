"""Registries: one source of names for the spec, the CLI and the docs; plugins load or fail clearly."""

from pathlib import Path

import click
import pytest

import atlas.core.registry as registry
from atlas.catalog import BEGIN, END, REGISTRIES, registry_table
from atlas.cli import render
from atlas.core.registry import Registry, RegistryError
from atlas.plan.spec import SpecError, parse_spec

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md"


def test_the_docs_table_is_generated_from_the_registries():
    text = DOC.read_text()
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == registry_table(), "run python scripts/gen_docs.py"


def test_cli_choices_are_the_registered_names():
    choices = {p.name: p.type.choices for p in render.params if isinstance(p.type, click.Choice)}
    for option, kind in [
        ("objective", "objective"),
        ("param", "parameterization"),
        ("transforms", "transform preset"),
        ("precision", "precision"),
    ]:
        assert tuple(choices[option]) == REGISTRIES[kind][0].names()


def test_lookup_names_close_matches_and_duplicates_are_refused():
    colours = Registry("colour")
    colours.register("crimson", 1)
    colours.register("blue", 3)
    colours.register("green", 2)
    assert (
        colours.names() == ("crimson", "blue", "green") and colours.get("green") == 2 and "crimson" in colours
    )
    with pytest.raises(
        RegistryError, match="unknown colour 'grean'; did you mean 'green'\\? use one of crimson, blue, green"
    ):
        colours.get("grean")
    with pytest.raises(RegistryError, match="'crimson' is registered twice"):
        colours.register("crimson", 3)


def test_a_spec_choice_follows_its_registry(monkeypatch):
    from atlas.optvis.param import PARAMS, ParamKind

    base = '[model]\nname = "tiny-cnn"\n[[layers]]\nname = "conv2"\n[render]\nparam = "noise"\n'
    with pytest.raises(SpecError, match="choose one of fourier, pixel, maco$"):
        parse_spec(base)
    monkeypatch.setitem(PARAMS._entries, "noise", ParamKind(lambda batch, size, options: None))
    assert parse_spec(base).render.param == "noise"


class BrokenPoint:
    name, value = "broken", "no_such_module"

    def load(self):
        raise ImportError("No module named 'no_such_module'")


def test_a_plugin_that_fails_to_import_is_named(monkeypatch):
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_plugin_error", None)
    monkeypatch.setattr(registry, "entry_points", lambda group: [BrokenPoint()])
    with pytest.raises(RegistryError, match="plugin 'broken' \\(no_such_module\\) failed to import"):
        Registry("thing").names()
