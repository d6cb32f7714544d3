"""Every command x every class of bad input it takes (docs/ERRORS.md): one `Error:` line, exit 2.

The classes and the commands each applies to are read from the catalogue in docs/ERRORS.md, so
the docs and this test cannot drift apart; each class has a generator here that builds a bad input
of that class for a given command (the variant drawn from a seed per command and class, so the
walk covers each class's family across the commands). Commands run in-process with click's
CliRunner; two cases run as subprocesses, with a plugin installed the way a package installs one.
"""

from __future__ import annotations

import random
import re
import string
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from plugintools import plugin_environment

import atlas.core.registry as registry
from atlas.cli import main
from atlas.models.registry import build
from atlas.store.outdir import MARKER

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DOCS = REPO / "docs" / "ERRORS.md"
COMMANDS = tuple(main.commands)
SPEC_COMMANDS = ("run", "scan", "plan", "calibrate", "timeline", "status")


def catalogue() -> dict[str, tuple[str, ...]]:
    """class -> the commands it applies to, from the docs' table (`every`: every command)."""
    rows = re.findall(r"^\| `([a-z-]+)` \| ([a-z, -]+) \|", DOCS.read_text(), flags=re.M)
    return {
        name: COMMANDS if commands.strip() == "every" else tuple(c.strip() for c in commands.split(","))
        for name, commands in rows
    }


@dataclass
class Case:
    command: str
    tmp: Path
    rng: random.Random

    def job(
        self,
        model: str = "tiny-cnn",
        layers: str = '[[layers]]\nname = "conv2"\nchannels = "0:2"\n',
        render: str = "steps = 2\nsize = 32\n",
        examples: str = "enabled = false\n",
        checkpoint: Path | None = None,
        extra: str = "",
    ) -> list[str]:
        """A small valid spec with the given changes, as this command's arguments (a timeline's
        checkpoint is its series)."""
        if self.command == "timeline":
            weights = f'checkpoints = ["{checkpoint or good_checkpoint(self.tmp)}"]\n'
        else:
            weights = f'checkpoint = "{checkpoint}"\n' if checkpoint else ""
        return self.spec_file(
            f'[job]\nname = "walk"\nout = "{self.tmp / "out"}"\n[model]\nname = "{model}"\n{weights}'
            f"{layers}[render]\n{render}[examples]\n{examples}{extra}"
        )

    def spec_file(self, text: str) -> list[str]:
        path = self.tmp / "job.toml"
        path.write_text(text)
        return self.spec_args(path)

    def spec_args(self, path: Path) -> list[str]:
        extra = ["-o", str(self.tmp / "speed.json")] if self.command == "calibrate" else []
        return [self.command, str(path), *extra]

    def render(self, **options: str) -> list[str]:
        given = {"--model": "tiny-cnn", "--layer": "conv2", "--steps": "1", "--size": "32", **options}
        return ["render", *(x for pair in given.items() for x in pair), "-o", str(self.tmp / "x.png")]

    def word(self) -> str:
        return "".join(self.rng.choices(string.ascii_lowercase + "_", k=self.rng.randint(3, 12)))

    def valid(self) -> list[str]:
        """The command with valid input of its own (for the classes that break the environment)."""
        if self.command in SPEC_COMMANDS:
            return self.job()
        store = self.tmp / "store"
        return {
            "demo": ["demo", "--out", str(self.tmp / "demo")],
            "layers": ["layers", "tiny-cnn"],
            "render": self.render(),
            "site": ["site", str(store)],
            "verify": ["verify", str(store)],
            "sae-match": ["sae-match", str(self.sae("a", 8)), str(self.sae("b", 8))],
        }[self.command]

    def sae(self, name: str, width: int) -> Path:
        """A small random ReLU SAE of `width` channels and 16 features, as a .npz file."""
        rng = np.random.default_rng(width)
        path = self.tmp / f"{name}.npz"
        np.savez(
            path,
            W_enc=rng.normal(size=(width, 16)).astype(np.float32),
            b_enc=np.zeros(16, np.float32),
            W_dec=rng.normal(size=(16, width)).astype(np.float32),
            b_dec=np.zeros(width, np.float32),
        )
        return path


def good_checkpoint(tmp: Path) -> Path:
    path = tmp / "good.pt"
    if not path.exists():
        torch.save(build("tiny-cnn", "none")[0].state_dict(), path)
    return path


def bad_checkpoint(case: Case) -> Path:
    """A checkpoint of another kind: drawn from the family of mismatches."""
    state = build("tiny-cnn", "none")[0].state_dict()
    key = case.rng.choice(sorted(state))
    payload = case.rng.choice(
        [
            {k: v for k, v in state.items() if k != key},  # a missing key
            {**state, f"{case.word()}.weight": torch.zeros(2)},  # an extra key
            {**state, key: torch.zeros(*state[key].shape, 2)},  # a key of another shape
            {**state, key: state[key].to(torch.complex64)},  # a key of another kind
            {**state, key: state[key].tolist()},  # not a tensor
            [state[k] for k in state],  # not a dict
            torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).state_dict(),  # another architecture
        ]
    )
    path = case.tmp / "bad.pt"
    torch.save(payload, path)
    return path


def store_folder(tmp: Path, manifest: bytes | None = None) -> Path:
    """An output folder the atlas made (marker), with a legacy manifest.json when given."""
    folder = tmp / "out"
    folder.mkdir(exist_ok=True)
    (folder / MARKER).write_text('{"writer": "neuron-atlas", "job": "walk"}\n')
    if manifest is not None:
        (folder / "manifest.json").write_bytes(manifest)
    return folder


def spec_missing(case: Case) -> list[str]:
    return case.spec_args(case.tmp / f"{case.word()}.toml")


def spec_toml(case: Case) -> list[str]:
    return case.spec_file(case.rng.choice(["[job\n", "a = = 1\n", '[model]\nname = "x\n', "[[layers]\n"]))


def spec_key(case: Case) -> list[str]:
    section = case.rng.choice(["execute", "interactions", "timeline", "cost", "activation_atlas", "nosuch"])
    return case.job(extra=f"[{section}]\n{case.word()}x = 1\n")


def spec_value(case: Case) -> list[str]:
    value = case.rng.choice(["steps = 0", 'size = "big"', "lr = -1", "batch = 1.5", 'param = "noise"'])
    return case.job(render=f"{value}\n")


LAYER_FAULTS = (
    "channels = [0, 3, 70]",
    "channels = [-1]",
    "chanels = [0]",
    'channels = "3:1"',
    "dictionary = 3",
    'visualize = "densest:0"',
    'visualize = "5:2"',
)


def layers_entry(case: Case) -> list[str]:
    good = '[[layers]]\nname = "conv1"\nchannels = [0]\n' * case.rng.randint(1, 4)
    return case.job(layers=f'{good}[[layers]]\nname = "conv2"\n{case.rng.choice(LAYER_FAULTS)}\n')


def model_name(case: Case) -> list[str]:
    name = case.rng.choice(
        ["tiny_cnn", "torchvision:resnet1", "nosuch:thing", case.word(), "module:nosuch:f"]
    )
    if case.command == "layers":
        return ["layers", name]
    if case.command == "render":
        return case.render(**{"--model": name})
    return case.job(model=name)


def model_input(case: Case) -> list[str]:
    line = case.rng.choice(
        [
            f"input_size = {case.rng.choice([0, 4, 5000])}",
            'input_size = "224"',
            "mean = [0.5, 0.5]",
            f"std = [1, {case.rng.choice([0, -1])}, 1]",
            f"value_range = [{case.rng.choice(['255, 0', '1, 1'])}]",
            'path = "no such folder"',
        ]
    )
    model = (
        'module:mynet:build"\n' + line + "\n#" if line.startswith("path") else 'tiny-cnn"\n' + line + "\n#"
    )
    return case.job(model=model)


def layer_name(case: Case) -> list[str]:
    name = case.rng.choice(["conv_2", "conv9", case.word()])
    if case.command == "render":
        return case.render(**{"--layer": name})
    return case.job(layers=f'[[layers]]\nname = "{name}"\n')


def channel(case: Case) -> list[str]:
    index = case.rng.choice([32, 33, 1000])
    if case.command == "render":
        return case.render(**{"--channel": str(index)})
    return case.job(layers=f'[[layers]]\nname = "conv2"\nchannels = [0, {index}]\n')


def checkpoint_missing(case: Case) -> list[str]:
    path = case.tmp / f"{case.word()}.pt"
    if case.command == "layers":
        return ["layers", "tiny-cnn", "--checkpoint", str(path)]
    return case.job(checkpoint=path)


def checkpoint_mismatch(case: Case) -> list[str]:
    path = bad_checkpoint(case)
    if case.command == "layers":
        return ["layers", "tiny-cnn", "--checkpoint", str(path)]
    return case.job(checkpoint=path)


def examples_source(case: Case) -> list[str]:
    return case.job(examples=f'source = "{case.word()}/images"\n')


def out_uri(case: Case) -> list[str]:
    uri = case.rng.choice(
        ["nosuch://bucket/p", "s3://AKIAX:hunter2@bucket/p", "s3://bucket/p?region=x", "s3:///p", "gs://"]
    )
    if case.command in ("site", "verify"):
        return [case.command, uri]
    return [*case.valid(), "--out", uri]


def foreign_out(case: Case) -> list[str]:
    folder = case.tmp / "out"
    folder.mkdir()
    (folder / f"{case.word()}.txt").write_text("the user's own file")
    return case.valid() if case.command != "demo" else ["demo", "--out", str(folder)]


def not_a_store(case: Case) -> list[str]:
    folder = case.tmp / case.rng.choice(["empty", "photos", "nowhere"])
    if folder.name != "nowhere":
        folder.mkdir()
        if folder.name == "photos":
            (folder / "a.jpg").write_bytes(b"\xff\xd8")
    return [case.command, str(folder)]


def damaged_manifest(case: Case) -> list[str]:
    folder = store_folder(case.tmp, case.rng.choice([b"{", b"\xff\xfe", b"[1, 2]", b'{"units": 3}']))
    return [case.command, str(folder)] if case.command in ("site", "verify") else case.valid()


def broken_plugin(case: Case) -> list[str]:
    return case.valid()


def sae_file(case: Case) -> list[str]:
    """Drawn from the family: an SAE that does not exist, or two SAEs of different widths."""
    first = case.sae("a", 8)
    second = case.rng.choice([case.tmp / f"{case.word()}.npz", case.sae("b", case.rng.randint(2, 7))])
    return [case.command, str(first), str(second)]


def option(case: Case) -> list[str]:
    return [case.command, f"--{case.word()}"]


BAD_INPUTS: dict[str, Callable[[Case], list[str]]] = {
    "spec-missing": spec_missing,
    "spec-toml": spec_toml,
    "spec-key": spec_key,
    "spec-value": spec_value,
    "layers-entry": layers_entry,
    "model-name": model_name,
    "model-input": model_input,
    "layer-name": layer_name,
    "channel": channel,
    "checkpoint-missing": checkpoint_missing,
    "checkpoint-mismatch": checkpoint_mismatch,
    "examples-source": examples_source,
    "out-uri": out_uri,
    "foreign-out": foreign_out,
    "not-a-store": not_a_store,
    "damaged-manifest": damaged_manifest,
    "broken-plugin": broken_plugin,
    "sae-file": sae_file,
    "option": option,
}
# What the one line must name, per class: the problem, not some other failure on the way.
NAMES = {
    "spec-missing": r"job spec .* does not exist",
    "spec-toml": r"not valid TOML",
    "spec-key": r"unknown (key|section)",
    "spec-value": r"line \d+: render\.",
    "layers-entry": r"line \d+: layers\.",
    "model-name": r"model|cannot import",
    "model-input": r"line \d+: model\.(input_size|mean|std|value_range|path)",
    "layer-name": r"no layer",
    "channel": r"out of range",
    "checkpoint-missing": r"\.pt.* does not exist",
    "checkpoint-mismatch": r"checkpoint .*bad\.pt",
    "examples-source": r"examples\.source",
    "out-uri": r"://",
    "foreign-out": r"\.neuron-atlas",
    "not-a-store": r"not an atlas store|neither job\.json",
    "damaged-manifest": r"manifest\.json is not a valid manifest",
    "broken-plugin": r"plugin 'broken' \(broken_plugin_module\) failed to import",
    "sae-file": r"does not exist|different widths C",
    "option": r"No such option",
}
WALK = [(command, name) for name, commands in catalogue().items() for command in commands]


class BrokenPoint:
    """An entry point whose module raises on import."""

    name, value = "broken", "broken_plugin_module"

    def load(self) -> None:
        raise RuntimeError("the plugin's import failed")


def test_the_catalogue_names_real_commands_and_every_class_has_a_generator():
    found = catalogue()
    assert set(found) == set(BAD_INPUTS) == set(NAMES)
    assert {command for commands in found.values() for command in commands} == set(COMMANDS)


def one_error_line(result) -> str:
    """The single `Error:` line of a failed command; nothing else on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(("command", "bad"), WALK, ids=[f"{c}-{b}" for c, b in WALK])
def test_every_command_says_one_line_for_every_bad_input(command, bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = Case(command, tmp_path, random.Random(f"{command}/{bad}"))
    args = BAD_INPUTS[bad](case)
    if bad == "broken-plugin":
        monkeypatch.setattr(registry, "_plugins_loaded", False)
        monkeypatch.setattr(registry, "_plugin_error", None)
        monkeypatch.setattr(registry, "entry_points", lambda group: [BrokenPoint()])
    line = one_error_line(CliRunner().invoke(main, args))
    assert re.search(NAMES[bad], line), line
    assert "hunter2" not in line  # a credential in a URI is never repeated
    if bad == "layers-entry":  # the line of the faulty key in the last entry, not the first entry's
        text = (case.tmp / "job.toml").read_text().splitlines()
        fault = max(n for n, row in enumerate(text, 1) if row in LAYER_FAULTS)
        assert f"line {fault}," in line or f"line {fault}:" in line, line


@pytest.fixture
def broken_plugin_installed(tmp_path: Path) -> dict[str, str]:
    """An environment where an installed package's plugin module raises on import."""
    site, env = plugin_environment(tmp_path, "atlas-broken-plugin", "broken", "broken_plugin_module")
    (site / "broken_plugin_module.py").write_text("raise ImportError('a dependency is missing')\n")
    return env


@pytest.mark.parametrize(("args", "code"), [(["--version"], 0), (["layers", "tiny-cnn"], 2)])
def test_a_broken_plugin_in_a_fresh_process(broken_plugin_installed, args, code):
    command = [sys.executable, "-m", "atlas.cli", *args]
    done = subprocess.run(command, env=broken_plugin_installed, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code and len(lines) == 1, done.stderr
    assert lines[0].startswith("Warning: " if code == 0 else "Error: ")
    assert (
        "plugin 'broken' (broken_plugin_module)" in lines[0]
        and "pip uninstall atlas-broken-plugin" in lines[0]
    )
    assert "Traceback" not in done.stderr
    if code == 0:
        assert re.search(r"\d+\.\d+", done.stdout)


@pytest.mark.parametrize("out", ["elsewhere", "file://{tmp}/elsewhere"])
def test_timeline_takes_out_like_run(tmp_path, monkeypatch, out):
    """`atlas timeline JOB --out DIR` reaches the job (here: its empty series), as `atlas run` does."""
    monkeypatch.chdir(tmp_path)
    case = Case("timeline", tmp_path, random.Random(0))
    args = case.job()
    spec = tmp_path / "job.toml"
    spec.write_text(spec.read_text().replace(f'checkpoints = ["{tmp_path / "good.pt"}"]\n', ""))  # none yet
    result = CliRunner().invoke(main, [*args, "--out", out.format(tmp=tmp_path)])
    assert "the timeline has no checkpoints" in one_error_line(result)
    assert not (tmp_path / "out").exists()  # the spec's own out is not where it looked
