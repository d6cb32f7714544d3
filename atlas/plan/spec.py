"""Job specs: TOML files loaded into frozen dataclasses, with errors that name the key and line.

A spec says what to build (model, layers, channels) and how (render, examples, interactions,
execution). Everything here is checked before any work starts; checks that need the model
(layer names, channel ranges) live in `check_against_model`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Gt, Interval
from pydantic import ConfigDict, Strict, with_config

from atlas.core.errors import AtlasError
from atlas.core.registry import close_matches
from atlas.optvis.named import OBJECTIVES, channel_objectives
from atlas.optvis.param import PARAMS
from atlas.optvis.render import PRECISIONS
from atlas.optvis.schedules import SCHEDULES
from atlas.optvis.transforms import PRESETS as TRANSFORM_PRESETS
from atlas.plan.validation import (
    Bool,
    ChannelPairs,
    Expect,
    Int,
    IntOrAuto,
    Names,
    Number,
    NumberOrAuto,
    NumberPair,
    OptionalPath,
    OptionalSide,
    OptionalText,
    OptionalTriple,
    Problem,
    Text,
    each_of,
    one_of,
    rule,
    type_name,
    validate_section,
)
from atlas.store.location import LocationError, check_uri, parse_out
from atlas.store.outdir import OutputFolderError, check_job_name, derived_out

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SpecError(AtlasError, ValueError):
    """A job spec that cannot be run; the message names the file, key, line and the fix."""


DEFAULT_OBJECTIVES = ("channel", "neuron", "negative", "diversity")  # fixed: it feeds content keys
FORBID = with_config(ConfigDict(extra="forbid"))
COMPILE_CHOICES = ("auto", "on", "off")


@FORBID
@dataclass(frozen=True)
class ModelSpec:
    name: Text = "efficientnet-lite0"
    checkpoint: OptionalPath = None
    weights: Text = "default"
    checkpoints: Names = ()  # a timeline's series: paths or globs (atlas.kinds.timeline)
    path: OptionalPath = None  # where a `module:` model is imported from (default: the spec's folder)
    # The model's input, where the model does not declare it (or declares it wrongly): the side it
    # takes, and the normalization of its input, in the units of `value_range`.
    input_size: OptionalSide = None
    mean: OptionalTriple = None
    std: OptionalTriple = None
    value_range: NumberPair = (0.0, 1.0)

    def load(self, device: Any = "cpu", checkpoint: str | Path | None = None) -> Any:
        """The model as the spec names it (`atlas.models.load_model`): from its folder, with the
        input it states, on `device`; `checkpoint` (a timeline's) in place of the spec's own."""
        from atlas.models import load_model

        weights = checkpoint if checkpoint is not None else self.checkpoint
        return load_model(
            self.name, weights, self.weights, device=device, search=self.path, stated=self.input_overrides()
        )

    def input_overrides(self) -> dict[str, Any]:
        """What the spec states of the model's input, as `load_model` takes it: mean and std of
        [0, 1] RGB. `value_range` alone says the model takes unnormalized values in that range."""
        low, high = self.value_range
        scaled = (low, high) != (0.0, 1.0)
        stated: dict[str, Any] = {}
        if self.input_size is not None:
            stated["input_size"] = self.input_size
        if self.mean is not None or scaled:
            mean = self.mean if self.mean is not None else (0.0, 0.0, 0.0)
            stated["mean"] = tuple((m - low) / (high - low) for m in mean)
        if self.std is not None or scaled:
            std = self.std if self.std is not None else (1.0, 1.0, 1.0)
            stated["std"] = tuple(s / (high - low) for s in std)
        return stated


SAE_OBJECTIVES = ("encoder", "decoder")  # what `[[layers]] sae_objective` may be


@dataclass(frozen=True)
class Densest:
    """`visualize = "densest:N"`: the N channels that fire at the largest share of positions
    (`histogram.active`), known once the dataset is scanned."""

    count: int


@dataclass(frozen=True)
class LayerSpec:
    name: str
    channels: tuple[int, ...] | None = None  # None: every channel of the layer
    dictionary: Path | None = (
        None  # (K, C) directions that replace the layer's channels (atlas.plan.dictionary)
    )
    sae: Path | None = None  # a sparse autoencoder whose features replace the channels (atlas.plan.sae)
    # The channels that get visualizations (renders); None: every one of `channels`. Examples and
    # statistics still cover every channel (atlas.kinds.render.render_units).
    visualize: tuple[int, ...] | Densest | None = None
    sae_compare: Path | None = None  # another SAE of the layer, matched to `sae` (atlas.kinds.stability)
    sae_objective: str = "encoder"  # an SAE layer's units: "encoder" activations, "decoder" projections

    @property
    def derived(self) -> bool:
        """Whether the entry's units are another layer made from this one (a dictionary or an SAE)."""
        return self.dictionary is not None or self.sae is not None


@FORBID
@dataclass(frozen=True)
class RenderSpec:
    enabled: Bool = True
    steps: Annotated[Int, Ge(1)] = 256
    size: Annotated[Int, Interval(ge=16, le=1024), Expect("an integer", unit=" pixels")] = 128
    batch: Annotated[Int, Ge(1)] = 8
    lr: Annotated[Number, Gt(0)] = 0.05
    param: Annotated[Text, one_of(PARAMS.names)] = "fourier"
    decorrelate: Bool = True
    decay_power: Number = 1.0
    transforms: Annotated[Text, one_of(TRANSFORM_PRESETS.names)] = "wider"
    objectives: Annotated[Names, each_of("objective", channel_objectives)] = DEFAULT_OBJECTIVES
    diversity: Int = 4  # at least 2 when a diverse objective is asked for: checked in parse_spec
    diversity_weight: Number = 5.0  # Gram cosine 0.99 -> 0.36 at 85% of the activation (check_optvis)
    seed: Int = 0
    precision: Annotated[Text, one_of(PRECISIONS.names)] = "fp32"
    channels_per_unit: Annotated[Int, Ge(1)] = 8
    lr_schedule: Annotated[Text, one_of(SCHEDULES.names)] = "warmup-hold-cosine"
    coarse_fraction: Annotated[Number, Interval(ge=0, lt=1)] = 0.2  # multi-resolution share of the steps
    blur_weight: Annotated[Number, Ge(0)] = 0.0  # weight of the blur penalty (objectives.blur)


@FORBID
@dataclass(frozen=True)
class ExamplesSpec:
    enabled: Bool = True
    source: Text = "demo"
    column: OptionalText = None
    label_column: OptionalText = None  # Parquet sources' column of labels, for label enrichment
    k: Annotated[Int, Ge(1)] = 10
    shard_size: Annotated[Int, Ge(1)] = 64
    batch_size: Int = 32
    bins: Annotated[Int, Ge(2)] = 32
    crop_size: Int = 96
    thumb_size: Int = 64
    # "slightly negative" / "slightly positive"
    quantiles: Annotated[
        NumberPair, rule(lambda q: 0 <= q[0] <= q[1] <= 1, "must be [low, high] within 0..1")
    ] = (0.25, 0.75)


@FORBID
@dataclass(frozen=True)
class InteractionsSpec:
    random_directions: Annotated[Int, Ge(0)] = 0
    pairs: ChannelPairs = ()
    interpolation_steps: Annotated[Int, Ge(2)] = 5


@FORBID
@dataclass(frozen=True)
class ActivationAtlasSpec:
    """Opt-in per layer: `layers` lists [[layers]] names to map (atlas.kinds.actatlas; needs [examples])."""

    layers: Names = ()
    grids: Annotated[
        tuple[Annotated[int, Strict()], ...],
        Expect("an array of integers"),
        rule(lambda sizes: all(size >= 1 for size in sizes), "grid sizes must be at least 1"),
    ] = (20, 40)
    samples: Annotated[Int, Ge(2)] = 100_000  # one vector per image, at a hash-chosen position
    max_fit: Annotated[Int, Ge(2)] = 100_000  # UMAP fits on this many; `transform` places the rest
    n_neighbors: Annotated[Int, Ge(2)] = 20
    min_dist: Annotated[Number, Ge(0)] = 0.01
    min_count: Annotated[Int, Ge(1)] = 3  # cells with fewer samples are dropped (and counted)
    # Unused since icons match their cell's mean (atlas.kinds.actatlas.icons); still accepted so
    # that job files written for the earlier dot x cosine^power objective parse.
    cosine_power: Annotated[Number, Ge(0)] = 2.0
    icons: Bool = True


@FORBID
@dataclass(frozen=True)
class ExecuteSpec:
    workers: IntOrAuto = "auto"
    gpus_per_worker: NumberOrAuto = "auto"
    max_in_flight: Annotated[Int, Ge(0)] = 0  # 0: twice the number of workers
    retries: Annotated[Int, Ge(0)] = 2
    address: OptionalText = None
    scale_up_timeout: Annotated[Number, Gt(0)] = 900.0  # seconds to wait for the autoscaler's GPU nodes
    # How workers run renders (never part of a content key): torch.compile of the truncated model
    # ("auto": on CUDA only), and render units per worker call, optimized together in physical
    # batches ("auto": atlas.run.executor.RENDER_UNITS_PER_GPU_CALL on GPU workers, 1 on CPU).
    compile: Annotated[Text, one_of(lambda: COMPILE_CHOICES)] = "auto"
    units_per_call: IntOrAuto = "auto"


@FORBID
@dataclass(frozen=True)
class CostSpec:
    throughput: Text = ""  # JSON figures from `atlas calibrate` (relative to the spec); "" = none
    price_per_gpu_hour: Annotated[Number, Ge(0)] = 0.0
    budget: Annotated[Number, Ge(0)] = 0.0  # in the price's currency; 0 = no budget
    budget_gpu_hours: Annotated[Number, Ge(0)] = 0.0  # 0 = no budget


@FORBID
@dataclass(frozen=True)
class TimelineSpec:
    probes: Annotated[Int, Ge(2)] = 32  # probe images, spread evenly over the examples source
    positions: Annotated[Int, Ge(1)] = 16  # sampled positions per probe image, for matching and CKA
    render_every: Annotated[Int, Ge(0)] = 0  # also render every Nth checkpoint (0: only the latest)
    render_latest: Bool = True
    # the checkpoints selected for renders also get their top dataset examples (scan + examples units)
    examples: Bool = True
    # matched units correlated less than this changed role
    role_threshold: Annotated[Number, Interval(ge=0, le=1)] = 0.5


@dataclass(frozen=True)
class JobSpec:
    name: str
    out: Path | str  # a local folder, or a URI such as s3://bucket/prefix (atlas.store.location)
    model: ModelSpec
    layers: tuple[LayerSpec, ...]
    render: RenderSpec = field(default_factory=RenderSpec)
    examples: ExamplesSpec = field(default_factory=ExamplesSpec)
    interactions: InteractionsSpec = field(default_factory=InteractionsSpec)
    activation_atlas: ActivationAtlasSpec = field(default_factory=ActivationAtlasSpec)
    execute: ExecuteSpec = field(default_factory=ExecuteSpec)
    timeline: TimelineSpec = field(default_factory=TimelineSpec)
    source: Path | None = None
    keep_runs: int = (
        1  # retention: units planned by the last N complete runs stay (0: all; atlas.store.retention)
    )
    cost: CostSpec = field(default_factory=CostSpec)
    # "section.key" of every setting the spec file wrote (the others took their defaults): a
    # default may follow the model (render.size of a fixed-size model), a written value never does.
    written: frozenset[str] = field(default=frozenset(), compare=False)

    def replace(self, **sections: Any) -> JobSpec:
        """A copy with whole sections replaced, e.g. spec.replace(out=Path("x"))."""
        from dataclasses import replace

        return replace(self, **sections)


SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "render": RenderSpec,
    "examples": ExamplesSpec,
    "interactions": InteractionsSpec,
    "activation_atlas": ActivationAtlasSpec,
    "execute": ExecuteSpec,
    "timeline": TimelineSpec,
    "cost": CostSpec,
}
TOP_LEVEL = ("job", "layers", *SECTIONS)


class _Context:
    """Where a value came from, to point errors at the right key and line."""

    def __init__(self, text: str, source: str):
        self.lines = text.splitlines()
        self.source = source

    def line_of(self, section: str, key: str | None, entry: int | None = None) -> int | None:
        """The line of `section.key` (of the `entry`-th `[[section]]` table, counted from 0; that
        table's header when it lacks the key)."""
        current, seen, table = None, -1, None
        for number, raw in enumerate(self.lines, start=1):
            line = raw.split("#", 1)[0].strip()
            header = re.match(r"^\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?$", line)
            if header:
                current = header.group(1)
                seen += current == section
                if current == section and entry in (None, seen):
                    table = table or number
                    if key is None:
                        return number
                continue
            here = current == section and entry in (None, seen)
            if key is not None and here and re.match(rf"^{re.escape(key)}\s*=", line):
                return number
        return table if entry is not None else None

    def error(self, section: str, key: str | None, message: str, entry: int | None = None) -> SpecError:
        where = f"{section}.{key}" if key else f"[{section}]"
        line = self.line_of(section, key, entry)
        at = f", line {line}" if line else ""
        return SpecError(f"{self.source}{at}: {where}: {message}")


def _check_uris(ctx: _Context, raw: dict) -> None:
    """Every string in the spec meets `check_uri` before any check can repeat it in a message:
    a credential is refused wherever it is written (out, examples.source, checkpoints, ...)."""

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.items():
                yield from strings(list(item))
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    for section, table in raw.items():
        entries = table if isinstance(table, list) else [table]
        for entry in entries:
            for key, value in entry.items() if isinstance(entry, dict) else [(None, entry)]:
                for text in strings([key, value]):
                    try:
                        check_uri(text)
                    except LocationError as err:
                        raise ctx.error(section, key, str(err)) from err


def _section(ctx: _Context, name: str, cls: type, raw: Any) -> tuple[Any, list[Problem]]:
    """Validate one table; its problems come back to be reported in the order of the file."""
    if not isinstance(raw, dict):
        raise ctx.error(name, None, f"expected a table [{name}], got {type_name(raw)}")

    def hint(key: str, valid: list[str]) -> str:
        if key in TOP_LEVEL:  # e.g. `layers = [...]` written below [model]
            return f"{key!r} is a top-level key: move it above the first [table] or write [[{key}]]. "
        return close_matches(key, valid)

    return validate_section(cls, raw, hint)


CHANNELS_FORM = '"all", "start:stop" or an array of integers'


def _channels(
    ctx: _Context, value: Any, entry: int, key: str = "channels", form: str = CHANNELS_FORM
) -> tuple[int, ...] | None:
    """Channels are "all", a "start:stop" range, or an array of integers (`key` of the entry-th
    [[layers]] table; `form` is what the error says it may be)."""
    if value == "all":
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
        if not match or int(match.group(2)) <= int(match.group(1)):
            raise ctx.error("layers", key, f"expected {form}, got {value!r}", entry)
        return tuple(range(int(match.group(1)), int(match.group(2))))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(c, int) and not isinstance(c, bool) for c in value)
    ):
        if any(c < 0 for c in value):
            raise ctx.error("layers", key, f"channels must be >= 0, got {value!r}", entry)
        return tuple(dict.fromkeys(value))
    raise ctx.error("layers", key, f"expected {form}, got {value!r}", entry)


VISUALIZE_FORM = '"all", "start:stop", "densest:N" (N >= 1) or an array of integers'


def _visualize(
    ctx: _Context, value: Any, entry: int, channels: tuple[int, ...] | None
) -> tuple[int, ...] | Densest | None:
    """Which of the entry's channels get visualizations: `_channels`' forms, or "densest:N"."""
    if isinstance(value, str) and value.strip().startswith("densest"):
        match = re.fullmatch(r"\s*densest\s*:\s*(\d+)\s*", value)
        if not match or int(match.group(1)) < 1:
            raise ctx.error("layers", "visualize", f"expected {VISUALIZE_FORM}, got {value!r}", entry)
        return Densest(int(match.group(1)))
    chosen = _channels(ctx, value, entry, "visualize", VISUALIZE_FORM)
    outside = [c for c in chosen or () if channels is not None and c not in channels]
    if outside:
        raise ctx.error(
            "layers",
            "visualize",
            f"{outside} not among the entry's channels: visualizations are chosen from `channels`; "
            "add them there or drop them here",
            entry,
        )
    return chosen


def _layers(ctx: _Context, raw: Any) -> tuple[LayerSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ctx.error("layers", None, 'expected at least one [[layers]] table with name = "..."')
    layers = []
    for entry, item in enumerate(raw):
        if isinstance(item, str):  # layers = ["a", "b"] shorthand: every channel
            layers.append(LayerSpec(item))
            continue
        if not isinstance(item, dict):
            raise ctx.error("layers", None, f"expected a table or a layer name, got {type_name(item)}", entry)
        keys = ["name", "channels", "dictionary", "sae", "visualize", "sae_compare", "sae_objective"]
        unknown = set(item) - set(keys)
        if unknown:
            key = sorted(unknown)[0]
            raise ctx.error(
                "layers", key, f"unknown key. {close_matches(key, keys)}Valid keys: {', '.join(keys)}", entry
            )
        if not isinstance(item.get("dictionary", ""), str):
            raise ctx.error(
                "layers", "dictionary", "expected a path string to a .npy or .safetensors file", entry
            )
        for key in ("sae", "sae_compare"):
            if not isinstance(item.get(key, ""), str):
                raise ctx.error(
                    "layers", key, "expected a path string to an SAE folder, .safetensors or .npz file", entry
                )
        for key in ("sae_compare", "sae_objective"):
            if key in item and not item.get("sae"):
                raise ctx.error("layers", key, 'needs sae = "..." in the same table', entry)
        if item.get("sae_objective", "encoder") not in SAE_OBJECTIVES:
            raise ctx.error(
                "layers",
                "sae_objective",
                f"{item['sae_objective']!r} is not one of {', '.join(map(repr, SAE_OBJECTIVES))}: the SAE's "
                "feature activation (encoder) or the projection onto its decoder row (decoder)",
                entry,
            )
        if item.get("dictionary") and item.get("sae"):
            raise ctx.error(
                "layers", "sae", "give a dictionary or an SAE, not both: one [[layers]] table each", entry
            )
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise ctx.error("layers", "name", 'every [[layers]] table needs name = "<layer>"', entry)
        dictionary = Path(item["dictionary"]) if item.get("dictionary") else None
        sae = Path(item["sae"]) if item.get("sae") else None
        compare = Path(item["sae_compare"]) if item.get("sae_compare") else None
        channels = _channels(ctx, item.get("channels", "all"), entry)
        visualize = _visualize(ctx, item.get("visualize", "all"), entry, channels)
        objective = item.get("sae_objective", "encoder")
        layers.append(LayerSpec(item["name"], channels, dictionary, sae, visualize, compare, objective))
    return tuple(layers)


def _check_diversity(ctx: _Context, render: RenderSpec) -> None:
    """The one check across keys: a diverse objective needs a set of at least 2 images."""
    diverse = [o for o in render.objectives if OBJECTIVES.get(o).diverse]
    if diverse and render.diversity < 2:
        raise ctx.error("render", "diversity", f"{render.diversity!r} is not allowed: must be at least 2")


def _check_atlas(ctx: _Context, spec: JobSpec) -> None:
    names = [layer.name for layer in spec.layers]
    for name in spec.activation_atlas.layers:
        if name not in names:
            raise ctx.error(
                "activation_atlas",
                "layers",
                f"{name!r} is not one of the job's [[layers]]. {close_matches(name, names)}"
                "An atlas maps a layer the scan reads: add it as [[layers]] or fix the name",
            )
    if spec.activation_atlas.layers and not spec.examples.enabled:
        raise ctx.error(
            "activation_atlas",
            "layers",
            "activation atlases sample vectors during the dataset scan: enable [examples]",
        )


def _check_densest(ctx: _Context, spec: JobSpec) -> None:
    """ "densest:N" ranks channels by the scan's histograms: it needs the dataset scan."""
    for entry, layer in enumerate(spec.layers):
        if isinstance(layer.visualize, Densest) and not spec.examples.enabled:
            raise ctx.error(
                "layers",
                "visualize",
                f'"densest:{layer.visualize.count}" ranks channels by how often they fire on the '
                'dataset: enable [examples], or choose them by number ("start:stop" or an array)',
                entry,
            )


def _check_model_input(ctx: _Context, model: ModelSpec) -> None:
    """A normalization that can be applied: a range from low to high, a positive std."""
    low, high = model.value_range
    if not low < high:
        raise ctx.error(
            "model", "value_range", f"[{low:g}, {high:g}] is empty: write [low, high], e.g. [0, 255]"
        )
    if model.std is not None and min(model.std) <= 0:
        raise ctx.error("model", "std", f"{list(model.std)} has a value <= 0: every std divides the input")


def _check_budget(ctx: _Context, cost: CostSpec) -> None:
    """A budget in money is only checkable with a price per GPU-hour."""
    if cost.budget and not cost.price_per_gpu_hour:
        raise ctx.error(
            "cost", "budget", "a budget in money needs cost.price_per_gpu_hour (or use cost.budget_gpu_hours)"
        )


def _resolve_paths(ctx: _Context, spec: JobSpec, base: Path) -> JobSpec:
    """Relative paths in a spec are relative to the spec file; missing files fail here."""
    from dataclasses import replace

    model = spec.model
    if model.checkpoint is not None:
        path = model.checkpoint if model.checkpoint.is_absolute() else base / model.checkpoint
        if not path.is_file():
            raise ctx.error("model", "checkpoint", f"file {path} does not exist")
        model = replace(model, checkpoint=path)
    if model.name.startswith("module:"):  # imported from the spec's folder, like any relative path
        folder = base if model.path is None else model.path if model.path.is_absolute() else base / model.path
        if not folder.is_dir():
            raise ctx.error(
                "model", "path", f"folder {folder} does not exist; give the folder holding the model's module"
            )
        model = replace(model, path=folder)
    # Globs stay globs (a nightly series grows); only made absolute here, expanded by atlas.kinds.timeline.
    model = replace(model, checkpoints=tuple(str(base / c) for c in model.checkpoints))
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
    layers = []
    for entry, layer in enumerate(spec.layers):
        if layer.dictionary is not None:
            path = layer.dictionary if layer.dictionary.is_absolute() else base / layer.dictionary
            if not path.is_file():
                raise ctx.error("layers", "dictionary", f"file {path} does not exist", entry)
            layer = replace(layer, dictionary=path)
        for key in ("sae", "sae_compare"):
            given = getattr(layer, key)
            if given is not None:
                path = given if given.is_absolute() else base / given
                if not path.exists():
                    raise ctx.error("layers", key, f"{path} does not exist", entry)
                layer = replace(layer, **{key: path})
        layers.append(layer)
    cost = spec.cost
    if cost.throughput:
        path = Path(cost.throughput) if Path(cost.throughput).is_absolute() else base / cost.throughput
        if not path.is_file():
            raise ctx.error(
                "cost", "throughput", f"file {path} does not exist; write it with `atlas calibrate`"
            )
        cost = replace(cost, throughput=str(path))
    return replace(spec, model=model, examples=examples, cost=cost, layers=tuple(layers))


def parse_spec(text: str, source: str = "<spec>", base: Path | None = None) -> JobSpec:
    """Parse and check a spec's text; `base` is the folder relative paths start from."""
    ctx = _Context(text, source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{source}: not valid TOML: {err}") from err
    _check_uris(ctx, raw)
    for key in raw:
        if key not in TOP_LEVEL:
            raise ctx.error(
                key,
                None,
                f"unknown section. {close_matches(key, list(TOP_LEVEL))}Valid sections: {', '.join(TOP_LEVEL)}",
            )
    job = raw.get("job", {})
    if not isinstance(job, dict):
        raise ctx.error("job", None, "expected a table [job]")
    for key in job:
        if key not in ("name", "out", "keep_runs"):
            raise ctx.error(
                "job",
                key,
                f"unknown key. {close_matches(key, ['name', 'out', 'keep_runs'])}Valid keys: name, out, keep_runs",
            )
    keep_runs = job.get("keep_runs", 1)
    if not isinstance(keep_runs, int) or isinstance(keep_runs, bool) or keep_runs < 0:
        raise ctx.error(
            "job", "keep_runs", f"expected a whole number >= 0 (0 keeps every run), got {keep_runs!r}"
        )
    default_name = re.sub(r"[^A-Za-z0-9_.\-]+", "", Path(source).stem) or "job"
    name = job.get("name", default_name)
    try:
        out = job["out"] if "out" in job else str(derived_out(name))
        check_job_name(name)  # also names the marker and the nightly lock when out is given
    except OutputFolderError as err:
        raise ctx.error("job", "name", str(err)) from err
    if not isinstance(out, str):
        raise ctx.error("job", "out", f"expected a path string, got {type_name(out)} {out!r}")
    try:
        out = parse_out(out)
    except LocationError as err:
        raise ctx.error("job", "out", str(err)) from err
    checked = {key: _section(ctx, key, cls, raw.get(key, {})) for key, cls in SECTIONS.items()}
    # Unknown keys and wrong types first (section by section), then the layers, then values.
    problems = [(key, problem) for key, (_, found) in checked.items() for problem in found]
    problems.sort(key=lambda item: item[1].phase)
    if problems and problems[0][1].phase == 0:
        raise ctx.error(problems[0][0], problems[0][1].key, problems[0][1].message)
    layers = _layers(ctx, raw.get("layers"))
    if problems:
        raise ctx.error(problems[0][0], problems[0][1].key, problems[0][1].message)
    sections = {key: value for key, (value, _) in checked.items()}
    written = frozenset(
        f"{section}.{key}"
        for section in SECTIONS
        if isinstance(raw.get(section), dict)
        for key in raw[section]
    )
    spec = JobSpec(
        name=name,
        out=out,
        keep_runs=keep_runs,
        layers=layers,
        source=Path(source),
        written=written,
        **sections,
    )
    _check_diversity(ctx, spec.render)
    _check_atlas(ctx, spec)
    _check_densest(ctx, spec)
    _check_budget(ctx, spec.cost)
    _check_model_input(ctx, spec.model)
    return _resolve_paths(ctx, spec, base or Path.cwd())


def load_spec(path: Path | str) -> JobSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"job spec {path} does not exist")
    return parse_spec(path.read_text(), source=str(path), base=path.parent.resolve())


def follow_model(spec: JobSpec, model: Any) -> JobSpec:
    """Defaults that follow the model: a fixed-size model (learned position embeddings) renders at
    its input size unless the spec wrote render.size (a written size is checked, not changed)."""
    if model.fixed_size and "render.size" not in spec.written and spec.render.size != model.input_size:
        from dataclasses import replace

        return spec.replace(render=replace(spec.render, size=model.input_size))
    return spec


def check_against_model(spec: JobSpec, model: Any) -> None:
    """Checks that need the model: layer names (with close matches) and channel ranges."""
    from atlas.models import UnknownLayerError

    ctx = _Context(spec.source.read_text() if spec.source and spec.source.is_file() else "", str(spec.source))
    if spec.render.enabled and model.fixed_size and spec.render.size != model.input_size:
        raise ctx.error(
            "render",
            "size",
            f"model {model.name!r} takes only {model.input_size}x{model.input_size} inputs (position "
            f"embeddings fix the size): set size = {model.input_size}",
        )
    pairs_layers = [p[0] for p in spec.interactions.pairs]
    for layer in [*(layer.name for layer in spec.layers), *pairs_layers]:
        try:
            model.resolve_layer(layer)
        except UnknownLayerError as err:
            line = next((n for n, text in enumerate(ctx.lines, 1) if f'"{layer}"' in text), None)
            raise SpecError(f"{ctx.source}{f', line {line}' if line else ''}: {err}") from err
    for entry, layer in enumerate(spec.layers):
        count = model.channels(layer.name)
        bad = [c for c in layer.channels or () if c >= count]
        if bad:
            raise ctx.error(
                "layers",
                "channels",
                f"layer {layer.name!r} has {count} channels (0..{count - 1}); {bad} out of range",
                entry,
            )
        _check_visualize_range(ctx, layer, count, entry)
    for layer, a, b in spec.interactions.pairs:
        count = model.channels(layer)
        if not (0 <= a < count and 0 <= b < count):
            raise ctx.error(
                "interactions",
                "pairs",
                f"layer {layer!r} has {count} channels; pair ({a}, {b}) is out of range",
            )


def _check_visualize_range(ctx: _Context, layer: LayerSpec, count: int, entry: int) -> None:
    """The channels chosen for visualizations exist; "densest:N" asks for at most the entry's."""
    if isinstance(layer.visualize, Densest):
        available = len(layer.channels) if layer.channels is not None else count
        if layer.visualize.count > available:
            raise ctx.error(
                "layers",
                "visualize",
                f'"densest:{layer.visualize.count}" asks for more than the {available} channels of '
                f'layer {layer.name!r}: write at most densest:{available}, or "all"',
                entry,
            )
        return
    bad = [c for c in layer.visualize or () if c >= count]
    if bad:
        raise ctx.error(
            "layers",
            "visualize",
            f"layer {layer.name!r} has {count} channels (0..{count - 1}); {bad} out of range",
            entry,
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

    view = asdict(spec)
    view.pop("written")  # how the spec was written, not what it asks for
    return clean(view)
