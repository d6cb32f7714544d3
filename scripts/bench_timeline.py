"""What adding one checkpoint to a timeline costs, against rebuilding the whole timeline.

A tiny CNN is trained for six short epochs, saving a checkpoint after each. A timeline over the
first five is built; then the sixth is added (`atlas timeline --add`, what a nightly job does)
and, separately, a fresh timeline over all six is built from nothing. Both runs share one local
Ray, so the figures compare the work, not Ray's start-up. Every checkpoint is probed; only the
latest is rendered (the default `render_every = 0`), or every Nth with `--render-every N`.

    PYTHONPATH=$PWD python scripts/bench_timeline.py [--channels 32] [--steps 32] [--probes 32]
    PYTHONPATH=$PWD python scripts/bench_timeline.py --render-every 1   # a full atlas per checkpoint
    PYTHONPATH=$PWD python scripts/bench_timeline.py --pages            # page sizes, 1,024 channels x 10
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import ray

from atlas.plan.spec import parse_spec
from atlas.run.timeline import run_timeline

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1] / "tests")
)  # the tests' training and timeline fixtures
from synthetic_timeline import write_synthetic_timeline  # noqa: E402
from training import train_checkpoints  # noqa: E402


def spec(root: Path, out: str, checkpoints: list[Path], args: argparse.Namespace):
    text = f"""
[job]
name = "{out}"
out = "{root / out}"
[model]
name = "tiny-cnn"
checkpoints = {[str(p) for p in checkpoints]!r}
[[layers]]
name = "conv2"
channels = "0:{args.channels}"
[[layers]]
name = "conv3"
[render]
steps = {args.steps}
size = 64
objectives = ["channel"]
[execute]
workers = {args.workers}
[timeline]
probes = {args.probes}
render_every = {args.render_every}
"""
    return parse_spec(text.replace("'", '"'), source=str(root / f"{out}.toml"), base=root)


def timed(label: str, job, add: tuple[Path, ...] = ()) -> float:
    start = time.perf_counter()
    result = run_timeline(job, add=add)
    seconds = time.perf_counter() - start
    computed = ", ".join(f"{n} {kind}" for kind, n in sorted(result.computed.items()))
    print(f"{label:<34} {seconds:7.1f} s   computed: {computed}; {result.skipped} units already done")
    return seconds


def page_sizes() -> None:
    """The timeline pages of a synthetic 1,024-channel layer over ten checkpoints: time and bytes."""
    from atlas.site import build_site

    with tempfile.TemporaryDirectory() as tmp:
        # rendered and scanned: every 3rd checkpoint and the latest (0, 3, 6, 9), 4 examples each
        write_synthetic_timeline(
            Path(tmp), "layer", checkpoints=10, channels=1024, image_size=64, scanned=(0, 3, 6, 9)
        )
        start = time.perf_counter()
        site = build_site(Path(tmp)).parent
        print(
            f"site with a 1,024-channel x 10-checkpoint timeline built in {time.perf_counter() - start:.1f} s"
        )
        for name in ("index.html", "layer.timeline.html", "layer.timeline.512.html"):
            print(f"  {name:<26} {(site / name).stat().st_size / 1024:8.1f} KiB")
        page = (site / "layer.timeline.512.html").read_text()
        images = re.findall(r'<img[^>]* src="([^"]+)"', page)
        weight = sum((site / src).stat().st_size for src in images)
        print(f"  channel 512 with its {len(images)} images: {weight / 1024:.1f} KiB (lazy-loaded)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=32, help="rendered channels of conv2")
    parser.add_argument("--steps", type=int, default=32, help="render steps")
    parser.add_argument("--probes", type=int, default=32, help="probe images")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--render-every",
        type=int,
        default=0,
        help="render every Nth checkpoint too (1: a full atlas per checkpoint)",
    )
    parser.add_argument("--pages", action="store_true", help="only the page sizes of a synthetic timeline")
    args = parser.parse_args()
    if args.pages:
        page_sizes()
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = train_checkpoints(root / "ckpt", 6, steps=4, batch=16)
        ray.init(
            address="local",
            num_cpus=args.workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        try:
            timed("build 5 checkpoints", spec(root, "five", paths[:5], args))
            added = timed("add the 6th (--add)", spec(root, "five", paths[:5], args), add=(paths[5],))
            rebuilt = timed("rebuild all 6 from nothing", spec(root, "six", paths, args))
        finally:
            ray.shutdown()
    print(f"adding one checkpoint costs {added / rebuilt:.0%} of a rebuild ({rebuilt / added:.1f}x faster)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
