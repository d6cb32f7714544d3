"""Job specs: TOML files loaded into frozen dataclasses, with errors that name the key and line.

A spec says what to build (model, layers, channels) and how (render, examples, interactions,
execution). Everything here is checked before any work starts; checks that need the model
(layer names, channel ranges) live in `check_against_model`.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from atlas.outdir import OutputFolderError, check_job_name, derived_out

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SpecError(ValueError):
    """A job spec that cannot be run; the message names the file, key, line and the fix."""


PARAMS = ("fourier", "pixel", "maco")
TRANSFORM_PRESETS = ("standard", "distill", "none")  # atlas.optvis.transforms.PRESETS
OBJECTIVES = ("channel", "neuron", "negative", "diversity")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    name: str = "efficientnet-lite0"
    checkpoint: Path | None = None
    weights: str = "default"


@dataclass(frozen=True)
class LayerSpec:
    name: str
    channels: tuple[int, ...] | None = None  # None: every channel of the layer


@dataclass(frozen=True)
class RenderSpec:
    enabled: bool = True
    steps: int = 256
    size: int = 128
    batch: int = 8
    lr: float = 0.05
    param: str = "fourier"
    decorrelate: bool = True
    decay_power: float = 1.0
    transforms: str = "standard"
    objectives: tuple[str, ...] = OBJECTIVES
    diversity: int = 4
    diversity_weight: float = 5.0  # Gram cosine 0.99 -> 0.36 at 85% of the activation (check_optvis)
    seed: int = 0
    precision: str = "fp32"
    channels_per_unit: int = 8


@dataclass(frozen=True)
class ExamplesSpec:
    enabled: bool = True
    source: str = "demo"
    column: str | None = None
    k: int = 10
    shard_size: int = 64
    batch_size: int = 32
    bins: int = 32
    crop_size: int = 96
    thumb_size: int = 64
    quantiles: tuple[float, float] = (0.25, 0.75)  # "slightly negative" / "slightly positive"


@dataclass(frozen=True)
class InteractionsSpec:
    random_directions: int = 0
    pairs: tuple[tuple[str, int, int], ...] = ()
    interpolation_steps: int = 5


@dataclass(frozen=True)
class ExecuteSpec:
    workers: int | str = "auto"
    gpus_per_worker: float | str = "auto"
    max_in_flight: int = 0  # 0: twice the number of workers
    retries: int = 2
    address: str | None = None
    scale_up_timeout: float = 900.0  # seconds to wait for the autoscaler to add GPU nodes


@dataclass(frozen=True)
class CostSpec:
    throughput: str = ""  # JSON figures from `atlas calibrate` (relative to the spec); "" = none
    price_per_gpu_hour: float = 0.0
    budget: float = 0.0  # in the price's currency; 0 = no budget
    budget_gpu_hours: float = 0.0  # 0 = no budget


@dataclass(frozen=True)
class JobSpec:
    name: str
    out: Path
    model: ModelSpec
    layers: tuple[LayerSpec, ...]
    render: RenderSpec = field(default_factory=RenderSpec)
    examples: ExamplesSpec = field(default_factory=ExamplesSpec)
    interactions: InteractionsSpec = field(default_factory=InteractionsSpec)
    execute: ExecuteSpec = field(default_factory=ExecuteSpec)
    source: Path | None = None
    cost: CostSpec = field(default_factory=CostSpec)

    def replace(self, **sections: Any) -> JobSpec:
        """A copy with whole sections replaced, e.g. spec.replace(out=Path("x"))."""
        from dataclasses import replace

        return replace(self, **sections)


SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "render": RenderSpec,
    "examples": ExamplesSpec,
    "interactions": InteractionsSpec,
    "execute": ExecuteSpec,
    "cost": CostSpec,
}
TOP_LEVEL = ("job", "layers", *SECTIONS)


class _Context:
    """Where a value came from, to point errors at the right key and line."""

    def __init__(self, text: str, source: str):
        self.lines = text.splitlines()
        self.source = source

    def line_of(self, section: str, key: str | None) -> int | None:
        current = None
        for number, raw in enumerate(self.lines, start=1):
            line = raw.split("#", 1)[0].strip()
            header = re.match(r"^\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?$", line)
            if header:
                current = header.group(1)
                if key is None and current == section:
                    return number
                continue
            if key is not None and current == section and re.match(rf"^{re.escape(key)}\s*=", line):
                return number
        return None

    def error(self, section: str, key: str | None, message: str) -> SpecError:
        where = f"{section}.{key}" if key else f"[{section}]"
        line = self.line_of(section, key)
        at = f", line {line}" if line else ""
        return SpecError(f"{self.source}{at}: {where}: {message}")


def _close(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f"did you mean {' or '.join(repr(m) for m in match)}? " if match else ""


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _convert(ctx: _Context, section: str, key: str, value: Any, annotation: str) -> Any:
    """Check one value against its field's type (taken from the annotation text)."""

    def bad(expected: str) -> SpecError:
        return ctx.error(section, key, f"expected {expected}, got {_type_name(value)} {value!r}")

    if annotation == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if annotation in ("str", "str | None"):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if annotation == "Path | None":
        if not isinstance(value, str):
            raise bad("a path string")
        return Path(value) if value else None
    if annotation == "int | str":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | str)
            or (isinstance(value, str) and value != "auto")
        ):
            raise bad('an integer or "auto"')
        return value
    if annotation == "float | str":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float | str)
            or (isinstance(value, str) and value != "auto")
        ):
            raise bad('a number or "auto"')
        return value if isinstance(value, str) else float(value)
    if annotation == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("an array of strings")
        return tuple(value)
    if annotation == "tuple[float, float]":
        ok = isinstance(value, list) and len(value) == 2
        if not ok or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise bad("an array of two numbers like [0.25, 0.75]")
        return (float(value[0]), float(value[1]))
    if annotation == "tuple[tuple[str, int, int], ...]":
        ok = isinstance(value, list) and all(
            isinstance(p, list)
            and len(p) == 3
            and isinstance(p[0], str)
            and all(isinstance(c, int) and not isinstance(c, bool) for c in p[1:])
            for p in value
        )
        if not ok:
            raise bad('an array of [layer, channel_a, channel_b] like [["mixed4a", 1, 2]]')
        return tuple((p[0], p[1], p[2]) for p in value)
    raise AssertionError(f"spec field {section}.{key} has an unsupported annotation {annotation}")


def _section(ctx: _Context, name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ctx.error(name, None, f"expected a table [{name}], got {_type_name(raw)}")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            hint = _close(key, list(known))
            if key in TOP_LEVEL:  # e.g. `layers = [...]` written below [model]
                hint = f"{key!r} is a top-level key: move it above the first [table] or write [[{key}]]. "
            raise ctx.error(name, key, f"unknown key. {hint}Valid keys: {', '.join(known)}")
        values[key] = _convert(ctx, name, key, value, str(known[key].type))
    return cls(**values)


def _channels(ctx: _Context, value: Any) -> tuple[int, ...] | None:
    """Channels are "all", a "start:stop" range, or an array of integers."""
    if value == "all":
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
        if not match or int(match.group(2)) <= int(match.group(1)):
            raise ctx.error(
                "layers", "channels", f'expected "all", "start:stop" or an array of integers, got {value!r}'
            )
        return tuple(range(int(match.group(1)), int(match.group(2))))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(c, int) and not isinstance(c, bool) for c in value)
    ):
        if any(c < 0 for c in value):
            raise ctx.error("layers", "channels", f"channels must be >= 0, got {value!r}")
        return tuple(dict.fromkeys(value))
    raise ctx.error(
        "layers", "channels", f'expected "all", "start:stop" or an array of integers, got {value!r}'
    )


def _layers(ctx: _Context, raw: Any) -> tuple[LayerSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ctx.error("layers", None, 'expected at least one [[layers]] table with name = "..."')
    layers = []
    for item in raw:
        if isinstance(item, str):  # layers = ["a", "b"] shorthand: every channel
            layers.append(LayerSpec(item))
            continue
        if not isinstance(item, dict):
            raise ctx.error("layers", None, f"expected a table or a layer name, got {_type_name(item)}")
        unknown = set(item) - {"name", "channels"}
        if unknown:
            key = sorted(unknown)[0]
            raise ctx.error(
                "layers", key, f"unknown key. {_close(key, ['name', 'channels'])}Valid keys: name, channels"
            )
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise ctx.error("layers", "name", 'every [[layers]] table needs name = "<layer>"')
        layers.append(LayerSpec(item["name"], _channels(ctx, item.get("channels", "all"))))
    return tuple(layers)


def _check_values(ctx: _Context, spec: JobSpec) -> None:
    r, e, i, x = spec.render, spec.examples, spec.interactions, spec.execute
    checks = [
        ("render", "param", r.param in PARAMS, f"choose one of {', '.join(PARAMS)}"),
        (
            "render",
            "transforms",
            r.transforms in TRANSFORM_PRESETS,
            f"choose one of {', '.join(TRANSFORM_PRESETS)}",
        ),
        ("render", "precision", r.precision in PRECISIONS, f"choose one of {', '.join(PRECISIONS)}"),
        ("render", "steps", r.steps >= 1, "must be at least 1"),
        ("render", "size", 16 <= r.size <= 1024, "must be between 16 and 1024 pixels"),
        ("render", "batch", r.batch >= 1, "must be at least 1"),
        ("render", "lr", r.lr > 0, "must be positive"),
        ("render", "diversity", r.diversity >= 2 or "diversity" not in r.objectives, "must be at least 2"),
        ("render", "channels_per_unit", r.channels_per_unit >= 1, "must be at least 1"),
        ("examples", "k", e.k >= 1, "must be at least 1"),
        ("examples", "shard_size", e.shard_size >= 1, "must be at least 1"),
        ("examples", "bins", e.bins >= 2, "must be at least 2"),
        (
            "examples",
            "quantiles",
            0 <= e.quantiles[0] <= e.quantiles[1] <= 1,
            "must be [low, high] within 0..1",
        ),
        ("interactions", "random_directions", i.random_directions >= 0, "must be >= 0"),
        ("interactions", "interpolation_steps", i.interpolation_steps >= 2, "must be at least 2"),
        ("execute", "retries", x.retries >= 0, "must be >= 0"),
        ("execute", "max_in_flight", x.max_in_flight >= 0, "must be >= 0"),
        ("execute", "scale_up_timeout", x.scale_up_timeout > 0, "must be positive (seconds)"),
        ("cost", "price_per_gpu_hour", spec.cost.price_per_gpu_hour >= 0, "must be >= 0"),
        ("cost", "budget", spec.cost.budget >= 0, "must be >= 0 (0: no budget)"),
        (
            "cost",
            "budget",
            not spec.cost.budget or spec.cost.price_per_gpu_hour > 0,
            "a budget in money needs cost.price_per_gpu_hour (or use cost.budget_gpu_hours)",
        ),
        ("cost", "budget_gpu_hours", spec.cost.budget_gpu_hours >= 0, "must be >= 0 (0: no budget)"),
    ]
    for section, key, ok, fix in checks:
        if not ok:
            raise ctx.error(section, key, f"{getattr(getattr(spec, section), key)!r} is not allowed: {fix}")
    for objective in r.objectives:
        if objective not in OBJECTIVES:
            raise ctx.error(
                "render",
                "objectives",
                f"unknown objective {objective!r}. {_close(objective, list(OBJECTIVES))}Choose from {', '.join(OBJECTIVES)}",
            )
    if isinstance(x.workers, int) and x.workers < 1:
        raise ctx.error("execute", "workers", 'must be at least 1 or "auto"')


def _resolve_paths(ctx: _Context, spec: JobSpec, base: Path) -> JobSpec:
    """Relative paths in a spec are relative to the spec file; missing files fail here."""
    from dataclasses import replace

    model = spec.model
    if model.checkpoint is not None:
        path = model.checkpoint if model.checkpoint.is_absolute() else base / model.checkpoint
        if not path.is_file():
            raise ctx.error("model", "checkpoint", f"file {path} does not exist")
        model = replace(model, checkpoint=path)
    examples = spec.examples
    if examples.enabled and examples.source != "demo" and "://" not in examples.source:
        path = Path(examples.source)
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise ctx.error(
                "examples",
                "source",
                f'{path} does not exist; give a folder of images, a .parquet file or "demo"',
            )
        examples = replace(examples, source=str(path))
    cost = spec.cost
    if cost.throughput:
        path = Path(cost.throughput) if Path(cost.throughput).is_absolute() else base / cost.throughput
        if not path.is_file():
            raise ctx.error(
                "cost", "throughput", f"file {path} does not exist; write it with `atlas calibrate`"
            )
        cost = replace(cost, throughput=str(path))
    return replace(spec, model=model, examples=examples, cost=cost)


def parse_spec(text: str, source: str = "<spec>", base: Path | None = None) -> JobSpec:
    """Parse and check a spec's text; `base` is the folder relative paths start from."""
    ctx = _Context(text, source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{source}: not valid TOML: {err}") from err
    for key in raw:
        if key not in TOP_LEVEL:
            raise ctx.error(
                key,
                None,
                f"unknown section. {_close(key, list(TOP_LEVEL))}Valid sections: {', '.join(TOP_LEVEL)}",
            )
    job = raw.get("job", {})
    if not isinstance(job, dict):
        raise ctx.error("job", None, "expected a table [job]")
    for key in job:
        if key not in ("name", "out"):
            raise ctx.error("job", key, f"unknown key. {_close(key, ['name', 'out'])}Valid keys: name, out")
    default_name = re.sub(r"[^A-Za-z0-9_.\-]+", "", Path(source).stem) or "job"
    name = job.get("name", default_name)
    try:
        out = job["out"] if "out" in job else str(derived_out(name))
        check_job_name(name)  # also names the marker and the nightly lock when out is given
    except OutputFolderError as err:
        raise ctx.error("job", "name", str(err)) from err
    if not isinstance(out, str):
        raise ctx.error("job", "out", f"expected a path string, got {_type_name(out)} {out!r}")
    sections = {key: _section(ctx, key, cls, raw.get(key, {})) for key, cls in SECTIONS.items()}
    spec = JobSpec(
        name=name, out=Path(out), layers=_layers(ctx, raw.get("layers")), source=Path(source), **sections
    )
    _check_values(ctx, spec)
    return _resolve_paths(ctx, spec, base or Path.cwd())


def load_spec(path: Path | str) -> JobSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"job spec {path} does not exist")
    return parse_spec(path.read_text(), source=str(path), base=path.parent.resolve())


def check_against_model(spec: JobSpec, model: Any) -> None:
    """Checks that need the model: layer names (with close matches) and channel ranges."""
    from atlas.models import UnknownLayerError

    ctx = _Context(spec.source.read_text() if spec.source and spec.source.is_file() else "", str(spec.source))
    pairs_layers = [p[0] for p in spec.interactions.pairs]
    for layer in [*(layer.name for layer in spec.layers), *pairs_layers]:
        try:
            model.resolve_layer(layer)
        except UnknownLayerError as err:
            line = next((n for n, text in enumerate(ctx.lines, 1) if f'"{layer}"' in text), None)
            raise SpecError(f"{ctx.source}{f', line {line}' if line else ''}: {err}") from err
    for layer in spec.layers:
        count = model.channels(layer.name)
        bad = [c for c in layer.channels or () if c >= count]
        if bad:
            raise ctx.error(
                "layers",
                "channels",
                f"layer {layer.name!r} has {count} channels (0..{count - 1}); {bad} out of range",
            )
    for layer, a, b in spec.interactions.pairs:
        count = model.channels(layer)
        if not (0 <= a < count and 0 <= b < count):
            raise ctx.error(
                "interactions",
                "pairs",
                f"layer {layer!r} has {count} channels; pair ({a}, {b}) is out of range",
            )


def spec_to_dict(spec: JobSpec) -> dict:
    """A JSON-able view of the spec, for job.json and the site."""
    from dataclasses import asdict

    def clean(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return clean(asdict(spec))
