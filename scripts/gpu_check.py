"""The GPU check: CUDA tests and speed figures of the unit code, in one process, without Ray.

    python scripts/gpu_check.py --device cuda --out gpu-check-out   # what scripts/gpu_check.sh runs
    python scripts/gpu_check.py --device cpu                        # quick settings, for CI

GPU machines for this project are lent for about 15 minutes, start-up included, and have
PyTorch, torchvision, timm, pyarrow, pillow, click, jinja2 and tqdm but no Ray and no package
index. So this script imports no Ray, runs units through ``atlas.units.run_unit`` with a
``WorkerContext`` as a worker would, keeps inside a time budget (``--budget``, 215 s on CUDA),
and rewrites its JSON report after every section and every unit, so a run that is cut short
still reports what it measured. Sections:

- env: torch, CUDA, cuDNN and driver versions, the device and its memory;
- tests: ``pytest -m gpu tests/test_gpu.py`` (skipped, and said so, when pytest is missing);
- render: channels/s of the renderer at physical batches of 1, 8, 32, 128 images and then
  doubling up to the largest that fits in memory (fp32, and bf16 at the largest), with image-steps
  per second and the achieved TFLOP/s counted by ``torch.utils.flop_counter``;
- scan: dataset images per second through ``scan_shard`` over all nine mixed layers, on
  generated 500x375 JPEGs read from disk, decoded by PIL (one thread) and by batched
  ``decode_jpeg`` (nvJPEG on a GPU), each against min(decode, forward) ceilings measured in the
  same run, with the GPU's busy share (the rate over the forward ceiling; NVML's utilization);
- slice: the appendix job (jobs/inceptionv1.toml) cut to 32 channels of each of its nine mixed
  layers, run unit by unit through ``run_unit`` with the PNG encoding and the Parquet store
  writes included, and the full job (5,488 channels) projected from it (see ``project``).

GoogLeNet runs with random weights (``weights = "none"``): no weights can be downloaded on these
machines, and speed does not depend on the values of the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas.data import decode_for_model, open_source  # noqa: E402
from atlas.examples import BatchScanner, scan_shard  # noqa: E402
from atlas.examples.decode import Decoder, TensorDecoder  # noqa: E402
from atlas.models import LoadedModel, load_model  # noqa: E402
from atlas.optvis import make_param  # noqa: E402
from atlas.optvis import objectives as obj  # noqa: E402
from atlas.optvis.render import RenderPart, render_parts  # noqa: E402
from atlas.optvis.transforms import preset  # noqa: E402
from atlas.plan import ModelFacts, make_plan  # noqa: E402
from atlas.provenance import provenance  # noqa: E402
from atlas.spec import ExamplesSpec, LayerSpec, ModelSpec, load_spec  # noqa: E402
from atlas.store import Store, UnitRecord  # noqa: E402
from atlas.units import UnitFailed, WorkerContext, run_unit  # noqa: E402

JOB = ROOT / "jobs" / "inceptionv1.toml"
SECTIONS = ("env", "tests", "render", "scan", "slice")
LARGEST_BATCH = 4096


@dataclass(frozen=True)
class Settings:
    """Sizes of every section: the GPU run, or the quick CPU run that keeps the script alive in CI."""

    budget_s: float
    render_budget_s: float  # the render section stops trying larger batches after this
    reserve_s: float  # left for the sections after render
    render_layer: str
    render_size: int
    render_steps: int
    batches: tuple[int, ...]
    find_largest: bool
    scan_images: int
    scan_batch: int
    slice_channels: int
    slice_steps: int
    slice_size: int


GPU = Settings(
    budget_s=215,  # of the 240 s the shell script allows: imports and start-up take the rest
    render_budget_s=60,
    reserve_s=90,
    render_layer="inception4d",
    render_size=128,
    render_steps=20,
    batches=(1, 8, 32, 128),
    find_largest=True,
    scan_images=1024,
    scan_batch=128,
    slice_channels=32,
    slice_steps=512,
    slice_size=128,
)
QUICK = Settings(
    budget_s=200,  # generous: on a shared CI machine the quick run must finish, not be cut
    render_budget_s=20,
    reserve_s=10,
    render_layer="inception4d",
    render_size=48,
    render_steps=2,
    batches=(1, 2),
    find_largest=False,
    scan_images=8,
    scan_batch=4,
    slice_channels=1,
    slice_steps=2,
    slice_size=48,
)


class Report:
    """The JSON report, rewritten (atomically) whenever a figure is added."""

    def __init__(self, path: Path, started: float, budget_s: float):
        self.path = path
        self.started = started
        self.budget_s = budget_s
        self.data: dict[str, object] = {"budget_s": budget_s, "sections": {}}
        path.parent.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def put(self, section: str, figures: dict) -> None:
        self.data["sections"][section] = figures  # type: ignore[index]
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_section(device: torch.device) -> dict:
    info: dict[str, object] = dict(provenance(str(device)))
    info["cpu_count"] = os.cpu_count()
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        info["memory_gib"] = {"free": round(free / 2**30, 1), "total": round(total / 2**30, 1)}
        info["tf32_conv"] = torch.backends.cudnn.allow_tf32
    return info


def tests_section(report: Report, out: Path) -> dict:
    """``pytest -m gpu`` in a subprocess; its pass/fail/skip counts and the failures' names."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {
            "status": "skipped",
            "reason": "pytest is not installed (scripts/gpu_check.sh installs wheels)",
        }
    xml = out / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    command += [str(ROOT / "tests" / "test_gpu.py"), f"--junitxml={xml}"]
    timeout = max(10.0, min(60.0, report.left() - 30))
    try:
        run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout}
    figures: dict[str, object] = {"exit_code": run.returncode, "tail": run.stdout.strip().splitlines()[-3:]}
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        figures.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        figures["failed"] = [
            case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None
        ]
    return figures


def model_input_side(size: int, transforms: str) -> int:
    probe = torch.zeros(1, 3, size, size)
    return int(preset(transforms, size)(probe, torch.Generator().manual_seed(0)).shape[-1])


def flops_per_image_step(model: LoadedModel, layer: str, side: int) -> float:
    """Forward + backward FLOPs of the truncated model for one image (what one step costs)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, side, side, device=model.device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model.activations(x, [layer])[layer].float().mean().backward()
    return float(counter.get_total_flops())


def time_render(
    model: LoadedModel, layer: str, batch: int, settings: Settings, precision: str = "fp32"
) -> float:
    """Seconds per step of one physical batch of ``batch`` images, each on its own channel."""
    channels = model.channels(layer)

    def run(steps: int) -> None:
        objective = obj.channel(layer, [i % channels for i in range(batch)])
        param = make_param("fourier", batch, settings.render_size, seed=0, decorrelate=True)
        part = RenderPart(objective, param, 0)
        render_parts(model, [part], steps=steps, transforms="distill", precision=precision)

    run(2)  # warm-up: cuDNN picks its algorithms, memory is allocated
    synchronize(model.device)
    start = time.perf_counter()
    run(settings.render_steps)
    synchronize(model.device)
    return (time.perf_counter() - start) / settings.render_steps


def render_section(model: LoadedModel, settings: Settings, report: Report) -> dict:
    layer = settings.render_layer
    side = model_input_side(settings.render_size, "distill")
    flops = flops_per_image_step(model, layer, side)
    figures: dict[str, object] = {
        "layer": layer,
        "size": settings.render_size,
        "model_input": side,
        "steps_timed": settings.render_steps,
        "gflop_per_image_step": round(flops / 1e9, 3),
        "fp32": {},
    }

    def record(key: str, batch: int, seconds_per_step: float) -> None:
        figures[key][str(batch)] = {  # type: ignore[index]
            "ms_per_step": round(seconds_per_step * 1000, 2),
            "image_steps_per_s": round(batch / seconds_per_step, 1),
            "channels_per_s_at_512_steps": round(batch / (seconds_per_step * 512), 3),
            "tflop_per_s": round(batch * flops / seconds_per_step / 1e12, 2),
        }
        report.put("render", figures)

    batches = list(settings.batches)
    largest = 0
    stop_at = time.perf_counter() + settings.render_budget_s
    while batches:
        batch = batches.pop(0)
        if report.left() < settings.reserve_s or time.perf_counter() > stop_at:
            figures["stopped"] = f"time budget: stopped before batch {batch}"
            break
        try:
            record("fp32", batch, time_render(model, layer, batch, settings))
            largest = batch
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            figures["out_of_memory_at"] = batch
            break
        if settings.find_largest and not batches and batch * 2 <= LARGEST_BATCH:
            batches.append(batch * 2)
    figures["largest_batch"] = largest
    if model.device.type == "cuda" and largest and report.left() > settings.reserve_s:
        figures["bf16"] = {}
        record("bf16", largest, time_render(model, layer, largest, settings, precision="bf16"))
    report.put("render", figures)
    return figures


@dataclass(frozen=True)
class ScanSizes:
    """Images of each scan measurement: PIL decodes one image at a time, the tensor path batches."""

    distinct: int  # distinct JPEG files written; the others are hard links to them
    pil_images: int  # the scan with PIL decoding (one decoding thread), and its decode ceiling
    tensor_images: int  # the scan with batched JPEG decoding (nvJPEG on a GPU)
    batch: int
    repeats: int  # forward passes timed for the forward ceiling


SCAN_SIZES = {"cuda": ScanSizes(256, 512, 8192, 512, 10), "cpu": ScanSizes(8, 8, 8, 4, 2)}


def write_images(folder: Path, count: int, distinct: int) -> None:
    """``count`` 500x375 JPEGs (ImageNet's typical photo; grain over a gradient, as the ceiling
    measurement in ../shared/gpu/scan_ceiling.py): real decode work, no dataset needed."""
    generator = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 191, 500)[None, :, None]
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        if index < distinct:
            pixels = (generator.random((375, 500, 3)) * 64 + ramp).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        else:
            os.link(folder / f"{index % distinct:05d}.jpg", path)


class Utilization:
    """The GPU's utilization (NVML: share of time a kernel runs) sampled by ``nvidia-smi`` every
    100 ms while the block runs; nothing when there is no nvidia-smi."""

    def __init__(self, device: torch.device):
        self.samples: list[int] = []
        self.command = None
        if device.type == "cuda" and shutil.which("nvidia-smi"):
            uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
            self.command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self.command += ["-lms", "100", "-i", f"GPU-{uuid}" if uuid else "0"]

    def __enter__(self) -> Utilization:
        self.process = (
            subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True) if self.command else None
        )
        time.sleep(0.3 if self.process else 0)  # nvidia-smi starts before the first sample
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            out, _ = self.process.communicate(timeout=10)
            self.samples = [int(line) for line in out.split() if line.strip().isdigit()]

    def figures(self) -> dict:
        if not self.samples:
            return {"nvidia_smi": "not available"}
        return {"mean_percent": round(sum(self.samples) / len(self.samples), 1), "samples": len(self.samples)}


def scan_section(model: LoadedModel, layers: list[str], settings: Settings, work: Path) -> dict:
    """Scan images/s with PIL decoding and with batched tensor decoding (nvJPEG on a GPU), each
    against its ceilings measured here: the decoder alone, and the scan's forward pass (with its
    statistics) on batches already on the device. The GPU's busy share is the scan's rate over
    the forward ceiling, and NVML's utilization sampled during the scan."""
    sizes = SCAN_SIZES[model.device.type]
    folder = work / "images"
    write_images(folder, max(sizes.pil_images, sizes.tensor_images), sizes.distinct)
    source = open_source(folder)
    (shard,) = source.shards(max(sizes.pil_images, sizes.tensor_images))
    tensor_decoder = TensorDecoder(model.device)
    scanner = BatchScanner(model, layers)

    def rate(images: int, run: Callable[[], object]) -> float:
        synchronize(model.device)
        start = time.perf_counter()
        run()
        synchronize(model.device)
        return round(images / (time.perf_counter() - start), 1)

    def decode_all(decoder: Decoder, ids: tuple[str, ...]) -> None:
        for begin in range(0, len(ids), sizes.batch):
            decoder(source, ids[begin : begin + sizes.batch], model.input_size)

    ids, pixels, _, _ = tensor_decoder(source, shard.source_ids[: sizes.batch], model.input_size)
    pixels = torch.as_tensor(pixels).to(model.device)
    scanner.scan(ids, pixels)  # warm-up: cuDNN and autocast caches

    def forward() -> None:
        for _ in range(sizes.repeats):
            scanner.scan(ids, pixels)

    def bare() -> None:  # the forward pass alone, as ../shared/gpu/scan_ceiling.py times it
        x01 = pixels.permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(model.device.type, torch.bfloat16, enabled=scanner.bf16):
            for _ in range(sizes.repeats):
                model.activations(x01, scanner.needed)

    figures: dict[str, object] = {
        "layers": len(layers),
        "batch_size": sizes.batch,
        "precision": "bf16" if scanner.bf16 else "fp32",
        "photo": "500x375 JPEG",
        "cpu_count": os.cpu_count(),
        "bare_forward_images_per_s": rate(len(ids) * sizes.repeats, bare),
        "forward_ceiling_images_per_s": rate(len(ids) * sizes.repeats, forward),
    }
    for name, decoder, count in (
        ("pil", decode_for_model, sizes.pil_images),
        ("tensor", tensor_decoder, sizes.tensor_images),
    ):
        part = replace(shard, source_ids=shard.source_ids[:count])
        decode_all(decoder, part.source_ids[: sizes.batch])  # warm-up
        ceiling = rate(count, lambda part=part, decoder=decoder: decode_all(decoder, part.source_ids))
        with Utilization(model.device) as utilization:
            start = time.perf_counter()
            partial = scan_shard(model, layers, source, part, batch_size=sizes.batch, decoder=decoder)
            synchronize(model.device)
            seconds = time.perf_counter() - start
        scanned = partial.stats.get("scanned", 0)
        bound = min(ceiling, figures["forward_ceiling_images_per_s"])  # type: ignore[type-var]
        figures[name] = {
            "decoder": "PIL, one thread"
            if decoder is decode_for_model
            else f"decode_jpeg on {model.device.type}",
            "images": scanned,
            "seconds": round(seconds, 2),
            "images_per_s": round(scanned / seconds, 1),
            "decode_ceiling_images_per_s": ceiling,
            "share_of_min_ceiling": round(scanned / seconds / bound, 3),
            "gpu_busy_share": round(scanned / seconds / figures["forward_ceiling_images_per_s"], 3),  # type: ignore[operator]
            "utilization": utilization.figures(),
        }
    figures["images"] = figures["pil"]["images"]  # type: ignore[index]
    figures["images_per_s"] = figures["pil"]["images_per_s"]  # type: ignore[index]
    return figures


def project(per_layer: dict[str, dict], totals: dict[str, int]) -> dict:
    """The full job's render time on one device, from the slice.

    Each layer's seconds per channel (its slice unit's wall time, PNG and Parquet included,
    divided by the channels it rendered) times the layer's full channel count, summed over the
    nine layers. Layers the slice did not reach use the mean seconds per channel of those it
    did (then ``partial`` is true). Units are independent, so N GPUs divide it by N (driver and
    scheduling overhead left out; docs/CLUSTER.md measures Ray's).
    """
    rates = {layer: f["seconds"] / f["channels"] for layer, f in per_layer.items() if f.get("channels")}
    if not rates:
        return {}
    fallback = sum(rates.values()) / len(rates)
    seconds = sum(rates.get(layer, fallback) * count for layer, count in totals.items())
    return {
        "channels": sum(totals.values()),
        "seconds_one_gpu": round(seconds, 1),
        "minutes_on": {str(n): round(seconds / n / 60, 1) for n in (1, 8)},
        "partial": len(rates) < len(totals),
        "method": "sum over layers of (slice seconds per channel x the layer's channel count)",
    }


def slice_section(model: LoadedModel, settings: Settings, report: Report, work: Path) -> dict:
    """The appendix job cut to a few channels per layer, run unit by unit as a worker runs them."""
    spec = load_spec(JOB)
    layers = [layer.name for layer in spec.layers]
    totals = {layer: model.channels(layer) for layer in layers}
    count = settings.slice_channels
    render = replace(
        spec.render, steps=settings.slice_steps, size=settings.slice_size, channels_per_unit=count
    )
    spec = spec.replace(
        out=work / "slice",
        model=ModelSpec(spec.model.name, None, "none"),
        layers=tuple(LayerSpec(name, tuple(range(count))) for name in layers),
        render=render,
        examples=ExamplesSpec(enabled=False),
    )
    plan = make_plan(spec, ModelFacts(model.digest, totals), [], [])
    context = WorkerContext(model=model, examples=spec.examples)
    store = Store(spec.out)
    figures: dict[str, object] = {
        "layers": len(layers),
        "channels_per_layer": count,
        "images_per_channel": len(spec.render.objectives) - 1 + spec.render.diversity,
        "steps": settings.slice_steps,
        "size": settings.slice_size,
        "per_layer": {},
    }
    per_layer: dict[str, dict] = figures["per_layer"]  # type: ignore[assignment]
    last = 0.0
    for unit in plan.units:
        if report.left() < last * 1.2 + 5:
            figures["stopped"] = f"time budget: {len(per_layer)} of {len(layers)} layers done"
            break
        start = time.perf_counter()
        try:
            tables = run_unit(context, unit)
            store.write_unit_tables(unit.key, unit.kind, unit.layer, tables, unit.channels)
            outcome = {"rows": tables["render"].num_rows}
        except UnitFailed as err:
            store.commit(UnitRecord.failed(unit.key, unit.kind, unit.layer, str(err), unit.channels))
            outcome = {"failed": str(err)[:200]}
        synchronize(model.device)
        last = time.perf_counter() - start
        per_layer[unit.layer] = {"channels": len(unit.channels), "seconds": round(last, 2), **outcome}
        figures["shard_bytes"] = sum(p.stat().st_size for p in (spec.out / "shards").rglob("*.parquet"))
        figures["projection"] = project(per_layer, totals)
        report.put("slice", figures)
    return figures


def guarded(report: Report, name: str, run: Callable[[], dict]) -> None:
    """Run a section; an exception is reported as that section's result, and the next one runs."""
    start = time.perf_counter()
    try:
        figures = run()
    except Exception as err:  # the report must say what broke, and the other sections still run
        figures = {"error": f"{type(err).__name__}: {err}"}
    figures["section_s"] = round(time.perf_counter() - start, 1)
    report.put(name, figures)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, default=Path("gpu-check-out"))
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default: by device)")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated sections to leave out: {','.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    settings = GPU if args.device == "cuda" else QUICK
    if args.budget:
        settings = replace(settings, budget_s=args.budget)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run with --device cpu for the quick check")
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    device = torch.device(args.device)
    report = Report(args.out / "gpu_check.json", started, settings.budget_s)
    report.data["settings"] = asdict(settings)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        if "env" not in skip:
            guarded(report, "env", lambda: env_section(device))
        if "tests" not in skip:
            guarded(report, "tests", lambda: tests_section(report, args.out))
        model = load_model("torchvision:googlenet", weights="none", device=device)
        layers = [layer.name for layer in load_spec(JOB).layers]
        if "render" not in skip:
            guarded(report, "render", lambda: render_section(model, settings, report))
        if "scan" not in skip:
            guarded(report, "scan", lambda: scan_section(model, layers, settings, work))
        if "slice" not in skip:
            guarded(report, "slice", lambda: slice_section(model, settings, report, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.data["finished"] = True
    report.put(
        "total", {"seconds": round(time.perf_counter() - started, 1), "within_budget": report.left() >= 0}
    )
    print(json.dumps(report.data, indent=1, default=str))
    return report.data


if __name__ == "__main__":
    main()
