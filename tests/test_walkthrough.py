"""The README's "Your own model in five minutes", run as written: its files into a folder, a DDP
checkpoint and a folder of photos beside them, its commands in that folder, then a retrained
checkpoint and the plan that says why the atlas is recomputed."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from training import write_photos

README = Path(__file__).resolve().parents[1] / "README.md"


def walkthrough() -> dict[str, str]:
    """The blocks the README marks `<!-- walkthrough: NAME -->`, by name."""
    blocks = re.findall(r"<!-- walkthrough: (\S+) -->\n```\w*\n(.*?)```", README.read_text(), re.S)
    return dict(blocks)


def _atlas(folder: Path, command: str) -> subprocess.CompletedProcess:
    args = shlex.split(command.split("#")[0])
    assert args[0] == "atlas", command
    return subprocess.run(
        [sys.executable, "-m", "atlas.cli", *args[1:]], capture_output=True, text=True, cwd=folder
    )


def _save_ddp(folder: Path, scale: float) -> None:
    """Weights as a DistributedDataParallel training script saves them."""
    found = importlib.util.spec_from_file_location("walkthrough_mynet", folder / "mynet.py")
    mynet = importlib.util.module_from_spec(found)  # this file's module, whatever else is imported
    found.loader.exec_module(mynet)
    torch.manual_seed(1)
    weights = {f"module.{k}": v * scale for k, v in mynet.build().state_dict().items()}
    torch.save({"model": weights, "epoch": 3}, folder / "mynet.pt")


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = walkthrough()
    assert set(blocks) == {"mynet.py", "mynet.toml", "commands"}
    (tmp_path / "mynet.py").write_text(blocks["mynet.py"])
    (tmp_path / "mynet.toml").write_text(blocks["mynet.toml"])
    write_photos(tmp_path / "photos", count=12)
    _save_ddp(tmp_path, 1.0)

    outputs = {}
    for command in [line for line in blocks["commands"].splitlines() if line.strip()]:
        done = _atlas(tmp_path, command)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        outputs[command.split()[1]] = done.stdout
    assert "64x64" in outputs["layers"]  # the module's own input size
    assert "because: first run" in outputs["plan"]
    site = tmp_path / "atlas-out" / "mynet" / "site" / "index.html"
    assert site.is_file() and str(site.relative_to(tmp_path)) in outputs["run"]
    assert re.search(r"done: \d+\s+pending: 0\s+failed: 0\s+stale: 0", outputs["status"])

    _save_ddp(tmp_path, 1.1)  # trained on: new weights over the old file
    replanned = _atlas(tmp_path, "atlas plan mynet.toml")
    assert replanned.returncode == 0, replanned.stderr
    assert re.search(r"\d+ because: the model's weights changed", replanned.stdout)
