"""Every script in scripts/ runs: its smallest settings, so a figure in the docs stays reproducible.

One entry per file of the directory listing: a new script without an entry fails here. An entry
is the script's arguments (the documented command with smaller numbers) and a regular expression
its output must match: a figure line, so that a script which exits 0 having measured nothing
fails. A module that `bench.py` runs (`via="bench.py"`) is checked in that run's output; an entry
with `after` starts once that entry's run has finished (`nightly.sh` builds the tiny atlas that
the scripts reading a finished atlas read). A string entry names the test that already runs the
script. All runs start at once, four at a time, each in its own process, when the first entry is
checked; `{tmp}` in an argument is the run's scratch folder.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
TIMEOUT_S = 600

# The tiny atlas of the scripts that read a finished one: tiny-cnn, two channels, four steps,
# examples from the demo photos; `ATLAS_JOB` adds an activation atlas on a 4x4 grid.
JOB = """
[job]
name = "smoke"
out = "{tmp}/unused"
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
channels = "0:2"
[render]
steps = 4
size = 32
batch = 4
objectives = ["channel"]
channels_per_unit = 2
[examples]
source = "demo"
k = 2
shard_size = 100
batch_size = 50
[execute]
workers = 1
"""
ATLAS_JOB = (
    JOB
    + """
[activation_atlas]
layers = ["conv2"]
grids = [4]
n_neighbors = 10
min_count = 3
"""
)
OUT = "{tmp}/atlas"  # written by the nightly.sh entry


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    prints: str  # a regular expression that stdout + stderr must match
    via: str = ""  # the script that runs this module (default: the entry's own file)
    after: str = ""  # the entry whose run must finish first
    peers: tuple[str, ...] = ()  # optional packages: missing, the run must say so, and is skipped
    missing: str = ""  # what the run prints when a peer is missing


TINY = ("--model", "tiny-cnn", "--layer", "conv2")
BENCH = ("--quick", "--threads", "1", "--only", "overhead,quality", *TINY)
SMOKE: dict[str, Run | str] = {
    "nightly.sh": Run(
        ("--out", OUT, "{tmp}/atlas-job.toml"), r"nightly: done in \d+ s; site in .*/atlas/site"
    ),
    "actatlas_agreement.py": Run(
        (OUT, "conv2"), r'"agreement": [0-9.]+, "agreement_shuffled"', after="nightly.sh"
    ),
    "actatlas_icons.py": Run(("--seeds", "0", "--steps", "8"), r'"new_beats_flat_pairs": \d+'),
    "actatlas_cost.py": Run(
        (*TINY, "--images", "8", "--icons", "1", "--steps", "2", "--size", "32", "--grid", "4"),
        r'"icons_agreement": [0-9.]+',
    ),
    "bench.py": Run(BENCH, r"render / bare: x[0-9.]+ wall"),
    "bench_common.py": Run(BENCH, r'"cores": \d+, "torch_threads": 1', via="bench.py"),
    "bench_compile.py": Run(
        (
            "--channels",
            "1",
            "--size",
            "32",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--backend",
            "aot_eager",
        ),
        r"first compiled call [0-9.]+ s \(1 of 1 frames compiled.*\n.*wall: hooks [0-9.]+ ms/step",
    ),
    "bench_fold.py": Run(
        (*TINY, "--channels", "1", "--steps", "1", "--repeats", "1", "--device", "cpu"),
        r"wall: [0-9.]+ ms/step unfolded, [0-9.]+ folded",
    ),
    "bench_journal.py": Run(("--units", "50"), r"50 units: commit [0-9.]+ ms/unit mean"),
    "bench_lucent.py": Run(
        ("--quick", "--threads", "1", "--only", "render", *TINY),
        r"speed-up vs lucent at the same model input: x[0-9.]+",
        via="bench.py",
        peers=("lucent", "kornia"),
        missing="the render comparison needs torch-lucent and kornia",
    ),
    "bench_equal_quality.py": Run(
        (
            *TINY,
            "--channels",
            "0,1",
            "--size",
            "32",
            "--lucent-steps",
            "4",
            "--ladder",
            "2,4",
            "--threads",
            "1",
        ),
        r"\| 4 \| -?[0-9.]+.* \| [0-9]/2 \| [0-9.]+ \|[\s\S]*equal quality: ",
        peers=("lucent", "kornia"),
        missing="the render comparison needs torch-lucent and kornia",
    ),
    "bench_overlap.py": Run(
        ("--units", "2", "--calls", "2", "--steps", "1", "--size", "32", "--images-per-pass", "8")
        + ("--repeats", "1"),
        r"one call: optimization alone [0-9.]+ s; serial [0-9.]+ s wall .*stall share [0-9.]+%; "
        r"writer thread [0-9.]+ s wall .*\n.*\n2 calls: .*pipelined [0-9.]+ s wall",
    ),
    "bench_quality.py": Run(BENCH, r"\| MACO \| standard \| -?[0-9.]+ \|", via="bench.py"),
    "bench_ray.py": Run(
        ("--steps", "1", "--repeats", "1", "--job", "{tmp}/job.toml"), r'"overhead": -?[0-9.]+'
    ),
    "bench_budgets.py": Run(
        ("--models", "tiny-cnn", "--steps", "2", "--sizes", "32", "--channels-64", "1"),
        r"\| tiny-cnn \| conv2 \| 32 \| 2 \| 1 \| -?[0-9.]+ \| -?[0-9.]+ \| -?[0-9.]+ \| ",
    ),
    "bench_recipes.py": Run(
        (*TINY, "--recipes", "default", "--steps", "2", "--classes", "2", "--channels", "1", "--size", "32")
        + ("--resize", "32", "--photos", "4"),
        r"\| default \| 2 \| \d+% \|",
    ),
    "bench_render.py": Run(BENCH, r"bare forward\+backward", via="bench.py"),
    "bench_sae.py": Run(
        ("--features", "256", "--images", "8,16", "--batch-size", "4", "--shard-size", "8"),
        r"16 images: scan [0-9.]+ s \([0-9.]+ images/s\), peak RSS \d+ MiB .*finalize 256 features",
    ),
    "bench_sae_match.py": Run(
        ("--features", "300", "--width", "16", "--candidates", "4", "--dense-max", "0"),
        r"sparse \(4 candidates each way\)(.|\n)*^match [0-9.]+ s, peak RSS \d+ MiB .*planted pairs recovered",
    ),
    "bench_scan.py": Run(
        ("--images", "8", "--batch-size", "4", "--shard-size", "8", "--k", "2", "--rounds", "1"),
        r"scan_shard +: +[0-9.]+ images/s",
    ),
    "bench_step.py": Run(
        (*TINY, "--parts", "1", "2", "--steps", "1", "--size", "32"),
        r"parts +2 \( +8 images\): +[0-9]+ ops/step in the loop",
    ),
    "bench_scan_stats.py": Run(
        ("--seconds", "0.5"),
        r"this +tiny-cnn scan_images_per_s=[0-9.]+ fold_images_per_s=[0-9.]+",
    ),
    "bench_scan_data.py": Run(
        ("--images", "16", "--models", "tiny-cnn", "--shard-size", "8"),
        r"scan speed-up from 1 to 2 decoding CPUs: x[0-9.]+",
    ),
    "bench_help.py": Run(
        ("--runs", "1"), r"atlas --help \(.*\): median [0-9.]+ s over 1 runs, peak RSS [0-9.]+ MiB"
    ),
    "bench_site.py": Run(
        ("--out", "{tmp}/site", "--layers", "inception3a", "--image-size", "16", "--crop-size", "8")
        + ("--examples-k", "1", "--diversity", "1", "--workers", "1"),
        r"build: [0-9.]+ s wall.* for 256 channels",
    ),
    "bench_timeline.py": Run(("--pages",), r"layer\.timeline\.html +[0-9.]+ KiB"),
    "bench_vit.py": Run(
        ("--steps", "2", "--seeds", "1", "--overhead-steps", "1", "--repeats", "1", "--batch", "1"),
        r"(?s)\| maco \| standard \| -?[0-9.]+ \|.*render / bare: x[0-9.]+ wall",
    ),
    "calibrate_flags.py": Run(
        ("--out", "{tmp}/calibrate", "--model", "tiny-cnn", "--layers", "conv2", "--channels", "2")
        + ("--steps", "4", "--size", "32"),
        r"any flag +good: \d+/2 \(\d+%\) +adversarial: \d+/2",
    ),
    "check_demo.py": Run((OUT,), r"2 channels vs \d+ images: ratio min x-?[0-9.]+", after="nightly.sh"),
    "check_optvis.py": Run(
        ("--steps", "2", "--size", "32", "--threads", "1", "--diversity-weights", "5"),
        r"class +\d+: top-1 +\d+",
    ),
    "gen_docs.py": Run(("--check",), r"\A\Z"),  # a check: silent when the docs are current
    "gpu_check.py": "tests/test_gpu_check.py",
    "gpu_check.sh": "tests/test_gpu_check.py",
    "measure_cluster.py": Run(
        ("--units", "4", "--workers", "1"), r"overhead: -?[0-9.]+ ms/unit beyond the work"
    ),
    "project_appendix.py": Run((), r"\| 58 \| 1 \| [0-9.]+ min \|"),
    "quality_report.py": Run((OUT,), r"\| conv2 \| 2 \| \d+ \|", after="nightly.sh"),
    "rerun_exit.py": Run(
        ("--runs", "2", "--load", "0", "--images", "4"), r"0 of 2 no-op reruns exited non-zero"
    ),
    "spec_info.py": Run(("jobs/demo.toml",), r"^demo atlas-out/demo$"),
    "submit.sh": Run(
        ("--dry-run", "--out", "{tmp}/atlas", "--then-site", "{tmp}/job.toml"),
        r"ray job submit --address \S+ --working-dir \S+ --submission-id atlas-smoke-\S+ -- bash -c "
        r"atlas\\ run.*--no-site",
    ),
}


def _command(script: str, args: tuple[str, ...], tmp: Path) -> list[str]:
    runner = ["bash"] if script.endswith(".sh") else [sys.executable]
    return [*runner, str(SCRIPTS / script), *(a.format(tmp=tmp) for a in args)]


def _run(command: list[str], first: Future | None) -> tuple[subprocess.CompletedProcess, float]:
    if first is not None:
        first.result()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return done, time.perf_counter() - start


# The longest runs (measured here) start first, so that the four slots end together.
LONGEST = ("nightly.sh", "rerun_exit.py", "bench_ray.py", "check_optvis.py", "measure_cluster.py")


def _start_order(entry: tuple[str, Run]) -> tuple[bool, int]:
    """Runs that wait for another go last (they would hold a slot idle); the longest go first."""
    name, run = entry
    return bool(run.after), LONGEST.index(name) if name in LONGEST else len(LONGEST)


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    tmp = tmp_path_factory.mktemp("scripts")
    (tmp / "job.toml").write_text(JOB.format(tmp=tmp))
    (tmp / "atlas-job.toml").write_text(ATLAS_JOB.format(tmp=tmp))
    entries = [(n, r) for n, r in SMOKE.items() if isinstance(r, Run)]
    pool = ThreadPoolExecutor(4)  # more only queue for the same cores
    runs: dict[tuple[str, tuple[str, ...]], Future] = {}
    futures: dict[str, Future] = {}
    for name, run in sorted(entries, key=_start_order):
        key = (run.via or name, run.args)
        if key not in runs:
            runs[key] = pool.submit(_run, _command(*key, tmp), futures.get(run.after))
        futures[name] = runs[key]
    yield futures
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
    print(f"{name}: {seconds:.1f} s")
    output = done.stdout + done.stderr
    missing = [peer for peer in entry.peers if importlib.util.find_spec(peer) is None]
    if missing:
        assert entry.missing in output, f"{name} without {missing} should say so:\n{output[-3000:]}"
        pytest.skip(f"{', '.join(missing)} not installed: {entry.missing}")
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stderr[-3000:]}"
    assert re.search(entry.prints, output, re.MULTILINE), (
        f"{name} printed no line matching {entry.prints!r}:\n{output[-3000:]}"
    )


def test_no_entry_names_a_script_that_is_gone() -> None:
    assert sorted(SMOKE) == LISTED


# A second mode of bench_site.py: one SAE layer (quantile groups, neighbours, the feature index),
# 300 features so that the layer has two pages.
SAE_SITE = Run(
    ("--out", "{tmp}/site", "--sae", "300", "--image-size", "16", "--crop-size", "8")
    + ("--examples-k", "1", "--diversity", "1"),
    r"SAE build: [0-9.]+ s wall.* for 300 features.*peak RSS \d+ MiB(?s:.*)2 pages, largest \d+ kB(?s:.*)300 files\) and its sprite: 2 requests",
)


def test_bench_site_measures_an_sae_layer(tmp_path: Path) -> None:
    done, seconds = _run(_command("bench_site.py", SAE_SITE.args, tmp_path), None)
    print(f"bench_site.py --sae: {seconds:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(SAE_SITE.prints, done.stdout), done.stdout[-3000:]
