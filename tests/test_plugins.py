"""A plugin registers an objective from its own module: the spec, the CLI and the site see it.

The plugin is installed the way a package would be: a distribution with an entry point in the
`neuron_atlas.plugins` group on the path of fresh processes (this test's own registries stay as
they are, so other tests see only the built-in names).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas.registry import PLUGIN_GROUP

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

SPEC = """
[job]
name = "plugin"
out = "{out}"
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
channels = "0:2"
[render]
steps = 2
size = 32
objectives = ["channel", "{objective}"]
[examples]
enabled = false
[execute]
workers = 1
"""


@pytest.fixture
def installed(tmp_path: Path) -> dict[str, str]:
    """An environment where the `smooth_objective` module is a plugin of an installed package."""
    site = tmp_path / "site-packages"
    info = site / "atlas_smooth_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: atlas-smooth-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\nsmooth = smooth_objective\n")
    env = dict(os.environ)
    paths = [str(site), str(TESTS), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def atlas(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from atlas.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def spec(tmp_path: Path, objective: str) -> str:
    path = tmp_path / "job.toml"
    path.write_text(SPEC.format(out=tmp_path / "out", objective=objective))
    return str(path)


def test_plugin_objective_in_the_spec_checks_and_the_cli(installed, tmp_path):
    help_text = atlas(installed, "render", "--help").stdout
    assert "smooth" in help_text.split("--objective", 1)[1].split("--count", 1)[0]
    misspelt = atlas(installed, "plan", spec(tmp_path, "smoth"))
    assert misspelt.returncode == 2
    assert "unknown objective 'smoth'. did you mean 'smooth'?" in misspelt.stderr
    assert "Choose from channel, neuron, negative, diversity, smooth" in misspelt.stderr
    planned = atlas(installed, "plan", spec(tmp_path, "smooth"))
    assert planned.returncode == 0, planned.stderr
    assert "render conv2 0..1" in planned.stdout


def test_without_the_plugin_the_name_is_unknown(tmp_path):
    result = atlas(dict(os.environ, OMP_NUM_THREADS="1"), "plan", spec(tmp_path, "smooth"))
    assert result.returncode == 2 and "unknown objective 'smooth'" in result.stderr


@pytest.mark.slow
def test_plugin_objective_is_rendered_by_workers_and_shown_as_a_column(installed, tmp_path):
    result = atlas(installed, "run", spec(tmp_path, "smooth"))
    assert result.returncode == 0, result.stderr
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    names = [column["name"] for column in job["columns"]]
    assert names.index("smooth") < names.index("max")  # a positive objective sits before the top examples
    page = (tmp_path / "out" / "site" / "conv2.html").read_text()
    assert "Smooth optimized" in page and page.count('<div class="cell k-smooth"><img') == 2
    # The site is built from job.json: a process without the plugin rebuilds the same column.
    rebuilt = atlas(dict(os.environ, OMP_NUM_THREADS="1"), "site", str(tmp_path / "out"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (tmp_path / "out" / "site" / "conv2.html").read_text().count('class="cell k-smooth"><img') == 2
