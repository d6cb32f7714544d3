"""Benchmarks of the atlas: speed against torch-lucent and the physical limit, Ray overhead, memory
and feature-visualization quality. BENCHMARKS.md records the figures and the commands.

    python scripts/bench.py                          # every CPU section (about 15 min on 2 cores)
    python scripts/bench.py --quick                  # tiny settings, a smoke run
    python scripts/bench.py --only render,overhead   # a subset
    python scripts/bench.py --device cuda            # GPU figures, batch-size scaling included

Sections: render (channels/min vs lucent), overhead (render step vs bare forward+backward),
scan (dataset scan vs bare forward, via scripts/bench_scan.py), ray (demo job under Ray vs one
process, worker and driver memory), quality (activation, high-frequency energy and steps to 90%
per parameterization), site (site build at InceptionV1 scale, via scripts/bench_site.py), batch
(channels/min per render batch size; default on CUDA only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from bench_common import machine, median, spread  # noqa: E402

from atlas.models import LoadedModel  # noqa: E402

SECTIONS = ("render", "overhead", "scan", "ray", "quality", "site", "batch")
MODEL = "efficientnet-lite0"
MID_LAYERS = {MODEL: "_blocks.9"}  # of _blocks.0.._blocks.15: 112 channels, 14x14 at 224 px


@dataclass(frozen=True)
class Settings:
    """Sizes of every section; ``--quick`` shrinks them to a smoke run."""

    render_channels: int = 8
    render_size: int = 128
    render_steps: int = 32
    repeats: int = 3
    lucent_single_channels: int = 1
    lucent_default: bool = True
    limits: bool = True  # overhead: also the whole model and channels_last
    scan_images: int = 256
    ray_steps: int = 2
    ray_repeats: int = 2
    quality_channels: int = 4  # spread evenly over the layer: 0, 28, 56, 84 of 112
    quality_photos: int | None = None  # dataset crops searched for the best example (None: all)
    quality_size: int = 128
    quality_steps: int = 128
    quality_every: int = 8
    batches: tuple[int, ...] = (1, 4, 16, 64)


QUICK = Settings(
    render_channels=2,
    render_size=64,
    render_steps=2,
    repeats=1,
    lucent_single_channels=0,
    lucent_default=False,
    limits=False,
    scan_images=32,
    ray_steps=1,
    ray_repeats=1,
    quality_channels=2,
    quality_photos=64,
    quality_size=64,
    quality_steps=4,
    quality_every=2,
    batches=(1, 2),
)


def parse_sections(text: str | None, device: torch.device) -> list[str]:
    """The sections to run, in the canonical order; bad names fail with the list of good ones."""
    if text is None:
        return [s for s in SECTIONS if s != "batch" or device.type == "cuda"]
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown or not wanted:
        raise SystemExit(
            f"--only: unknown section {unknown[0] if unknown else '(none)'!r}; "
            f"use some of {', '.join(SECTIONS)}"
        )
    return [s for s in SECTIONS if s in wanted]


def _script(name: str, *args: str, threads: int | None = None) -> str:
    """Run another benchmark script of this folder and return what it printed.

    ``threads`` reaches torch in the child through OMP_NUM_THREADS (torch reads it at start).
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def _number(pattern: str, text: str) -> float | None:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else None


def run_render(model: LoadedModel, layer: str, settings: Settings) -> dict:
    from bench_render import RenderCase, throughput

    case = RenderCase(
        layer, tuple(range(settings.render_channels)), settings.render_size, settings.render_steps
    )
    result = throughput(
        model, case, settings.repeats, settings.lucent_single_channels, settings.lucent_default
    )
    print(
        f"render: {case.layer}, {len(case.channels)} channels in one batch, {case.size} px "
        f"(model input {result['model_input_size']} px), {case.steps} steps, {case.transforms} transforms, "
        f"median of {settings.repeats} interleaved runs"
    )
    for name, per_minute in result["channels_per_minute"].items():
        print(
            f"  {name:44s} {per_minute:7.2f} channels/min, {result['channels_per_cpu_minute'][name]:7.2f} "
            f"per CPU-minute   (wall {spread(result['seconds'][name])}, CPU {spread(result['cpu_seconds'][name])})"
        )
    print(
        f"  speed-up vs lucent at the same model input: x{result['speedup_vs_lucent']:.2f} wall, "
        f"x{result['cpu_speedup_vs_lucent']:.2f} CPU time   target >= 1.5"
    )
    print(
        f"  speed-up vs lucent given the model as its users load it (default memory layout): "
        f"x{result['speedup_vs_lucent_plain_model']:.2f} wall, x{result['cpu_speedup_vs_lucent_plain_model']:.2f} CPU time"
    )
    return result


def run_overhead(model: LoadedModel, layer: str, settings: Settings) -> dict:
    from bench_render import CHANNELS_LAST, WHOLE_MODEL, RenderCase, overhead

    case = RenderCase(
        layer, tuple(range(settings.render_channels)), settings.render_size, settings.render_steps
    )
    result = overhead(model, case, settings.repeats, limits=settings.limits)
    print(
        f"overhead: batch {result['batch']}, {case.size} px (model input {result['model_input_size']} px), "
        f"{case.steps} steps, {case.layer}"
    )
    for name, seconds in result["seconds_per_step"].items():
        print(
            f"  {name:22s} {seconds:7.3f} s/step   (whole runs: wall {spread(result['seconds'][name])}, "
            f"CPU {spread(result['cpu_seconds'][name])})"
        )
    print(
        f"  render / bare: x{result['ratio']:.3f} wall, x{result['cpu_ratio']:.3f} CPU time (whole call); "
        f"x{result['ratio_steps_only']:.3f} wall, x{result['cpu_ratio_steps_only']:.3f} CPU without the "
        f"final no-grad forward ({spread(result['seconds']['final forward'])})   target <= 1.15"
    )
    per_step = result["seconds_per_step"]
    if WHOLE_MODEL in per_step:
        bare = per_step["bare forward+backward"]
        print(
            f"  truncation saves x{per_step[WHOLE_MODEL] / bare:.2f} over the whole model; channels_last "
            f"would make the bare step x{bare / per_step[CHANNELS_LAST]:.2f} faster"
        )
    return result


def run_scan(device: torch.device, settings: Settings, threads: int | None) -> dict:
    text = _script(
        "bench_scan.py",
        "--model",
        MODEL,
        "--images",
        str(settings.scan_images),
        "--memory",
        "",
        "--device",
        device.type,
        threads=threads,
    )
    ratio = _number(r"scan_shard\s*:[^(]*\(x([\d.]+)", text)
    print("scan (scripts/bench_scan.py):\n" + text.rstrip())
    print(f"  scan / bare forward: x{ratio}   target >= 0.85")
    return {"output": text, "ratio": ratio}


def run_ray(settings: Settings) -> dict:
    result = json.loads(
        _script("bench_ray.py", "--steps", str(settings.ray_steps), "--repeats", str(settings.ray_repeats))
    )
    print(
        f"ray: demo job with {result['steps']} render steps, {result['units']} units, "
        f"median of {result['repeats']}"
    )
    print(
        f"  one process : {result['in_process_seconds']:7.1f} s   peak RSS {result['in_process_peak_rss_mib']:.0f} MiB"
    )
    print(
        f"  run_job/Ray : {result['ray_job_seconds']:7.1f} s   (+ cluster start {result['cluster_start_seconds']:.1f} s)"
    )
    print(f"  overhead beyond cluster start: {100 * result['overhead']:+.1f}%   target <= +10%")
    print(
        f"  peak RSS: worker {result['worker_peak_rss_mib']:.0f} MiB, driver {result['driver_peak_rss_mib']:.0f} MiB"
    )
    return result


def run_quality(model: LoadedModel, layer: str, settings: Settings) -> dict:
    from bench_quality import quality

    width = model.channels(layer)
    count = min(settings.quality_channels, width)
    channels = [i * width // count for i in range(count)]
    result = quality(
        model,
        layer,
        channels,
        settings.quality_size,
        settings.quality_steps,
        settings.quality_every,
        photos=settings.quality_photos,
    )
    reference = result["dataset"]
    print(
        f"quality: {layer} channels {channels}, {result['size']} px, "
        f"{result['steps']} steps, lr {result['lr']}; best demo photo of {reference['images']}: "
        f"{[round(v, 2) for v in reference['best_mean_activation']]}, photos' HF share "
        f"{reference['high_frequency_share']:.3f}"
    )
    print("  | parameterization | transforms | activation / best photo | HF energy share | steps to 90% |")
    print("  | --- | --- | --- | --- | --- |")
    for row in result["rows"]:
        print(
            f"  | {row['param']} | {row['transforms']} | {row['relative_activation_median']:.2f} "
            f"| {row['high_frequency_share_median']:.3f} | {row['steps_to_90_median']:.0f} |"
        )
    return result


def speedup_ceiling(render: dict, overhead: dict) -> float:
    """lucent's CPU seconds per step over the bare truncated forward + backward's: the best
    speed-up any renderer built on this model's forward pass could show against lucent.

    CPU time, because the two come from different sections, run minutes apart on a shared machine.
    """
    lucent_step = median(render["cpu_seconds"]["lucent"]) / render["steps"]
    return lucent_step / (median(overhead["cpu_seconds"]["bare forward+backward"]) / overhead["steps"])


def run_site() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        text = _script("bench_site.py", "--out", tmp)
    print("site (scripts/bench_site.py):\n" + text.rstrip())
    return {
        "output": text,
        "build_seconds": _number(r"build: ([\d.]+) s", text),
        "peak_rss_mib": _number(r"peak RSS[^:]*: ([\d.]+) MiB", text),
    }


def run_batch(model: LoadedModel, layer: str, settings: Settings) -> dict:
    from bench_render import batch_scaling

    result = batch_scaling(
        model, layer, settings.render_size, settings.render_steps, settings.batches, settings.repeats
    )
    print(f"batch scaling: {layer}, {settings.render_size} px, {settings.render_steps} steps")
    for name, per_minute in result["channels_per_minute"].items():
        print(f"  {name:10s} {per_minute:9.1f} channels/min  (wall {spread(result['seconds'][name])})")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks that everything runs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--model", default=MODEL, help=f"model of the render and quality sections ({MODEL})")
    parser.add_argument("--layer", help=f"mid layer to render (default for {MODEL}: {MID_LAYERS[MODEL]})")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)

    from atlas.models import load_model, pick_device

    device = pick_device(args.device)
    layer = args.layer or MID_LAYERS.get(args.model)
    if layer is None:
        parser.error(
            f"--layer is needed for {args.model!r} (a mid layer; `atlas layers {args.model}` lists them)"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else Settings()
    sections = parse_sections(args.only, device)
    figures: dict[str, object] = {
        "machine": machine(device),
        "quick": args.quick,
        "model": args.model,
        "layer": layer,
    }
    print(json.dumps(figures["machine"]))
    model = (
        load_model(args.model, device=device)
        if {"render", "overhead", "quality", "batch"} & set(sections)
        else None
    )
    runners = {
        "render": lambda: run_render(model, layer, settings),
        "overhead": lambda: run_overhead(model, layer, settings),
        "scan": lambda: run_scan(device, settings, args.threads),
        "ray": lambda: run_ray(settings),
        "quality": lambda: run_quality(model, layer, settings),
        "site": run_site,
        "batch": lambda: run_batch(model, layer, settings),
    }
    for section in sections:
        figures[section] = runners[section]()
        sys.stdout.flush()
    if "render" in figures and "overhead" in figures:
        figures["render"]["ceiling_vs_lucent"] = speedup_ceiling(figures["render"], figures["overhead"])
        print(
            f"ceiling: a renderer that cost only the bare forward+backward would be "
            f"x{figures['render']['ceiling_vs_lucent']:.2f} as fast as lucent (CPU time)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return figures


if __name__ == "__main__":
    main()
