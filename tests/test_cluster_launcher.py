"""cluster.yaml against the launcher schema inside Ray, and the appendix job's plan."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from click.testing import CliRunner
from ray.autoscaler._private.util import prepare_config, validate_config
from raytools import REPO

from atlas.cli import main
from atlas.models import load_model
from atlas.plan.spec import LayerSpec, ModelSpec, load_spec
from atlas.run.job import prepare
from atlas.run.worker import make_context, run_unit

CLUSTER = REPO / "cluster.yaml"
INCEPTION = REPO / "jobs" / "inceptionv1.toml"
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_own_schema_and_checks(config):
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))
    validate_config(prepare_config(copy.deepcopy(config)))  # defaults filled in, as `ray up` does


def test_the_schema_check_catches_a_broken_node_type(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["gpus"] = 1  # not a launcher key
    with pytest.raises(jsonschema.ValidationError, match="gpus"):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_cluster_has_gpu_workers_that_scale_from_zero_and_a_head_without_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # atlas workers never land on the head
    assert workers and all(re.match(r"(g|p)\d", t["node_config"]["InstanceType"]) for t in workers)
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers)  # the job asks for them
    assert all(t["resources"]["GPU"] >= 1 for t in workers)  # what atlas.run.autoscale reads before any is up


def test_every_node_starts_ray_with_token_auth_and_gets_the_token(config):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts), key
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"


def test_nodes_install_the_ray_version_that_submits(config):
    pins = [c for c in config["setup_commands"] if "ray[default]==" in c]
    assert pins == [f'python -m pip install "ray[default]=={ray.__version__}"']


@pytest.mark.slow
def test_inceptionv1_plan_lists_every_channel_of_the_nine_mixed_layers(tmp_path):
    # No weights can be downloaded here: the same job with random weights has the same units.
    spec = tmp_path / "inceptionv1.toml"
    text = INCEPTION.read_text().replace('out = "atlas-out/inceptionv1"', f'out = "{tmp_path / "out"}"')
    spec.write_text(
        text.replace('name = "torchvision:googlenet"', 'name = "torchvision:googlenet"\nweights = "none"')
    )
    result = CliRunner().invoke(main, ["plan", str(spec)])
    assert result.exit_code == 0, result.output
    covered: dict[str, list[int]] = {}
    for layer, first, last in re.findall(r"^render-\w+  render (\S+) (\d+)\.\.(\d+)$", result.output, re.M):
        covered.setdefault(layer, []).extend(range(int(first), int(last) + 1))
    model = load_model("torchvision:googlenet", weights="none")
    mixed = [f"inception{block}" for block in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
    assert list(covered) == mixed
    for layer in mixed:
        assert covered[layer] == list(range(model.channels(layer))), layer
    units = sum(len(range(0, model.channels(layer), 8)) for layer in mixed)
    assert re.search(rf"^\d+ units \({units} render, \d+ scan\)", result.output, re.M)
    assert not (tmp_path / "out").exists()  # planning runs nothing and writes nothing


def test_inceptionv1_render_settings_render(tmp_path):
    """The appendix job's render settings work end to end, shrunk: tiny-cnn, 2 steps, 32 px."""
    spec = load_spec(INCEPTION)
    small = replace(spec.render, steps=2, size=32, batch=2, diversity=2)
    spec = spec.replace(
        out=tmp_path, model=ModelSpec("tiny-cnn"), layers=(LayerSpec("conv2", (0,)),), render=small
    )
    spec = spec.replace(examples=replace(spec.examples, enabled=False))
    (unit,) = prepare(spec).plan.units
    table = run_unit(make_context(spec, "cpu"), unit)["render"]
    assert set(table.column("objective").to_pylist()) == set(spec.render.objectives)
