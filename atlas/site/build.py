"""Build the static atlas site from an output folder, one layer at a time, and switch it in atomically.

The site is plain files (HTML, a JPEG sprite per channel, a CSS and a JS file, and one small
data script per layer) that work from `file://` with no server and no external request. It is built in a temporary sibling folder and renamed over the
previous site only when complete, so a failed nightly rebuild leaves yesterday's site in place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from atlas.core.errors import AtlasError
from atlas.core.schema import QUANTILE_GROUPS
from atlas.data.skipped import REASONS, count_reasons, read_skipped
from atlas.plan.layer_names import base_layer
from atlas.site.actatlas import Dictionary, read_atlas, read_places
from atlas.site.changes import build_summary, channel_ranges, diff_builds, load_summary
from atlas.site.channels import BUCKETS, QUANTILE, ChannelEntry, PreviousSprites, read_layer
from atlas.site.columns import Column, job_columns
from atlas.site.features import feature_health, feature_index, index_file, read_features, write_feature_index
from atlas.site.images import LayerImages, Picture
from atlas.site.interactions import read_interactions
from atlas.site.labels import top_labels
from atlas.site.paging import SEARCH_FILE, Page, ranges, split, write_search
from atlas.site.quality import EXPLAINED, MEASURES, attach_quality, layer_spread, thresholds_for_page
from atlas.site.slugs import layer_slugs
from atlas.site.sprites import SpriteLayout
from atlas.site.stability import read_stability
from atlas.site.timeline import ALERTS_SHOWN as TIMELINE_ALERTS_SHOWN
from atlas.site.timeline import build_timeline, has_timeline
from atlas.site.views import layer_views
from atlas.site.workers import ComposeJobs, auto_workers
from atlas.store.outdir import check_site_folder, marker_job, write_marker
from atlas.store.safefs import folder_mode, remove, swap_folder
from atlas.store.store import JOB, Store, UnitRecord

SUMMARY_FILE = "build.json"
FEATURE_FOLDER = "f"  # an SAE layer's per-feature files, in its image folder
DETAILS_FILE = "details.js"  # of a layer's first page; page n > 1 loads details.p<n>.js
SAMPLES_PER_LAYER = 6
SKIPPED_PAGE = "skipped.html"
SKIPPED_SHOWN = 10_000  # rows on the skipped-inputs page; the store's `skipped` table has them all
JOB_DEFAULTS = {
    "name": "",
    "model": "",
    "model_digest": "",
    "started": "",
    "finished": "",
    "renderer_version": "",
    "layers": [],
    "spec": {},
}


class SiteError(AtlasError, RuntimeError):
    """The site cannot be built from this folder; the message says what to do instead."""


@dataclass(frozen=True)
class Sample:
    """One optimized image on the index: a crop of a channel's sprite."""

    channel: int
    sprite: Picture
    crop_style: str
    aspect: float


@dataclass
class LayerSummary:
    """What the index and the layer bar need to know about a layer once its page is written."""

    name: str
    slug: str
    total_channels: int | None
    planned: int | None  # channels the job asked for: known before the layer is read
    height: int | None
    width: int | None
    shown: int = 0
    optimized: int = 0
    with_examples: int = 0
    samples: list[Sample] = field(default_factory=list)
    failed: list[UnitRecord] = field(default_factory=list)
    has_interactions: bool = False
    has_atlas: bool = False  # an activation atlas page (atlas.site.actatlas)
    sprite_keys: dict[str, str] = field(default_factory=dict)
    quality: dict[str, float | int] = field(default_factory=dict)  # flagged count, proxy medians
    pages: list[Page] = field(default_factory=list)
    layout: str = "map"  # map, tokens or channels_last (atlas.models.layout)


def build_site(out: Path | str, site_dir: Path | None = None, workers: int | None = None) -> Path:
    """Build the atlas site for the store `out`; returns the path of its index.html.

    The site is built on local disk: in `out/site` for a local store, in a cache folder for a
    bucket (kept, so the next build reuses unchanged sprites; `atlas.site.publish` puts it online).
    `workers` processes compose the channel sprites (default: one per core for large atlases,
    inline for small ones).
    """
    store = Store(out)
    if site_dir is None:
        site_dir = store.root / "site" if store.root is not None else _cache_folder(store.uri)
    site_dir = Path(site_dir)
    if not store.job() and not store.entries() and not has_timeline(store):
        raise SiteError(
            f"{store.uri} has neither {JOB} nor unit records: point build_site at the output folder of "
            "an atlas run (the `out` of the job spec), or run the job first"
        )
    check_site_folder(site_dir)
    site_dir.parent.mkdir(parents=True, exist_ok=True)
    _sweep_killed_builds(site_dir)
    previous = load_summary(site_dir / SUMMARY_FILE)
    staging = Path(tempfile.mkdtemp(prefix=f".{site_dir.name}.building-", dir=site_dir.parent))
    try:
        staging.chmod(folder_mode())  # mkdtemp makes 0700: a web server could not read the site
        write_marker(staging, kind="site")
        _build_into(staging, store, previous, site_dir, workers)
        retired = swap_folder(staging, site_dir)
    except BaseException:
        remove(staging, within=site_dir.parent)
        raise
    if retired is not None:
        remove(retired, within=site_dir.parent)
    return site_dir / "index.html"


def _cache_folder(uri: str) -> Path:
    """Where the site of a bucket store is built (one folder per store URI)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "neuron-atlas" / "sites" / hashlib.sha256(uri.encode()).hexdigest()[:16] / "site"


def _sweep_killed_builds(site_dir: Path) -> None:
    """Remove what a killed build left next to the site: its staging folder or the site it retired.

    Only folders the atlas marked are removed; two builds of one site at once are not supported
    (the nightly script holds a lock).
    """
    for pattern in (f".{site_dir.name}.old-*", f".{site_dir.name}.building-*"):
        for leftover in sorted(site_dir.parent.glob(pattern), reverse=True):
            if not leftover.is_dir() or leftover.is_symlink() or marker_job(leftover) is None:
                continue
            if pattern.endswith("old-*") and not site_dir.exists():  # killed between two renames
                leftover.rename(site_dir)
            else:
                remove(leftover, within=site_dir.parent)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("atlas.site", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["value"] = _format_value
    env.filters["values"] = lambda values: " ".join(_format_value(v) for v in values)
    env.filters["ranges"] = channel_ranges
    env.filters["when"] = _format_time
    env.filters["css_string"] = _css_string
    return env


def _format_value(value: float | None) -> str:
    """Activations as short text; missing or non-finite values as an en dash."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.3g}"


def _css_string(text: str) -> Markup:
    """Text as a quoted CSS string inside <style>, where HTML escapes are not decoded."""
    escaped = "".join(f"\\{ord(c):x} " if c in '"\\<>\n' else c for c in str(text))
    return Markup(f'"{escaped}"')


def _format_time(value: object) -> str:
    """ISO times from job.json as `2026-01-01 00:10 UTC`; other text as it is."""
    if not value:
        return "–"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
        return moment.strftime("%Y-%m-%d %H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M")


def _layer_plan(store: Store, job: dict) -> list[dict]:
    """Layers of the job in its order, then any layer found only in the store."""
    planned = [dict(layer) for layer in job.get("layers", []) if isinstance(layer, dict) and "name" in layer]
    known = {layer["name"] for layer in planned}
    for kind in ("render", "examples", "histogram"):
        for name in store.layers(kind):
            if name not in known:
                planned.append({"name": name})
                known.add(name)
    return planned


def _build_into(
    root: Path, store: Store, previous: dict | None, previous_site: Path, workers: int | None
) -> None:
    job = {**JOB_DEFAULTS, **store.job()}  # a store without job.json still gets a site
    env = _environment()
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    entries = store.entries()
    plan = _layer_plan(store, job)
    slugs = layer_slugs(layer["name"] for layer in plan)
    summaries = [
        LayerSummary(
            name=layer["name"],
            slug=slugs[layer["name"]],
            total_channels=layer.get("total_channels"),
            planned=len(layer.get("channels") or ()) or layer.get("total_channels"),
            height=layer.get("height"),
            width=layer.get("width"),
            layout=layer.get("layout", "map"),
            failed=[e for e in entries if e.status == "failed" and e.layer == layer["name"]],
        )
        for layer in plan
    ]
    common = {
        "job": job,
        "built": built,
        "nav": summaries,
        "settings": _settings(job),
        "all_columns": job_columns(job),
    }
    if workers is None:
        workers = auto_workers(sum(summary.planned or 0 for summary in summaries))
    with ComposeJobs(workers) as jobs:
        for index, (layer, summary) in enumerate(zip(plan, summaries, strict=True)):
            neighbours = (
                summaries[index - 1] if index else None,
                summaries[index + 1] if index + 1 < len(summaries) else None,
            )
            images = LayerImages(root, summary.slug, jobs)
            earlier = _previous_sprites(previous, previous_site, summary.name)
            inputs = _channel_inputs(entries, summary.name)
            _build_layer(store, env, images, layer, summary, neighbours, common, inputs, earlier)
            jobs.drain()  # the layer's sprites are on disk before the next layer starts
    sprites = {summary.name: {"slug": summary.slug, "keys": summary.sprite_keys} for summary in summaries}
    current = build_summary(entries, str(job.get("model_digest", "")), built, sprites)
    changes = diff_builds(previous, current)
    skipped = read_skipped(store)
    if skipped.num_rows:
        env.get_template("skipped.html").stream(
            current=None,
            rows=skipped.slice(0, SKIPPED_SHOWN).to_pylist(),
            total=skipped.num_rows,
            reasons=REASONS,
            **common,
        ).dump(str(root / SKIPPED_PAGE), encoding="utf-8")
    timeline_labels, timeline = build_timeline(store, root, env, common, slugs)
    env.get_template("index.html").stream(
        current=None,
        timeline=timeline,
        timeline_labels=timeline_labels,
        shown=TIMELINE_ALERTS_SHOWN,
        changes=changes,
        skipped=count_reasons(skipped),
        skipped_page=SKIPPED_PAGE,
        reasons=REASONS,
        failed=[e for e in entries if e.status == "failed"],
        done=sum(e.status == "done" for e in entries),
        **common,
    ).dump(str(root / "index.html"), encoding="utf-8")
    write_search(root / SEARCH_FILE, [(s.name, s.slug, s.shown, s.pages) for s in summaries])
    _copy_static(root / "static")
    (root / SUMMARY_FILE).write_text(json.dumps(current, indent=1))


def _build_layer(
    store: Store,
    env: Environment,
    images: LayerImages,
    layer: dict,
    summary: LayerSummary,
    neighbours: tuple[LayerSummary | None, LayerSummary | None],
    common: dict,
    inputs: Callable[[int], str],
    earlier: PreviousSprites | None,
) -> None:
    """Write one layer's images and pages, then keep only its summary."""
    root = images.root
    all_columns: list[Column] = common["all_columns"]
    content = read_layer(
        store, summary.name, images, layer.get("channels") or (), inputs, all_columns, earlier
    )
    interactions = read_interactions(content.interaction_renders, content.direction_examples, images)
    channels = content.channels
    attach_quality(store, summary.name, channels)
    summary.quality = layer_spread(channels)
    summary.shown = len(channels)
    single = [column.name for column in all_columns if column.kind == "optimized"]
    summary.optimized = sum(any(o in c.values for o in single) for c in channels)
    summary.with_examples = sum(any(b in c.values for b in BUCKETS) for c in channels)
    summary.samples = _samples(channels, content.layout, all_columns)
    summary.has_interactions = interactions is not None
    summary.sprite_keys = {str(c.channel): c.sprite_key for c in channels if c.sprite is not None}
    columns = _row_columns(channels, common["job"], all_columns)
    shown = {column.name for column in columns}
    fits = _row_fits(content.layout, [column.name for column in columns])
    atlas_grids = read_atlas(
        store, summary.name, root, summary.slug, _dictionaries_over(summary.name, common)
    )
    summary.has_atlas = bool(atlas_grids)
    atlas_layer, places = read_places(store, summary.name)  # a dictionary's directions in an atlas
    slugs = {s.name: s.slug for s in common["nav"]}
    classes = model_classes(common["job"])
    features = read_features(store, summary.name, classes)
    enriched = top_labels(channels, common["job"].get("labels") or {})
    page = {
        "current": summary,
        "layer": summary,
        "previous_layer": neighbours[0],
        "next_layer": neighbours[1],
        "names": layer.get("names") or [],
        "places": places,
        "features": features,  # an SAE layer's decoder neighbours, logit effects
        "health": feature_health(channels) if layer.get("sae") else None,
        "matches": read_stability(store, summary.name),  # each feature's match in a compared SAE
        "enriched": enriched,
        "atlas_page": f"{slugs[atlas_layer]}.atlas.html" if atlas_layer in slugs else "",
        "views": layer_views(store, summary.name),  # units of kinds with a registered view
        "fits": fits,
        **common,
    }
    layout = content.layout
    page = {**page, "layout": layout}
    pages = split([c.channel for c in channels], summary.slug)
    summary.pages = [p for p, _ in pages]
    grids = {c: [r.columns, r.rows] for c, r in layout.regions.items() if c in shown} if layout else {}
    quantile = layout.regions.get(QUANTILE) if layout else None  # shown by the channel view only
    # where the channel view finds the quantile groups' cells: [x, y, cell width, cell height,
    # cells a row, sprite width, sprite height, groups]
    quantile_cells = (
        [*quantile.cell(0), quantile.columns, layout.width, layout.height, QUANTILE_GROUPS]
        if quantile and layout
        else []
    )
    kinds = {column.name.replace("_", "-"): column.kind for column in columns}
    sae = bool(layer.get("sae"))
    feature_page = feature_page_file(summary.slug) if sae else ""
    shared = {
        "grids": grids,
        "quantile_cells": quantile_cells,
        "kinds": kinds,
        "measures": MEASURES,
        "explained": EXPLAINED,
        "thresholds": thresholds_for_page(),
        "pages": summary.pages if len(pages) > 1 else [],
        "page_ranges": ranges(summary.pages),
        "feature_page": feature_page,
    }
    for number, (this, part) in enumerate(pages):
        # the channel view's extras, per page: a layer of 49,152 SAE features would load megabytes
        details = details_file(number)
        _write_details(images.folder / details, summary.slug, channels[part])
        env.get_template("layer.html").stream(
            details=f"img/{summary.slug}/{details}",
            channels=channels[part],
            columns=columns,
            this_page=number,
            feature_files="",
            **shared,
            **page,
        ).dump(str(root / this.href), encoding="utf-8")
    if sae:  # every feature on its own: one shared page, one small file per feature
        row = env.get_template("_macros.html").module.channel_row  # type: ignore[attr-defined]
        folder = images.folder / FEATURE_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for entry in channels:
            html = row(
                entry,
                columns,
                page["names"],
                places,
                features,
                page["matches"],
                enriched,
                page["atlas_page"],
                MEASURES,
            )
            _write_feature(folder / f"{entry.channel}.js", entry.channel, str(html), _details(entry))
        env.get_template("layer.html").stream(
            details="",
            channels=[],
            columns=columns,
            this_page=-1,
            feature_files=f"img/{summary.slug}/{FEATURE_FOLDER}/",
            **shared,
            **page,
        ).dump(str(root / feature_page), encoding="utf-8")
        # and every feature in one index, searchable by number, label, top class and density
        write_feature_index(root, summary.slug, feature_index(channels, features, enriched, classes))
        env.get_template("features.html").stream(
            index_script=index_file(summary.slug), feature_page=feature_page, **page
        ).dump(str(root / f"{summary.slug}.features.html"), encoding="utf-8")
    if interactions is not None:
        by_channel = {c.channel: c for c in channels if c.sprite is not None}
        basis = [c for c in channels if c.sprite is not None and "channel" in c.values]
        env.get_template("interactions.html").stream(
            interactions=interactions,
            basis=basis[: max(len(interactions.directions), 4)],
            by_channel=by_channel,
            **page,
        ).dump(str(root / f"{summary.slug}.interactions.html"), encoding="utf-8")
    if atlas_grids:
        page_file = str(root / f"{summary.slug}.atlas.html")
        env.get_template("actatlas.html").stream(grids=atlas_grids, **page).dump(page_file, encoding="utf-8")


def model_classes(job: dict) -> list[str] | None:
    """The model's class names from job.json (`classes`), when it has them as a list of text."""
    classes = job.get("classes")
    if isinstance(classes, list) and classes and all(isinstance(name, str) for name in classes):
        return classes
    return None


def _dictionaries_over(layer: str, common: dict) -> list[Dictionary]:
    """The dictionary layers of the job over `layer`, with their slugs and direction names."""
    names = {entry["name"]: entry.get("names") or [] for entry in common["job"].get("layers", [])}
    return [
        Dictionary(s.name, s.slug, names.get(s.name, []))
        for s in common["nav"]
        if s.name != layer and base_layer(s.name) == layer
    ]


def _channel_inputs(entries: list[UnitRecord], layer: str) -> Callable[[int], str]:
    """For each channel, the content keys of the render and examples units that fed it."""
    own: dict[int, list[str]] = {}
    shared: list[str] = []  # units without a channel list cover every channel of the layer
    for entry in entries:
        if entry.status == "done" and entry.layer == layer and entry.kind in ("render", "examples"):
            for channel in entry.channels:
                own.setdefault(channel, []).append(entry.key)
            if not entry.channels:
                shared.append(entry.key)
    shared_text = ",".join(sorted(shared))
    return lambda channel: ",".join(sorted(own.get(channel, ()))) + "|" + shared_text


def _previous_sprites(previous: dict | None, site: Path, layer: str) -> PreviousSprites | None:
    """The previous build's sprites of a layer, if that build recorded them and is still there."""
    recorded = (previous or {}).get("sprites", {}).get(layer)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("slug"), str):
        return None
    slug = recorded["slug"]
    if slug != layer_slugs([slug]).get(slug):  # only a clean slug may name a folder to read from
        return None
    return PreviousSprites(site / "img" / slug, dict(recorded.get("keys") or {}))


def details_file(page: int) -> str:
    """The details script of a layer's `page` (0-based), in the layer's image folder."""
    return DETAILS_FILE if page == 0 else f"details.p{page + 1}.js"


def feature_page_file(slug: str) -> str:
    """The page of an SAE layer that shows one feature at a time, `<page>#channel-<feature>`."""
    return f"{slug}.feature.html"


def _details(entry: ChannelEntry) -> dict:
    """A channel's extras for the channel view: loss curves, example sources, quantile groups."""
    return {
        "loss": entry.losses,
        "sources": entry.sources,
        **({"quantiles": entry.quantiles} if entry.quantiles else {}),
    }


def _write_details(path: Path, slug: str, channels: list[ChannelEntry]) -> None:
    """Per-channel extras the channel view loads on demand, as a script (file:// has no fetch)."""
    details = {
        str(entry.channel): _details(entry)
        for entry in channels
        if entry.losses or entry.sources or entry.quantiles
    }
    text = json.dumps(details, separators=(",", ":"), allow_nan=False)
    path.write_text(
        "window.atlasDetails = window.atlasDetails || {};\n"
        f"window.atlasDetails[{json.dumps(slug)}] = {text};\n",
        encoding="utf-8",
    )


def _write_feature(path: Path, feature: int, row: str, details: dict) -> None:
    """One SAE feature's file, all its page needs besides its sprite: its row of the layer page
    and its extras, handed to the page's `atlasFeature` (a script: file:// has no fetch)."""
    text = json.dumps([feature, row, details], separators=(",", ":"), allow_nan=False)
    path.write_text(f"window.atlasFeature && window.atlasFeature.apply(null, {text});\n", encoding="utf-8")


def _samples(
    channels: list[ChannelEntry], layout: SpriteLayout | None, columns: list[Column]
) -> list[Sample]:
    """The first few channels' positive optimized images, cropped out of their sprites for the index."""
    positive = [c.name for c in columns if c.kind == "optimized" and c.side == "positive"]
    samples: list[Sample] = []
    for entry in channels:
        column = next((c for c in positive if c in entry.values), None)
        if column is not None and entry.sprite is not None and layout is not None:
            samples.append(
                Sample(entry.channel, entry.sprite, layout.crop_style(column), layout.aspect(column))
            )
        if len(samples) == SAMPLES_PER_LAYER:
            break
    return samples


# What each view of a layer page hides, and the columns with a margin before them (atlas.css).
VIEW_HIDES = {"appendix": {"slightly_negative", "slightly_positive"}, "spectrum": {"neuron", "diversity"}}
VIEW_MARGINS = {"appendix": {"max", "negative"}, "spectrum": set()}
ROW_GAP, ROW_PADDING, COLUMN_MARGIN = 8, 12, 10  # px, as atlas.css sets them


def _row_fits(layout: SpriteLayout | None, columns: list[str]) -> dict[str, tuple[float, int]]:
    """View -> (total aspect, fixed px) of its rows: the page shrinks rows to fit the window."""
    if layout is None:
        return {}
    fits = {}
    for view, hidden in VIEW_HIDES.items():
        shown = [c for c in columns if c not in hidden]
        extra = ROW_PADDING + COLUMN_MARGIN * sum(c in VIEW_MARGINS[view] for c in shown)
        fits[view] = layout.row_fit(shown, ROW_GAP, extra)
    return fits


def _row_columns(channels: list[ChannelEntry], job: dict, columns: list[Column]) -> list[Column]:
    """Row columns, in row order: those some channel fills, and the objectives the job asked for
    (so renders that failed show as empty cells rather than vanish)."""
    wanted = {column for entry in channels for column in entry.values}
    render = (job.get("spec") or {}).get("render")
    if isinstance(render, dict) and render.get("enabled", True):
        wanted.update(str(objective) for objective in render.get("objectives") or ())
    return [column for column in columns if column.name in wanted]


def _settings(job: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """The job spec's render and examples settings as (section, [(key, text)]) for display."""
    spec = job.get("spec") or {}
    sections = []
    model_input = job.get("input")
    if isinstance(model_input, dict) and model_input:
        stated = model_input.get("from_spec") or []
        shown = [
            (k, f"{_setting_text(model_input[k])} ({'the spec' if k in stated else 'the model'})")
            for k in ("size", "mean", "std")
            if k in model_input
        ]
        sections.append(("model input", [(str(k), v) for k, v in shown]))
    for section in ("render", "examples", "interactions"):
        values = spec.get(section)
        if isinstance(values, dict) and values:
            sections.append((section, [(str(k), _setting_text(v)) for k, v in values.items()]))
    return sections


def _setting_text(value: object, nested: bool = False) -> str:
    """Lists as `a, b`; lists inside lists (interaction pairs) as `(layer, 1, 5)`."""
    if isinstance(value, (list, tuple)):
        text = ", ".join(_setting_text(v, nested=True) for v in value)
        return f"({text})" if nested else text or "none"
    return str(value)


def _copy_static(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in resources.files("atlas.site").joinpath("static").iterdir():
        if item.is_file():
            (target / item.name).write_bytes(item.read_bytes())
