"""The content keys of the demo job, pinned: a refactor that changes them recomputes every user's atlas.

If this fails, something that feeds the keys changed (a unit's settings, their serialized form,
a default, the weight digest). Bump the work type's `version` (atlas.plan.work) on purpose or undo the change.
"""

from pathlib import Path

import atlas.kinds  # noqa: F401  (registers the built-in unit kinds)
from atlas.models import load_model
from atlas.plan.kinds import PlanInputs
from atlas.plan.spec import load_spec
from atlas.plan.units import ModelFacts, make_plan, plan_phase

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo.toml"
DIGEST = "6c403c088d9f7086"  # efficientnet-lite0's ImageNet weights from the installed package
FACTS = ModelFacts(DIGEST, {"_blocks.3": 24, "_blocks.5": 40, "_blocks.9": 80})
FINGERPRINTS = ["demo-data:0:64", "demo-data:1:40"]  # two dataset shards

# render, directions and pair changed on purpose in issue 25 (render version 4 and the demo's
# recipe: warmup-hold-cosine, coarse_fraction 0.2); examples changed on purpose too (version 2:
# histogram.active); scans kept theirs.
PINNED = [
    ("render _blocks.3 0..3", "render-b9e359213de26f6cbb33"),
    ("render _blocks.5 0..3", "render-2a9c13f3552cc9d37e77"),
    ("render _blocks.9 0..3", "render-bf28bd59a4aebe6b6591"),
    ("directions _blocks.3", "directions-0a763685ee203b25baff"),
    ("directions _blocks.5", "directions-4d6a21057db1631bd5fb"),
    ("directions _blocks.9", "directions-f8bdda91835472e66f29"),
    ("pair _blocks.5 0..1", "pair-b61ecee46ed46aa5ffd4"),
    ("scan *", "scan-8dd5f018f6545fcde6d6"),
    ("scan *", "scan-2cfd17712cb09d1894cf"),
    ("examples _blocks.3 0..3", "examples-bf686397a7a3b7bacb32"),
    ("examples _blocks.5 0..3", "examples-405e85ff801848115820"),
    ("examples _blocks.9 0..3", "examples-ea36b9243e67aaebbfa0"),
]


def test_every_unit_of_the_demo_job_keeps_its_key():
    spec = load_spec(DEMO)
    plan = make_plan(spec, FACTS, shards=[0, 1], fingerprints=FINGERPRINTS)
    units = [*plan.units, *plan_phase("merge", spec, FACTS, PlanInputs(finished=plan.keys()))]
    assert [(u.label, u.key) for u in units] == PINNED


def test_the_demo_model_keeps_its_weight_digest():
    assert load_model("efficientnet-lite0", None, "default").digest == DIGEST
