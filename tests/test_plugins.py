"""A plugin registers an objective from its own module: the spec, the CLI and the site see it.

The plugin is installed the way a package would be: a distribution whose entry point in the
`neuron_atlas.plugins` group names tests/smooth_objective.py, on the path of a fresh process
(this process's registries stay as they are, so other tests see only the built-in names).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from plugintools import plugin_environment

from atlas.plan.spec import SpecError, parse_spec
from atlas.site import build_site

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SPEC = """
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
[render]
objectives = ["channel", "{objective}"]
"""
# Runs with the plugin installed: what the CLI offers, what the spec accepts, and the store a
# run of the plugin's objective leaves (job.json written from the registry, as run_job does).
PROBE = """
import json, sys
from click.testing import CliRunner
from atlas.cli import main
from atlas.site.columns import atlas_columns, columns_json
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store
from atlas.plan.spec import SpecError, parse_spec

spec = {spec!r}
try:
    parse_spec(spec.format(objective="smoth"))
    misspelt = ""
except SpecError as err:
    misspelt = str(err)
accepted = parse_spec(spec.format(objective="smooth")).render.objectives
options = SyntheticOptions(objectives=("channel", "neuron", "smooth"), diversity=2, examples_k=2)
store = write_synthetic_store(sys.argv[1], [SyntheticLayer("mixed4a", 3)], options)
store.write_job({{**store.job(), "columns": columns_json(atlas_columns())}})
help_text = CliRunner().invoke(main, ["render", "--help"]).output
print(json.dumps({{"help": help_text, "misspelt": misspelt, "accepted": list(accepted)}}))
"""


@pytest.fixture
def installed(tmp_path: Path) -> dict[str, str]:
    """An environment where the `smooth_objective` module is a plugin of an installed package."""
    return plugin_environment(tmp_path, "atlas-smooth-plugin", "smooth", "smooth_objective")[1]


def test_plugin_objective_reaches_the_cli_the_spec_and_the_site(installed, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-c", PROBE.format(spec=SPEC), str(out)]
    probe = subprocess.run(command, env=installed, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert "smooth" in seen["help"].split("--objective", 1)[1].split("--count", 1)[0]
    assert "render.objectives: unknown objective 'smoth'. did you mean 'smooth'?" in seen["misspelt"]
    assert "Choose from channel, neuron, negative, diversity, smooth" in seen["misspelt"]
    assert seen["accepted"] == ["channel", "smooth"]
    # This process has no plugin: the site takes the column from job.json, beside its siblings.
    page = (build_site(out).parent / "mixed4a.html").read_text()
    assert "Smooth optimized" in page and page.count('<div class="cell k-smooth"><img') == 3
    heads = page.split('class="row colheads"', 1)[1].split("</div>\n  </div>", 1)[0]
    assert heads.index("k-neuron") < heads.index("k-smooth") < heads.index("k-max")


def test_without_the_plugin_the_name_is_unknown():
    with pytest.raises(SpecError, match="unknown objective 'smooth'. Choose from channel, neuron"):
        parse_spec(SPEC.format(objective="smooth"))
