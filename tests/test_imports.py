"""What importing atlas costs and needs: no torch for `import atlas`, no Ray for the unit code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_cheap_and_units_run_without_ray_installed():
    """The GPU machine has no Ray: the unit code, store, job runner, CLI, API and gpu_check import
    without it. `import atlas` alone loads no torch, and `atlas.examples` is the API function."""
    script = textwrap.dedent(
        f"""
        import sys

        class HideRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("ray is hidden")

        sys.meta_path.insert(0, HideRay())
        import atlas
        assert "torch" not in sys.modules
        import atlas.run.worker, atlas.store.store, atlas.run.job, atlas.cli, atlas.site, atlas.api
        from atlas.kinds.examples import scan_shard
        assert callable(atlas.examples) and atlas.examples.__module__ == "atlas.api"
        sys.path.insert(0, {str(ROOT / "scripts")!r})
        import gpu_check
        assert not [m for m in sys.modules if m == "ray" or m.startswith("ray.")]
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
