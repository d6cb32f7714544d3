"""The GPU check: CUDA tests and speed figures of the unit code, in one process, without Ray.

    python scripts/gpu_check.py --device cuda --out gpu-check-out   # what scripts/gpu_check.sh runs
    python scripts/gpu_check.py --device cpu                        # quick settings, for CI

GPU machines for this project are lent for about 15 minutes, start-up included, and have
PyTorch, torchvision, timm, pyarrow, pillow, click, jinja2 and tqdm but no Ray and no package
index. So this script imports no Ray, runs units through ``atlas.run.worker.run_units`` with a
``WorkerContext`` as a worker would, keeps inside a time budget (``--budget``, 400 s on CUDA, of
the 420 s ``gpu_check.sh`` allows, compilation included), and rewrites its JSON report after
every section and every layer, so a run that is cut short still reports what it measured.
Sections:

- env: torch, CUDA, cuDNN and driver versions, the device and its memory;
- tests: ``pytest -m gpu tests/test_gpu.py`` (skipped, and said so, when pytest is missing);
- render: channels/s of the renderer at physical batches of 1, 8, 32, 128 images and then
  doubling up to the largest that fits in memory (fp32, and bf16 at the largest), with image-steps
  per second and the achieved TFLOP/s counted by ``torch.utils.flop_counter``;
- scan: dataset images per second through ``scan_shard`` over all nine mixed layers, on
  generated 500x375 JPEGs read from disk, decoded by PIL (one thread) and by batched
  ``decode_jpeg`` (nvJPEG on a GPU), each against min(decode, forward) ceilings measured in the
  same run, with the GPU's busy share (the rate over the bare forward pass, no statistics; NVML's utilization);
- slice: the appendix job (jobs/inceptionv1.toml) cut to 128 channels of each of its nine mixed
  layers and run as a GPU worker runs it: each layer's 16 units packed into one call (one
  physical batch of 896 images), compiled (the compilation timed apart), bf16, 48 steps scaled
  to 512, PNG encoding, quality records and Parquet writes included; then the bare compiled
  step at the same batch (``bare_step``: the ceiling), the renderer's ratio to it and its own
  share (parameterization + transforms), and the full job (5,488 channels) projected from it
  (see ``project``; target: 15 min on one H200, 1.15x the bare step); last, the stall share
  (``stalls``: the wall time of a worker's calls outside optimization) of the last two layers'
  calls one after another, and pipelined with the writer thread as a GPU worker runs them.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_overlap import pipelined  # noqa: E402  (scripts/, beside this file)

from atlas.core.provenance import provenance  # noqa: E402
from atlas.data.open import open_source  # noqa: E402
from atlas.data.source import decode_for_model  # noqa: E402
from atlas.kinds.examples import BatchScanner, scan_shard  # noqa: E402
from atlas.kinds.examples.decode import Decoder, TensorDecoder  # noqa: E402
from atlas.models import LoadedModel, load_model  # noqa: E402
from atlas.optvis import make_param  # noqa: E402
from atlas.optvis import objectives as obj  # noqa: E402
from atlas.optvis.autobatch import pass_capacity  # noqa: E402
from atlas.optvis.recipes import render_channel_sets  # noqa: E402
from atlas.optvis.render import RenderPart, render_parts  # noqa: E402
from atlas.optvis.transforms import preset  # noqa: E402
from atlas.plan.spec import ExamplesSpec, LayerSpec, ModelSpec, load_spec  # noqa: E402
from atlas.plan.units import ModelFacts, Unit, make_plan  # noqa: E402
from atlas.run.worker import UnitFailed, WorkerCalls, WorkerContext, run_units  # noqa: E402
from atlas.store.location import open_location  # noqa: E402
from atlas.store.store import Store, UnitRecord  # noqa: E402

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
    slice_compile: str  # torch.compile backend of the slice's steps ("" for none)
    slice_precision: str


GPU = Settings(
    budget_s=400,  # of the 420 s the shell script allows: imports and start-up take the rest
    render_budget_s=30,
    reserve_s=300,
    render_layer="inception4d",
    render_size=128,
    render_steps=20,
    batches=(32, 1024),  # the sweep to 4096 is on record (../shared/gpu, 2026-12-04); time goes to the slice
    find_largest=False,
    scan_images=1024,
    scan_batch=128,
    slice_channels=128,  # 16 units of 8 channels x 7 images: one physical batch of 896 images
    slice_steps=48,  # scaled to the job's 512 in the projection
    slice_size=128,
    slice_compile="inductor",
    slice_precision="bf16",
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
    slice_compile="",  # compiling on a CPU takes minutes: CI checks the slice's plumbing only
    slice_precision="fp32",
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
    timeout = max(10.0, min(90.0, report.left() - 30))  # one test compiles (inductor): ~20 s
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
    the bare forward pass's (no statistics), and NVML's utilization sampled during the scan."""
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

    def forward() -> None:  # as scan_shard folds a shard: on the device, one read-back at the end
        running = scanner.running()
        for _ in range(sizes.repeats):
            scanner.add(running, ids, pixels)
        running.partial()

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
            "gpu_busy_share": round(scanned / seconds / figures["bare_forward_images_per_s"], 3),  # type: ignore[operator]
            "utilization": utilization.figures(),
        }
    figures["images"] = figures["pil"]["images"]  # type: ignore[index]
    figures["images_per_s"] = figures["pil"]["images_per_s"]  # type: ignore[index]
    return figures


JOB_STEPS = 512  # steps per picture in jobs/inceptionv1.toml
CEILING_RESERVE_S = 25  # kept after the slice's layers for the bare step (it reuses their compilation)


def project(per_layer: dict[str, dict], totals: dict[str, int], steps: int) -> dict:
    """The full job's render time on one device, from the slice.

    Each layer's seconds per channel (its packed units' optimization, scaled from the slice's
    ``steps`` to the job's 512, plus the call's fixed PNG, quality and Parquet seconds, divided by
    the channels rendered) times the layer's full channel count, summed over the nine layers, plus
    each layer's one-time compilation (paid once per worker). Layers the slice did not reach use
    the mean of those it did (then ``partial`` is true). Units are independent, so N GPUs divide
    the steady part by N (each pays the compilations; driver and scheduling overhead left out).
    """
    rates = {
        layer: (f["optimize_s"] * JOB_STEPS / steps + f["fixed_s"]) / f["channels"]
        for layer, f in per_layer.items()
        if f.get("channels")
    }
    if not rates:
        return {}
    compiles = {layer: f.get("compile_s", 0.0) for layer, f in per_layer.items() if f.get("channels")}
    fallback = sum(rates.values()) / len(rates)
    fallback_compile = sum(compiles.values()) / len(compiles)
    steady = sum(rates.get(layer, fallback) * count for layer, count in totals.items())
    compile_s = sum(compiles.get(layer, fallback_compile) for layer in totals)
    image_steps = sum(totals.values()) * per_layer[next(iter(rates))]["images_per_channel"] * JOB_STEPS
    return {
        "channels": sum(totals.values()),
        "image_steps": image_steps,
        "seconds_one_gpu": round(steady + compile_s, 1),
        "compile_s_per_worker": round(compile_s, 1),
        "image_steps_per_s": round(image_steps / (steady + compile_s), 1),
        "minutes_on": {str(n): round((steady / n + compile_s) / 60, 1) for n in (1, 8)},
        "target_minutes_one_gpu": 15,
        "partial": len(rates) < len(totals),
        "method": "sum over layers of ((optimization s x 512 / slice steps + fixed s per call) / "
        "channels x the layer's channel count) + each layer's compilation once",
    }


def _timed(device: torch.device, run: Callable[[], object]) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = run()
    synchronize(device)
    return time.perf_counter() - start, out


def bare_step(model: LoadedModel, layer: str, batch: int, side: int, precision: str, steps: int = 5) -> float:
    """Seconds per step of the bare truncated forward + backward to the input at ``batch`` images
    (the ceiling a render step cannot beat): the same compiled sub-network the renderer's steps
    use (``model.compile``), channels_last, under the same autocast; no parameterization, no
    transforms, no optimizer."""
    x = torch.rand(batch, 3, side, side, device=model.device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> None:
        with torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
            out = model.activations(x, [layer])[layer]
        (grad,) = torch.autograd.grad(out.float().mean(), x)

    step()  # compiles if this shape is new
    seconds, _ = _timed(model.device, lambda: [step() for _ in range(steps)])
    return seconds / steps


def overhead_step(batch: int, settings: Settings, device: torch.device, steps: int = 5) -> float:
    """Seconds per step of the renderer's own work for ``batch`` images: the Fourier
    parameterization and the transforms, forward and backward, without the model."""
    param = make_param("fourier", batch, settings.slice_size, seed=0, decorrelate=True).to(device)
    transform = preset("wider", settings.slice_size)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        transform(param(), generator).mean().backward()

    step()
    seconds, _ = _timed(device, lambda: [step() for _ in range(steps)])
    return seconds / steps


def slice_section(model: LoadedModel, settings: Settings, report: Report, work: Path) -> dict:
    """The appendix job cut to ``slice_channels`` channels of each layer, run as a GPU worker runs
    it: each layer's units packed into one call (``run_units``: one physical batch), compiled,
    in ``slice_precision``, with PNG, quality records and Parquet writes; then the bare compiled
    step at the same batch, and the renderer's own share."""
    spec = load_spec(JOB)
    layers = [layer.name for layer in spec.layers]
    totals = {layer: model.channels(layer) for layer in layers}
    count = settings.slice_channels
    render = replace(
        spec.render, steps=settings.slice_steps, size=settings.slice_size, precision=settings.slice_precision
    )
    spec = spec.replace(
        out=work / "slice",
        model=ModelSpec(spec.model.name, None, "none"),
        layers=tuple(LayerSpec(name, tuple(range(count))) for name in layers),
        render=render,
        examples=ExamplesSpec(enabled=False),
    )
    plan = make_plan(spec, ModelFacts(model.digest, totals), [], [])
    model.compile = settings.slice_compile
    context = WorkerContext(model=model, examples=spec.examples)
    store = Store(spec.out)
    side = model_input_side(settings.slice_size, render.transforms)
    images_per_channel = len(render.objectives) - 1 + render.diversity
    figures: dict[str, object] = {
        "layers": len(layers),
        "channels_per_layer": count,
        "images_per_channel": images_per_channel,
        "steps": settings.slice_steps,
        "size": settings.slice_size,
        "model_input": side,
        "compile": settings.slice_compile or "off",
        "precision": settings.slice_precision,
        "packed": "each layer's units in one worker call (atlas.run.worker.run_units)",
        # images per physical batch (free memory, capped; one chunk on CPU): a call is one batch on a GPU
        "images_per_pass": pass_capacity(model, render.batch, render.size),
        "per_layer": {},
    }
    per_layer: dict[str, dict] = figures["per_layer"]  # type: ignore[assignment]
    last = 0.0
    try:
        for layer in layers:
            units = [unit for unit in plan.units if unit.layer == layer]
            if report.left() < last * 1.2 + CEILING_RESERVE_S:
                figures["stopped"] = f"time budget: {len(per_layer)} of {len(layers)} layers done"
                break
            # One step at the pack's shape first: the compilation (forward and backward), timed
            # apart; then the optimization alone (its seconds per step scale to 512 steps); then
            # the call a worker makes, whose excess over the optimization (PNG encoding, quality
            # records, Parquet writes) is paid once per call, whatever the steps.
            requests = [(unit.layer, unit.channels) for unit in units]
            compile_s, _ = _timed(
                model.device, partial(render_channel_sets, model, requests, replace(render, steps=1))
            )
            optimize_s, _ = _timed(model.device, partial(render_channel_sets, model, requests, render))
            start = time.perf_counter()
            outcomes = run_units(context, units)
            for unit, outcome in zip(units, outcomes, strict=True):
                if isinstance(outcome, UnitFailed):
                    store.commit(
                        UnitRecord.failed(unit.key, unit.kind, unit.layer, str(outcome), unit.channels)
                    )
                else:
                    store.write_unit_tables(unit.key, unit.kind, unit.layer, outcome, unit.channels)
            synchronize(model.device)
            whole_s = time.perf_counter() - start
            last = compile_s + optimize_s + whole_s  # what the next layer will take, about
            images = len(units[0].channels) * images_per_channel * len(units)
            per_layer[layer] = {
                "channels": sum(len(unit.channels) for unit in units),
                "units": len(units),
                "images_per_call": images,
                "compile_s": round(compile_s if settings.slice_compile else 0.0, 1),  # else a first step
                "optimize_s": round(optimize_s, 2),
                "call_s": round(whole_s, 2),
                "fixed_s": round(max(whole_s - optimize_s, 0.0), 2),
                "image_steps_per_s": round(images * settings.slice_steps / optimize_s, 1),
                "images_per_channel": images_per_channel,
                "rows": sum(o["render"].num_rows for o in outcomes if not isinstance(o, UnitFailed)),
                "failed": sum(isinstance(o, UnitFailed) for o in outcomes),
            }
            figures["shard_bytes"] = sum(p.stat().st_size for p in (spec.out / "shards").rglob("*.parquet"))
            figures["projection"] = project(per_layer, totals, settings.slice_steps)
            report.put("slice", figures)
        figures["ceiling"] = ceiling(model, per_layer, settings, side, report)
        figures["stalls"] = stalls(context, plan.units, per_layer, report, work)
    finally:
        model.compile = ""
    return figures


def ceiling(
    model: LoadedModel, per_layer: dict[str, dict], settings: Settings, side: int, report: Report
) -> dict:
    """The bare compiled step at the slice's batch on the deepest measured layer, against the
    renderer's whole step there (the first compiled call excluded from both); and the share of
    the step that is the renderer's own (parameterization + transforms)."""
    if not per_layer or report.left() < CEILING_RESERVE_S / 2:
        return {"skipped": "no layer measured or no time left"}
    layer = list(per_layer)[-1]
    figures = per_layer[layer]
    batch = figures["images_per_call"]
    render_s = batch / figures["image_steps_per_s"]  # per optimization step
    bare_s = bare_step(model, layer, batch, side, settings.slice_precision)
    own_s = overhead_step(batch, settings, model.device)
    flops = flops_of(model, layer, side)
    return {
        "layer": layer,
        "batch": batch,
        "gflop_per_image_step": round(flops / 1e9, 3),
        "render_ms_per_step": round(render_s * 1000, 2),
        "bare_ms_per_step": round(bare_s * 1000, 2),
        "bare_image_steps_per_s": round(batch / bare_s, 1),
        "render_tflop_per_s": round(batch * flops / render_s / 1e12, 2),
        "bare_tflop_per_s": round(batch * flops / bare_s / 1e12, 2),
        "render_over_bare": round(render_s / bare_s, 3),
        "target_render_over_bare": 1.15,
        "param_and_transforms_ms_per_step": round(own_s * 1000, 2),
        "param_and_transforms_share": round(own_s / render_s, 3),
    }


def stalls(
    context: WorkerContext, units: Sequence[Unit], per_layer: dict[str, dict], report: Report, work: Path
) -> dict:
    """The share of the wall time of a worker's calls spent outside optimization (PNG encoding,
    quality records, Parquet writes), for the last two measured layers' calls: one after another
    without the writer thread (their ``call_s`` above), and again pipelined as a GPU worker runs
    them (``WorkerCalls`` on two threads, the writer thread on: a call's host work runs beside the
    next call's optimization). With two calls the second's host work has nothing to hide behind;
    in a job only the last call's is left so."""
    layers = list(per_layer)[-2:]
    serial_s = sum(per_layer[layer]["call_s"] for layer in layers)
    if len(layers) < 2 or report.left() < 1.5 * serial_s:
        return {"skipped": "fewer than two layers measured, or no time left"}
    optimize_s = sum(per_layer[layer]["optimize_s"] for layer in layers)
    calls = [[unit for unit in units if unit.layer == layer] for layer in layers]
    where = open_location(str(work / "stalls"))
    pipelined_s, _ = _timed(
        context.model.device, partial(pipelined, WorkerCalls(replace(context, overlap=True)), calls, where)
    )
    return {
        "layers": layers,
        "optimize_s": round(optimize_s, 2),
        "serial_s": round(serial_s, 2),
        "pipelined_s": round(pipelined_s, 2),
        "stall_share_serial": round(max(serial_s - optimize_s, 0.0) / serial_s, 3),
        "stall_share_pipelined": round(max(pipelined_s - optimize_s, 0.0) / pipelined_s, 3),
    }


def flops_of(model: LoadedModel, layer: str, side: int) -> float:
    """``flops_per_image_step`` of the eager sub-network (the FLOP counter does not see inside
    compiled code)."""
    backend, model.compile = model.compile, ""
    try:
        return flops_per_image_step(model, layer, side)
    finally:
        model.compile = backend


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
