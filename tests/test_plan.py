"""Content keys: same inputs give the same keys; a changed setting or checkpoint changes exactly the affected units."""

from dataclasses import replace

import atlas.kinds  # noqa: F401  (registers the built-in unit kinds)
from atlas.plan.kinds import PlanInputs
from atlas.plan.spec import parse_spec
from atlas.plan.units import ModelFacts, make_plan

SPEC = """
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
channels = "0:6"
[[layers]]
name = "conv3"
channels = "0:4"
[render]
channels_per_unit = 4
[examples]
enabled = false
[interactions]
random_directions = 2
pairs = [["conv3", 0, 1]]
"""

FACTS = ModelFacts("digest-a", {"conv2": 32, "conv3": 32})


def keys(plan):
    return {u.label: u.key for u in plan.units}


def test_units_cover_channels_in_chunks():
    plan = make_plan(parse_spec(SPEC), FACTS)
    renders = [u for u in plan.units if u.kind == "render"]
    assert [u.channels for u in renders] == [(0, 1, 2, 3), (4, 5), (0, 1, 2, 3)]
    assert {u.kind for u in plan.units} == {"render", "directions", "pair"}


def test_keys_are_stable_and_distinct():
    a, b = make_plan(parse_spec(SPEC), FACTS), make_plan(parse_spec(SPEC), FACTS)
    assert keys(a) == keys(b)
    assert len(set(keys(a).values())) == len(a.units)


def test_changed_setting_changes_every_render_key_but_scheduling_does_not():
    spec = parse_spec(SPEC)
    base = keys(make_plan(spec, FACTS))
    steps = keys(make_plan(spec.replace(render=replace(spec.render, steps=7)), FACTS))
    assert all(base[label] != steps[label] for label in base)
    enabled = keys(make_plan(spec.replace(render=replace(spec.render, enabled=True)), FACTS))
    assert enabled == base


def test_changed_layer_selection_recomputes_only_that_layer():
    spec = parse_spec(SPEC)
    base = keys(make_plan(spec, FACTS))
    other = parse_spec(SPEC.replace('channels = "0:4"\n[render]', 'channels = "0:8"\n[render]'))
    changed = keys(make_plan(other, FACTS))
    assert base["render conv2 0..3"] == changed["render conv2 0..3"]
    assert "render conv3 4..7" in changed and "render conv3 4..7" not in base


def test_new_checkpoint_changes_every_key():
    spec = parse_spec(SPEC)
    base = keys(make_plan(spec, FACTS))
    other = keys(make_plan(spec, ModelFacts("digest-b", FACTS.channels)))
    assert not set(base.values()) & set(other.values())


def test_examples_units_chunk_channels_and_follow_their_settings():
    from atlas.kinds.examples.units import EXAMPLES_CHANNELS_PER_UNIT, examples_units

    spec = parse_spec(SPEC.replace("enabled = false", "quantiles = [0.1, 0.9]"))
    facts = ModelFacts("digest-a", {"conv2": 100, "conv3": 32})
    spec = spec.replace(layers=(replace(spec.layers[0], channels=None),))
    scans = PlanInputs(finished={"scan": ("scan-1",)})
    units = examples_units(spec, facts, scans)
    assert [len(u.channels) for u in units] == [EXAMPLES_CHANNELS_PER_UNIT, 100 - EXAMPLES_CHANNELS_PER_UNIT]
    assert [u.work.with_directions for u in units] == [True, False]
    other = examples_units(spec.replace(examples=replace(spec.examples, quantiles=(0.2, 0.8))), facts, scans)
    assert not {u.key for u in units} & {u.key for u in other}
