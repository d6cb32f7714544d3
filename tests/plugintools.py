"""An installed plugin package for tests: a dist-info folder whose entry point names a module."""

from __future__ import annotations

import os
from pathlib import Path

from atlas.core.registry import PLUGIN_GROUP

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def plugin_environment(tmp_path: Path, package: str, entry: str, module: str) -> tuple[Path, dict[str, str]]:
    """A site folder holding `package`'s metadata with entry point `entry = module`, and an
    environment for a subprocess whose PYTHONPATH puts that folder, tests/ and the repository first."""
    site = tmp_path / "site-packages"
    info = site / f"{package.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\n{entry} = {module}\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    paths = [str(site), str(TESTS), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return site, env
