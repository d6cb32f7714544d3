"""Every script in scripts/ runs: its smallest settings, so a figure in the docs stays reproducible.

One entry per file of the directory listing: a new script without an entry fails here. Entries
are the script's arguments; `IMPORT` only imports a module that other scripts run (its figures
come through `bench.py`); `HELP` runs `--help` (it imports everything the script imports) where
the script needs a built atlas, Ray or minutes; `COVERED` names the test that already runs it.
All scripts start at once, each in its own process, when the first entry is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
IMPORT = ("import",)
HELP = ("--help",)
TIMEOUT_S = 600

TINY = ["--model", "tiny-cnn", "--layer", "conv2"]
SMOKE: dict[str, tuple[str, ...] | str] = {
    "actatlas_agreement.py": HELP,  # needs an activation-atlas job's output folder
    "actatlas_cost.py": (
        *TINY,
        "--images",
        "8",
        "--icons",
        "1",
        "--steps",
        "2",
        "--size",
        "32",
        "--grid",
        "4",
    ),
    "bench.py": HELP,  # `--quick` runs every section (minutes); its parts are the entries below
    "bench_common.py": IMPORT,
    "bench_compile.py": HELP,  # torch.compile takes minutes on CPU
    "bench_fold.py": (*TINY, "--channels", "1", "--steps", "1", "--repeats", "1", "--device", "cpu"),
    "bench_journal.py": ("--units", "50"),
    "bench_lucent.py": IMPORT,
    "bench_quality.py": IMPORT,
    "bench_ray.py": HELP,  # starts Ray twice
    "bench_recipes.py": HELP,
    "bench_render.py": IMPORT,
    "bench_scan.py": ("--images", "8", "--batch-size", "4", "--shard-size", "8", "--k", "2", "--rounds", "1"),
    "bench_scan_data.py": HELP,  # Ray Data
    "bench_step.py": (*TINY, "--parts", "1", "2", "--steps", "1", "--size", "32"),
    "bench_site.py": HELP,
    "bench_timeline.py": ("--pages",),
    "bench_vit.py": HELP,
    "check_demo.py": HELP,  # needs the demo atlas (`atlas demo`)
    "check_optvis.py": HELP,
    "gen_docs.py": ("--check",),
    "gpu_check.py": "tests/test_gpu_check.py",
    "gpu_check.sh": "tests/test_gpu_check.py",
    "measure_cluster.py": HELP,  # Ray
    "nightly.sh": HELP,
    "project_appendix.py": (),
    "quality_report.py": HELP,  # needs the demo atlas
    "rerun_exit.py": ("--runs", "2", "--load", "0", "--images", "4"),
    "spec_info.py": ("jobs/demo.toml",),
    "submit.sh": HELP,
}


def _command(name: str, args: tuple[str, ...]) -> list[str]:
    if args == IMPORT:
        return [sys.executable, "-c", f"import {Path(name).stem}"]
    runner = ["bash"] if name.endswith(".sh") else [sys.executable]
    return [*runner, str(SCRIPTS / name), *args]


def _run(name: str, args: tuple[str, ...], tmp: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    done = subprocess.run(
        _command(name, args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    return done, time.perf_counter() - start


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    tmp = tmp_path_factory.mktemp("scripts")
    runnable = {n: a for n, a in SMOKE.items() if isinstance(a, tuple)}
    pool = ThreadPoolExecutor(4)  # more only queue for the same cores
    yield {name: pool.submit(_run, name, args, tmp) for name, args in runnable.items()}
    pool.shutdown(wait=True)


LISTED = sorted(p.name for p in SCRIPTS.iterdir() if p.suffix in (".py", ".sh"))


@pytest.mark.parametrize("name", LISTED)
def test_every_script_runs_its_smoke_settings(name: str, smoke_runs: dict[str, Future]) -> None:
    assert name in SMOKE, f"scripts/{name} has no smoke entry in tests/test_scripts.py"
    entry = SMOKE[name]
    if isinstance(entry, str):
        assert (ROOT / entry).is_file()
        return
    done, seconds = smoke_runs[name].result()
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stderr[-3000:]}"
    print(f"{name}: {seconds:.1f} s")


def test_no_entry_names_a_script_that_is_gone() -> None:
    assert sorted(SMOKE) == LISTED
