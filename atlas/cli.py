"""The `atlas` command: parse, call the library, print. Nothing here computes anything itself."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from atlas.core.errors import AtlasError
from atlas.core.registry import Registry, load_plugins, plugin_error
from atlas.store.location import check_uri, parse_out

if TYPE_CHECKING:
    from atlas.plan.spec import JobSpec

OUT_HELP = "Output folder or bucket URI, e.g. s3://bucket/prefix (default: the spec's job.out)."


def _packaged_spec(name: str) -> Path:
    return Path(str(resources.files("atlas") / "jobs" / f"{name}.toml"))


def _load(path: Path, out: str | None) -> JobSpec:
    from atlas.plan.spec import load_spec

    spec = load_spec(path)
    return spec.replace(out=parse_out(out, "--out")) if out else spec


def _progress(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="unit", desc="atlas", dynamic_ncols=True, file=_terminal())

    def tick(unit, outcome: str) -> None:
        if outcome in ("skipped", "planned"):  # skipped: already done, left out of the rate and ETA
            bar.total += 1 if outcome == "planned" else -1  # planned: a unit found during the run
            bar.refresh()
        else:
            bar.set_postfix_str(f"{outcome} {unit.label}", refresh=False)
            bar.update(1)
        if bar.n >= bar.total:
            bar.close()

    return tick


class _Echo(logging.Handler):
    """Prints the library's INFO notes (e.g. what was unwrapped from a checkpoint) as `note:` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"note: {record.getMessage()}", file=_terminal())


def _show_notes() -> None:
    log = logging.getLogger("atlas.models")
    if not any(isinstance(handler, _Echo) for handler in log.handlers):
        log.addHandler(_Echo())
        log.setLevel(logging.INFO)


def _one_line(err: click.UsageError) -> click.UsageError:
    """click's usage error as one `Error:` line (usage and hint folded into it)."""
    if isinstance(err, click.exceptions.NoArgsIsHelpError) or err.ctx is None:
        return err  # `atlas` alone prints the help
    message = " ".join(err.format_message().split())
    return click.UsageError(f"{message} (see `{err.ctx.command_path} --help`)")


class _OneLine(click.Command):
    """Parsing: a usage error is one line; --help and --version still work beside a broken plugin,
    with a warning line (docs/ERRORS.md)."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.Exit:
            if (error := plugin_error()) is not None:
                click.echo(f"Warning: {error}", err=True)
            raise
        except click.UsageError as err:
            raise _one_line(err) from None


class _Command(_OneLine):
    """A command: a broken plugin stops it before it starts (its names might be needed anywhere)."""

    def invoke(self, ctx: click.Context):
        load_plugins()
        _show_notes()
        return super().invoke(ctx)


class _Group(_OneLine, click.Group):
    """Prints a user error (`AtlasError`) as one line and exits with its code, never a traceback."""

    command_class = _Command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:  # e.g. an unknown command
            raise _one_line(err) from None
        except AtlasError as err:
            message = " ".join(str(err).split())  # one line, even for a message built over several
            click.echo(f"Error: {message}", err=True)
            ctx.exit(err.exit_code)


class _LocalPath(click.Path):
    """A local file's path; a URI given instead meets `check_uri` before any message repeats it."""

    def __init__(self, **options) -> None:
        super().__init__(path_type=Path, **options)

    def convert(self, value, param: click.Parameter | None, ctx: click.Context | None):
        if isinstance(value, str):
            check_uri(value, param.get_error_hint(ctx) if param and ctx else "")
        return super().convert(value, param, ctx)


class _Registered(click.Choice):
    """A choice among a registry's names (plugins' included), or a fixed tuple's; a wrong one in
    the registry's words. The registry is imported when the option is used or its help shown, so
    that `atlas --help` and the commands that do not render never import torch."""

    def __init__(self, module: str, name: str) -> None:
        self.home = (module, name)
        super().__init__(())

    @property
    def names(self) -> Registry | tuple[str, ...]:
        return getattr(import_module(self.home[0]), self.home[1])

    @property
    def choices(self) -> tuple[str, ...]:  # asked when used: plugins are imported by then
        names = self.names
        if not isinstance(names, Registry):
            return tuple(names)
        return names.names() if plugin_error() is None else names.known()

    @choices.setter
    def choices(self, _names: tuple[str, ...]) -> None:
        pass

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        names = self.names
        if not isinstance(names, Registry):
            return super().convert(value, param, ctx)
        if value not in names:
            self.fail(str(names.unknown(value)), param, ctx)
        return value


class _ObjectiveText(_Registered):
    """A registered objective's name, or an expression of targets (text with a ':'), read as
    `atlas.visualize` reads it; a wrong one says what is wrong and how to write it."""

    @staticmethod
    def is_expression(value: str) -> bool:
        return ":" in value

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not self.is_expression(value):
            return super().convert(value, param, ctx)
        from atlas.optvis.named import parse_objective
        from atlas.optvis.objectives import ObjectiveError

        try:
            parse_objective(value)
        except ObjectiveError as err:
            self.fail(str(err), param, ctx)
        return value


class _PenaltyOption(click.Option):
    """`--penalty`, whose help names the penalties (imported only when the help is shown)."""

    @property
    def help(self) -> str:
        from atlas.optvis.oneoff import PENALTIES

        return f"NAME=WEIGHT with NAME one of {', '.join(PENALTIES)} (repeatable)."

    @help.setter
    def help(self, _text: str | None) -> None:
        pass


def _explain(prepared: Any, store: Any, units: Any) -> list[Any]:
    """How many of `units` are already stored, and why the others are to be computed; returns
    the others."""
    from atlas.run.reasons import reasons

    pending = set(store.pending([u.key for u in units]))
    todo = [u for u in units if u.key in pending]
    click.echo(f"{len(units) - len(todo)} already done, {len(todo)} to compute")
    for reason, count in reasons(prepared, store, todo):
        click.echo(f"  {count} because: {reason}")
    return todo


_TERMINALS: list[TextIO] = []  # where the tool's own progress and notes go while Ray's go to a file


def _terminal() -> TextIO:
    return _TERMINALS[-1] if _TERMINALS else sys.stderr


@contextmanager
def _quiet_ray(name: str) -> Iterator[Path]:
    """While the body runs, what Ray prints in this process (its C++ core worker's lines and its
    Python warnings) goes to a log file, named by the summary; the tool's own progress and notes
    still reach the terminal. Yields the log's path."""
    log = Path(tempfile.gettempdir()) / f"atlas-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    sys.stderr.flush()
    real = _is_fd2(sys.stderr)
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1) if real else sys.stderr
    with open(log, "ab") as handle:
        os.dup2(handle.fileno(), 2)
    _TERMINALS.append(terminal)
    try:
        yield log
    finally:
        _TERMINALS.pop()
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if real:
            terminal.close()


def _is_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured stream (tests, notebooks)
        return False


def _ray_log_lines(log: Path, failed: bool) -> None:
    """Name Ray's log when it holds anything; after a failure, show its last lines too."""
    if not log.is_file() or not log.stat().st_size:
        log.unlink(missing_ok=True)
        return
    click.echo(f"  Ray's messages: {log}", err=True)
    if failed:
        for line in log.read_text(errors="replace").splitlines()[-10:]:
            click.echo(f"    {line}", err=True)


def _run(spec: JobSpec, force: bool, build: bool, only: tuple[str, ...] | None = None) -> None:
    from atlas.data.skipped import describe
    from atlas.run.job import run_job

    with _quiet_ray(spec.name) as log:
        result = run_job(spec, force=force, build=build, only=only, progress=_progress)
    where = result.site or result.out
    skipped_inputs = describe(result.skipped_inputs)
    extra = f", {skipped_inputs}" if skipped_inputs else ""
    retried = f", {result.retried} retried" if result.retried else ""
    click.echo(
        f"built {spec.name}: {result.done} units done, {result.skipped} already done, "
        f"{len(result.failed)} failed{retried}{extra} in {result.seconds:.0f} s -> {where}"
    )
    for label, reason in result.failed:
        click.echo(f"  failed: {label}: {reason}", err=True)
    _ray_log_lines(log, bool(result.failed))
    if result.failed:
        sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="neuron-atlas")
def main() -> None:
    """neuron-atlas: feature visualizations and dataset examples for every channel, as a static site."""


@main.command()
@click.option("--out", default="atlas-out/demo", show_default=True, help=OUT_HELP)
@click.option("--force", is_flag=True, help="Recompute units that are already done.")
def demo(out: str, force: bool) -> None:
    """Build the demo atlas (EfficientNet-Lite0, demo photos, local Ray)."""
    _run(_load(_packaged_spec("demo"), out), force, build=True)


@main.command()
@click.argument("job", type=_LocalPath())
@click.option("--out", help=OUT_HELP)
@click.option("--force", is_flag=True, help="Recompute units that are already done.")
@click.option("--no-site", is_flag=True, help="Only compute and store; do not build the site.")
def run(job: Path, out: str | None, force: bool, no_site: bool) -> None:
    """Run a job spec: render, scan, store and build the site."""
    _run(_load(job, out), force, build=not no_site)


@main.command()
@click.argument("job", type=_LocalPath())
@click.option("--out", help=OUT_HELP)
@click.option("--force", is_flag=True)
def scan(job: Path, out: str | None, force: bool) -> None:
    """Run only the dataset side of a job (scan + examples)."""
    _run(_load(job, out), force, build=False, only=("scan", "examples"))


@main.command()
@click.argument("job", type=_LocalPath())
@click.option("--out", help=OUT_HELP)
@click.option("--price", type=float, help="Price per GPU-hour (default: the spec's cost.price_per_gpu_hour).")
@click.option(
    "--throughput",
    type=_LocalPath(exists=True, dir_okay=False),
    help="Throughput figures from `atlas calibrate` (default: the spec's cost.throughput).",
)
def plan(job: Path, out: str | None, price: float | None, throughput: Path | None) -> None:
    """List the units a job would run, without running them, and what they would cost."""
    from atlas.run.cost import Throughput, estimate, without_visualizations
    from atlas.run.job import merge_units, prepare
    from atlas.run.phases import densest_left
    from atlas.store.store import Store

    spec = _load(job, out)
    prepared = prepare(spec)
    counts: dict[str, int] = {}
    for unit in prepared.plan.units:
        counts[unit.kind] = counts.get(unit.kind, 0) + 1
        click.echo(f"{unit.key}  {unit.label}")
    later = len(merge_units(prepared, prepared.plan.keys()))
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    click.echo(f"{len(prepared.plan.units)} units ({summary}) + {later} examples units after the scan")
    store = Store(prepared.spec.out)
    densest = densest_left(prepared, store)
    if densest:
        click.echo(f"+ {len(densest)} render units of the densest channels, chosen after the scan")
    todo = _explain(prepared, store, prepared.plan.units)
    if prepared.spec.model.checkpoints:
        from atlas.site.series import describe_order

        click.echo("\n".join(describe_order(prepared.spec.model.checkpoints)))
    figures = throughput or spec.cost.throughput
    if not figures:
        click.echo(
            "no GPU-hour estimate: measure with `atlas calibrate JOB -o FILE`, then set cost.throughput"
        )
        return
    speed = Throughput.load(Path(figures), spec.render.batch)
    rate = spec.cost.price_per_gpu_hour if price is None else price
    left = [*todo, *densest]
    found = estimate(left, spec, speed)
    click.echo(f"{len(left)} units left: {found.describe(rate)} on {speed.device} (figures: {figures})")
    bare = without_visualizations(left)
    click.echo(f"without visualizations, {len(bare)} units: {estimate(bare, spec, speed).describe(rate)}")


@main.command()
@click.argument("job", type=_LocalPath())
@click.option("-o", "--output", type=_LocalPath(), required=True, help="JSON file to write.")
@click.option("--device", default="auto", show_default=True)
def calibrate(job: Path, output: Path, device: str) -> None:
    """Measure scan and render throughput of a job's model here, for `atlas plan`'s GPU-hours."""
    from atlas.models import pick_device
    from atlas.plan.spec import load_spec
    from atlas.run.cost import calibrate as measure

    spec = load_spec(job)
    model = spec.model.load(pick_device(device))
    speed = measure(spec, model)
    speed.save(output)
    click.echo(
        f"{speed.device}: scan {speed.scan_images_per_s:g} images/s, "
        f"render {speed.render_image_steps_per_s:g} image-steps/s -> {output}"
    )


@main.command()
@click.argument("job", type=_LocalPath())
@click.option("--out", help=OUT_HELP)
@click.option("-v", "--verbose", is_flag=True, help="List every unit, not only the counts.")
def status(job: Path, out: str | None, verbose: bool) -> None:
    """Show which units of a job are done, pending, stale or failed."""
    from atlas.data.skipped import count_reasons, describe, read_skipped
    from atlas.run.job import job_status
    from atlas.store.store import Store

    spec = _load(job, out)
    state = job_status(spec)
    later, because = state.pop("later"), state.pop("because")
    click.echo("  ".join(f"{name}: {len(items)}" for name, items in state.items()))
    if later:
        click.echo(
            f"+ {len(later)} units planned once the units they read are done (examples after the scans)"
        )
    for line in because:
        count, _, reason = line.partition(": ")
        click.echo(f"  {count} to compute because: {reason}")
    if state["stale"]:
        click.echo(
            f"  {len(state['stale'])} stale: stored units this job no longer asks for (older settings, "
            "weights or data); the next run keeps them for job.keep_runs runs, then drops them"
        )
    for name, items in state.items():
        if name == "failed" or verbose:
            for item in items:
                click.echo(f"  {name}: {item}")
    store = Store(spec.out)
    if store.journal.skipped:
        click.echo(
            f"{len(store.journal.skipped)} unreadable journal lines skipped like torn lines "
            f"(`atlas verify {store.uri}` names them and drops them)"
        )
    skipped = read_skipped(store)
    if skipped.num_rows:
        click.echo(describe(count_reasons(skipped)) + (":" if verbose else " (-v lists them)"))
    for row in skipped.to_pylist() if verbose else ():
        click.echo(f"  skipped: {row['source_id']}: {row['reason']}: {row['message']}")


@main.command()
@click.argument("model")
@click.option("--checkpoint", type=_LocalPath(exists=True, dir_okay=False))
@click.option("--weights", default="default", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Also list sub-modules inside blocks.")
def layers(model: str, checkpoint: Path | None, weights: str, show_all: bool) -> None:
    """List a model's layers: channels (feature dims), layout and grid at its input size."""
    from atlas.models import load_model

    loaded = load_model(model, checkpoint, weights)
    infos = loaded.layers()
    if not show_all:  # the blocks a user picks from, not every conv inside them
        depth = min(info.name.count(".") for info in infos)
        infos = [
            i for i in infos if i.role or (i.name.count(".") <= depth + 1 and "static_padding" not in i.name)
        ]
    click.echo(f"{loaded.name}: input {loaded.input_size}x{loaded.input_size}")
    width = max(len(i.name) for i in infos)
    for info in infos:
        role = f"  {ROLE_NOTES[info.role]}" if info.role else ""
        click.echo(f"  {info.name:<{width}}  {info.channels:>5} channels  {info.shape.describe()}{role}")
    if any(info.prefix for info in infos):
        click.echo("class token: append @cls to a token layer's name (e.g. a block's output)")


ROLE_NOTES = {
    "block": "[block output]",
    "mlp": "[MLP hidden units, after the activation]",
    "attention": "[attention output]",
}


@main.command()
@click.argument("job", type=_LocalPath())
@click.option("--out", help=OUT_HELP)
@click.option(
    "--add",
    "add",
    multiple=True,
    type=_LocalPath(exists=True, dir_okay=False),
    help="Append this checkpoint to the stored series (a nightly job's new weights).",
)
@click.option("--force", is_flag=True, help="Recompute the timeline's units that are already done.")
@click.option("--no-site", is_flag=True, help="Only compute and store; do not build the site.")
def timeline(job: Path, out: str | None, add: tuple[Path, ...], force: bool, no_site: bool) -> None:
    """Probe every checkpoint of the series, render and scan the selected ones, match units across them."""
    from atlas.run.timeline import run_timeline

    spec = _load(job, out)
    with _quiet_ray(spec.name) as log:
        result = run_timeline(spec, add=add, force=force)
    computed = ", ".join(f"{n} {kind}" for kind, n in sorted(result.computed.items())) or "nothing"
    click.echo(
        f"timeline {spec.name}: {result.checkpoints} checkpoints ({result.added} new), computed {computed}, "
        f"{result.skipped} units already done in {result.seconds:.0f} s"
    )
    for path in result.unavailable:
        click.echo(f"  {path} is gone: its finished units stay, new ones for it cannot be computed", err=True)
    for label, reason in result.failed:
        click.echo(f"  failed: {label}: {reason}", err=True)
    if not no_site:
        from atlas.site.publish import site_of_store

        index, published = site_of_store(spec.out)  # a bucket's site goes online, as after `atlas run`
        click.echo(f"site: {published or index}")
    _ray_log_lines(log, bool(result.failed))
    if result.failed:
        sys.exit(1)


@main.command()
@click.argument("out")
@click.option(
    "--publish",
    metavar="URI",
    help="Also publish the site to a folder or bucket prefix, switched atomically (docs/STORE.md).",
)
@click.option("--keep", type=int, default=3, show_default=True, help="Published versions to keep.")
def site(out: str, publish: str | None, keep: int) -> None:
    """(Re)build the static HTML atlas from an output folder or bucket."""
    from atlas.site.publish import check_target, publish_site, site_of_store
    from atlas.store.location import open_location

    target = parse_out(publish, "--publish") if publish else None
    if target is not None:
        check_target(open_location(target))  # before the build: a target it may not use fails at once
    index, published = site_of_store(parse_out(out, "OUT"))
    click.echo(f"site: {published or index}")
    if target is not None:
        click.echo(f"published: {publish_site(index, target, keep=keep)}")


@main.command()
@click.argument("out")
@click.option("--dry-run", is_flag=True, help="Only report; leave damaged units recorded as done.")
def verify(out: str, dry_run: bool) -> None:
    """Read every shard of a store and check its sha256; damaged units are recomputed by the next run."""
    from atlas.store.store import Store

    store = Store(parse_out(out, "OUT"))
    store.require()
    bad = store.verify()
    for key in bad:
        entry = store.entry(key)
        click.echo(f"  damaged: {entry.kind} {entry.layer} {list(entry.channels)} ({key})", err=True)
    unreadable = store.journal.skipped
    for line in unreadable:
        click.echo(f"  unreadable journal line (skipped): {line}", err=True)
    done = sum(1 for e in store.entries() if e.status == "done")
    click.echo(f"{done - len(bad)} of {done} units intact in {store.uri}")
    if (bad or unreadable) and not dry_run:
        store.acquire()  # rewrites the journal without the unreadable lines
        try:
            store.forget(bad)
        finally:
            store.release()
        click.echo(f"{len(bad)} damaged units forgotten: the next run recomputes them")
        if unreadable:
            click.echo(f"{len(unreadable)} unreadable journal lines dropped: their units are recomputed")
    if bad or unreadable:
        sys.exit(1)


@main.command("sae-match")
@click.argument("first", type=_LocalPath())
@click.argument("second", type=_LocalPath())
@click.option("--layer", default="", help="The layer both SAEs encode (a label for the output).")
@click.option(
    "--candidates",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Partners per feature, each way, when the SAEs are too large for a dense assignment.",
)
@click.option("--csv", "table", type=_LocalPath(dir_okay=False), help="Also write one row per feature here.")
def sae_match(first: Path, second: Path, layer: str, candidates: int, table: Path | None) -> None:
    """Match the features of two SAEs of one layer by decoder cosine (one to one) and print the
    distribution of the match cosines: how many of FIRST's features SECOND also learned."""
    from atlas.kinds.stability import match_features
    from atlas.plan.sae import load_sae
    from atlas.site.stability import distribution

    a = load_sae(first, layer, None)
    b = load_sae(second, layer, None)
    found = match_features(a.w_dec, b.w_dec, candidates)
    summary = distribution(found.partner, found.cosine)
    named = f"{layer}: " if layer else ""
    click.echo(
        f"{named}{first} ({a.features} features) against {second} ({b.features}), {found.method} assignment"
    )
    click.echo(summary.line())
    if table is not None:
        rows = zip(found.partner, found.cosine, found.best, found.best_partner, strict=True)
        lines = ["feature,partner,cosine,best,best_partner"]
        lines += [f"{i},{p},{c:.6f},{b:.6f},{q}" for i, (p, c, b, q) in enumerate(rows)]
        table.write_text("\n".join(lines) + "\n")


@main.command()
@click.option("--model", "model_name", default="efficientnet-lite0", show_default=True)
@click.option(
    "--checkpoint",
    type=_LocalPath(exists=True, dir_okay=False),
    help="State dict to load (as `atlas layers`).",
)
@click.option("--weights", default="default", show_default=True)
@click.option("--layer", help="Layer name (see `atlas layers MODEL`); not used by an expression.")
@click.option(
    "--channel", type=int, default=0, show_default=True, help="Channel, or class for logit/probability."
)
@click.option(
    "--objective",
    type=_ObjectiveText("atlas.optvis.named", "OBJECTIVES"),
    default="channel",
    show_default=True,
    help="An objective's name, read with --layer and --channel, or an expression of targets as "
    "the notebook takes it: '2*conv2:5 - conv2:7', 'neuron:conv2:5 + 0.5*deepdream:conv3'.",
)
@click.option(
    "--count", type=int, default=1, show_default=True, help="Images in the batch (diversity needs >= 2)."
)
@click.option(
    "--param", type=_Registered("atlas.optvis.param", "PARAMS"), default="fourier", show_default=True
)
@click.option("--no-decorrelate", is_flag=True, help="Skip the ImageNet colour decorrelation.")
@click.option(
    "--descent",
    type=_Registered("atlas.optvis.oneoff", "DESCENTS"),
    default="adam",
    show_default=True,
    help="adam, or one of the article's steepest descents.",
)
@click.option("--steps", type=int, default=256, show_default=True)
@click.option("--size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option(
    "--transforms", type=_Registered("atlas.optvis.transforms", "PRESETS"), default="wider", show_default=True
)
@click.option(
    "--lr-schedule",
    type=_Registered("atlas.optvis.schedules", "SCHEDULES"),
    default="warmup-hold-cosine",
    show_default=True,
)
@click.option(
    "--coarse-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of the steps at a lower resolution of the parameterization (multi-resolution).",
)
@click.option("--penalty", cls=_PenaltyOption, multiple=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--precision",
    type=_Registered("atlas.optvis.render", "PRECISIONS"),
    default="fp32",
    show_default=True,
    help="Autocast.",
)
@click.option("-o", "--out", type=_LocalPath(), required=True, help="PNG to write.")
def render(
    model_name: str,
    checkpoint: Path | None,
    weights: str,
    out: Path,
    penalty: tuple[str, ...],
    device: str,
    no_decorrelate: bool,
    **options,
) -> None:
    """Render one feature visualization (one objective, one or more images) to a PNG."""
    from atlas.models import load_model, pick_device
    from atlas.optvis.named import parse_objective, reports_negated
    from atlas.optvis.oneoff import OneOffRequest, read_out, render_one_off, render_target, save_strip

    try:
        weights = {name: float(value) for name, _, value in (p.partition("=") for p in penalty)}
    except ValueError as err:
        raise click.BadParameter(f"penalties are NAME=WEIGHT, e.g. tv=0.05 ({err})") from err
    text = options["objective"]
    target = parse_objective(text) if _ObjectiveText.is_expression(text) else None
    if target is not None:
        options["layer"] = min(target.layers)  # a layer the request names; the target reads its own
    elif options["layer"] is None:
        raise click.UsageError(f"--objective {text} needs --layer (see `atlas layers {model_name}`)")
    request = OneOffRequest(penalties=weights, decorrelate=not no_decorrelate, **options)
    model = load_model(model_name, checkpoint, weights, device=pick_device(device))
    if target is None:
        result = render_one_off(model, request)
        values, what = read_out(result, request), f"{text} {request.layer}:{request.channel}"
    else:
        result, values = render_target(model, request, target)
        values, what = [-v for v in values] if reports_negated(text) else values, text
    save_strip(result.images, out)
    reached = ", ".join(f"{value:.3f}" for value in values)
    click.echo(f"wrote {out} ({what} reached {reached})")


if __name__ == "__main__":
    main()
