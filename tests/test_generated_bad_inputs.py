"""Generated bad inputs: checkpoint mismatches and wrappers, journal lines, [[layers]] entries.

Each input space is drawn by Hypothesis; the property is the house rule: one line that names the
problem (a `ModelError`, a `SpecError` at the right line), or, where the input is tolerated (a
wrapped checkpoint, a damaged journal line), the intact part used and the rest named.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store

from atlas.models.registry import PREFIXES, WRAPPERS, ModelError, build, load_checkpoint, state_dict_mismatch
from atlas.plan.spec import SpecError, parse_spec
from atlas.store.store import Store

MODEL = build("tiny-cnn", "none")[0]
STATE = MODEL.state_dict()
KEYS = sorted(STATE)
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
names = st.text("abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=16)


@st.composite
def mismatched(draw: st.DrawFn) -> tuple[object, str]:
    """A payload that cannot be tiny-cnn's state dict, and a word its message must contain."""
    key = draw(st.sampled_from(KEYS))
    shape = tuple(STATE[key].shape)
    kind = draw(st.sampled_from(["drop", "add", "rename", "shape", "dtype", "value", "payload"]))
    state = dict(STATE)
    if kind == "drop":
        del state[key]
        return state, "missing"
    if kind == "add":
        extra = draw(names.filter(lambda n: n not in STATE))
        return {**state, extra: torch.zeros(1)}, "unexpected"
    if kind == "rename":
        new = draw(names.filter(lambda n: n not in STATE))
        state[new] = state.pop(key)
        return state, "missing"
    if kind == "shape":
        other = draw(
            st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple).filter(lambda s: s != shape)
        )
        return {**state, key: torch.zeros(other)}, key
    if kind == "dtype":
        dtype = draw(st.sampled_from([torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8]))
        return {**state, key: torch.zeros(shape, dtype=dtype)}, key
    if kind == "value":
        value = draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.floats(), max_size=3)))
        return {**state, key: value}, key
    payload = draw(
        st.one_of(
            st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3), st.just(STATE[key])
        )
    )
    return payload, "not a state dict"


@SETTINGS
@given(case=mismatched())
def test_a_mismatched_checkpoint_is_one_line_naming_the_first_problem(case):
    payload, word = case
    problem = state_dict_mismatch(STATE, payload)
    assert word in problem and "\n" not in problem


@SETTINGS
@given(case=mismatched())
def test_loading_a_mismatched_checkpoint_raises_model_error(case, tmp_path):
    payload, word = case
    path = tmp_path / "ckpt.pt"
    torch.save(payload, path)
    module = build("tiny-cnn", "none")[0]
    with pytest.raises(ModelError) as caught:
        load_checkpoint(module, path, "tiny-cnn")
    assert word in str(caught.value) and str(path) in str(caught.value)


@SETTINGS
@given(
    wrappers=st.lists(st.sampled_from(WRAPPERS), max_size=2),
    prefix=st.sampled_from(("", *PREFIXES)),
    extra=st.dictionaries(st.sampled_from(["epoch", "optimizer", "step"]), st.integers(), max_size=2),
)
def test_wrapped_checkpoints_load_and_say_what_was_taken_off(wrappers, prefix, extra, tmp_path, caplog):
    trained = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in STATE.items()}
    payload: object = {prefix + k: v for k, v in trained.items()}
    for wrapper in wrappers:
        payload = {wrapper: payload, **extra}
    path = tmp_path / "wrapped.pt"
    torch.save(payload, path)
    module = build("tiny-cnn", "none")[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="atlas.models"):
        load_checkpoint(module, path, "tiny-cnn")
    assert all(torch.equal(module.state_dict()[k], v) for k, v in trained.items())
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert all(repr(w) in notes for w in wrappers) and (not prefix or repr(prefix) in notes)
    assert bool(notes) == bool(wrappers or prefix)


RECORD_LINE = st.builds(
    lambda key: json.dumps({"key": key, "kind": "render", "layer": "x", "tables": {"render": {"path": 3}}}),
    names,
)
GARBAGE = st.one_of(
    st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b),  # random bytes
    st.sampled_from(["[1, 2]", "3", '"text"', "null", '{"a": 1}', '{"forget": 3}']),  # JSON, not a record
    RECORD_LINE,  # a record of the wrong shape
    st.sampled_from(['{"key": "a", "kind": "render"', "{", '{"key":']),  # a partial record
    st.just("é".encode()[:1] + b"x"),  # UTF-8 cut inside a character
)


@SETTINGS
@given(garbage=st.lists(GARBAGE, min_size=1, max_size=4), torn=st.booleans())
def test_damaged_journal_lines_are_skipped_and_named(garbage, torn, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    write_synthetic_store(out, [SyntheticLayer("mixed4a", 2)], SyntheticOptions(examples_k=2))
    intact = {e.key: e for e in Store(out).entries()}
    chunk = sorted((out / "journal").glob("chunk-*.jsonl"))[-1]
    before = chunk.read_bytes().count(b"\n")
    lines = [g if isinstance(g, bytes) else g.encode() for g in garbage]
    chunk.write_bytes(chunk.read_bytes() + b"\n".join(lines) + (b"" if torn else b"\n"))
    store = Store(out)
    assert {e.key: e for e in store.entries()} == intact  # every intact record survives
    named = [int(s.rsplit(" line ", 1)[1].split(":")[0]) for s in store.journal.skipped]
    assert all(chunk.name in s for s in store.journal.skipped)
    expected = list(range(before + 1, before + len(lines) + 1))
    assert named == expected or (torn and named == expected[:-1])  # a torn last line may go unsaid


LAYER_FAULTS = ("channels = [-1]", "chanels = [0]", 'channels = "3:1"', "dictionary = 3", "channels = [1.5]")


@SETTINGS
@given(before=st.integers(0, 5), after=st.integers(0, 3), fault=st.sampled_from(LAYER_FAULTS))
def test_a_fault_in_the_nth_layers_table_names_its_line(before, after, fault):
    entry = '[[layers]]\nname = "conv1"\nchannels = [0]\n'
    text = f'[model]\nname = "tiny-cnn"\n{entry * before}[[layers]]\nname = "conv2"\n{fault}\n{entry * after}'
    line = text.splitlines().index(fault) + 1
    with pytest.raises(SpecError, match=rf"^<spec>, line {line}: layers\."):
        parse_spec(text)


def test_a_journal_line_that_is_json_but_no_record_names_its_file(tmp_path: Path):
    write_synthetic_store(tmp_path, [SyntheticLayer("mixed4a", 2)], SyntheticOptions(examples_k=2))
    chunk = sorted((tmp_path / "journal").glob("chunk-*.jsonl"))[-1]
    chunk.write_text(chunk.read_text() + '{"units": []}\n')
    skipped = Store(tmp_path).journal.skipped
    assert len(skipped) == 1 and chunk.name in skipped[0] and "manifest.json" not in skipped[0]


def test_verify_names_damaged_journal_lines_and_drops_them_and_the_site_still_builds(tmp_path: Path):
    from click.testing import CliRunner

    from atlas.cli import main

    out = tmp_path / "out"
    write_synthetic_store(out, [SyntheticLayer("mixed4a", 2)], SyntheticOptions(examples_k=2))
    units = {e.key for e in Store(out).entries()}
    chunk = sorted((out / "journal").glob("chunk-*.jsonl"))[-1]
    chunk.write_bytes(chunk.read_bytes() + b"\xff\xfe\x00garbage\n[1]\n")
    runner = CliRunner()
    listed = runner.invoke(main, ["verify", str(out), "--dry-run"])
    assert listed.exit_code == 1 and listed.stderr.count(chunk.name) == 2 and "Traceback" not in listed.output
    assert "not UTF-8" in listed.stderr and "not a unit record" in listed.stderr
    assert runner.invoke(main, ["site", str(out)]).exit_code == 0
    repaired = runner.invoke(main, ["verify", str(out)])
    assert repaired.exit_code == 1 and "2 unreadable journal lines dropped" in repaired.output
    again = runner.invoke(main, ["verify", str(out)])
    assert again.exit_code == 0 and again.stderr == "" and Store(out).journal.skipped == []
    assert {e.key for e in Store(out).entries()} == units  # every record kept, only the damage gone
