"""The Arrow schemas of the tables the atlas stores, and what each column means.

One home for them: the renderer's units, the dataset examples and the synthetic stores of the
site's tests and benchmark all write exactly these columns, and the column tables of
docs/STORE.md are generated from `TABLES` (scripts/gen_docs.py).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

RENDER_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("channel_b", pa.int32()),
        ("objective", pa.string()),
        ("variant", pa.int32()),
        ("label", pa.string()),
        ("image", pa.binary()),
        ("activation", pa.float32()),
        ("loss", pa.list_(pa.float32())),
        ("unit_key", pa.string()),
    ]
)

# The `quantile` bucket of an SAE layer's examples: groups of equal width across (0, max], and at
# most this many images per group; rank r lies in group QUANTILE_GROUPS - 1 - r // QUANTILE_PER_GROUP.
QUANTILE_GROUPS = 10
QUANTILE_PER_GROUP = 5

EXAMPLES_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("bucket", pa.string()),
        ("rank", pa.int32()),
        ("activation", pa.float32()),
        ("source_id", pa.string()),
        ("x", pa.int32()),
        ("y", pa.int32()),
        ("crop", pa.binary()),
        ("thumb", pa.binary()),
        ("unit_key", pa.string()),
    ]
)

HISTOGRAM_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("edges", pa.list_(pa.float32())),
        ("counts", pa.list_(pa.int64())),
        ("active", pa.float32()),
        ("images_active", pa.float32()),
        ("unit_key", pa.string()),
    ]
)

# One row per picture of a render unit, written by the same unit (atlas/quality/record.py).
QUALITY_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("objective", pa.string()),
        ("variant", pa.int32()),
        ("peak_activation", pa.float32()),
        ("robust_activation", pa.float32()),
        ("robust_worst", pa.float32()),
        ("high_frequency", pa.float32()),
        ("diversity_similarity", pa.float32()),
        ("unit_key", pa.string()),
    ]
)

# One row per channel of a render unit, written by its trust unit once its examples exist (atlas/kinds/trust.py).
TRUST_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("examples_robust", pa.float32()),
        ("path", pa.float32()),
        ("path_baseline", pa.float32()),
        ("path_references", pa.float32()),
        ("unit_key", pa.string()),
    ]
)

# One row per requested feature of an SAE layer (atlas/kinds/features.py).
FEATURES_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("nearest", pa.list_(pa.int32())),
        ("nearest_cosine", pa.list_(pa.float32())),
        ("raises", pa.list_(pa.int32())),
        ("raises_by", pa.list_(pa.float32())),
        ("lowers", pa.list_(pa.int32())),
        ("lowers_by", pa.list_(pa.float32())),
        ("unit_key", pa.string()),
    ]
)

STABILITY_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("partner", pa.int32()),
        ("cosine", pa.float32()),
        ("best", pa.float32()),
        ("best_partner", pa.int32()),
        ("unit_key", pa.string()),
    ]
)

SKIPPED_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("unit_key", pa.string()),
    ]
)

# Timeline tables (atlas.kinds.timeline, docs/STORE.md "Timeline"): one `probe` table per checkpoint,
# one `match` and one `cka` table per pair of consecutive checkpoints, one `series` table.
PROBE_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("max", pa.float32()),
        ("mean", pa.float32()),
        ("std", pa.float32()),
        ("active", pa.float32()),
        ("dead", pa.bool_()),
        ("signature", pa.list_(pa.float32())),
        ("unit_key", pa.string()),
    ]
)

MATCH_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("matched", pa.int32()),
        ("correlation", pa.float32()),
        ("status", pa.string()),
        ("unit_key", pa.string()),
    ]
)

CKA_SCHEMA = pa.schema([("layer", pa.string()), ("cka", pa.float32()), ("unit_key", pa.string())])

SERIES_SCHEMA = pa.schema(
    [
        ("position", pa.int32()),
        ("label", pa.string()),
        ("step", pa.int64()),
        ("checkpoint", pa.string()),
        ("digest", pa.string()),
        ("probe_key", pa.string()),
        ("match_key", pa.string()),
        ("render_keys", pa.list_(pa.string())),
        ("scan_keys", pa.list_(pa.string())),
        ("examples_keys", pa.list_(pa.string())),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
    ]
)

# Activation atlases (atlas.kinds.actatlas): the vectors a scan shard sampled, their 2-D layout, the
# grid cells over it and one icon per kept cell.
VECTORS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("source_id", pa.string()),
        ("position", pa.int32()),
        ("vector", pa.list_(pa.float32())),
        ("unit_key", pa.string()),
    ]
)

ATLAS_POINTS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("source_id", pa.string()),
        ("position", pa.int32()),
        ("x", pa.float32()),
        ("y", pa.float32()),
        ("unit_key", pa.string()),
    ]
)

ATLAS_CELLS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("grid", pa.int32()),
        ("cell", pa.int32()),
        ("row", pa.int32()),
        ("column", pa.int32()),
        ("count", pa.int64()),
        ("kept", pa.bool_()),
        ("mean", pa.list_(pa.float32())),
        ("source_ids", pa.list_(pa.string())),
        ("unit_key", pa.string()),
    ]
)

ATLAS_IMAGES_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("grid", pa.int32()),
        ("cell", pa.int32()),
        ("source_id", pa.string()),
        ("position", pa.int32()),
        ("image", pa.binary()),
        ("unit_key", pa.string()),
    ]
)

ATLAS_PLACES_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("atlas_layer", pa.string()),
        ("grid", pa.int32()),
        ("cell", pa.int32()),
        ("direction", pa.int32()),
        ("projection", pa.float32()),
        ("cosine", pa.float32()),
        ("cell_rank", pa.int32()),
        ("place_rank", pa.int32()),
        ("unit_key", pa.string()),
    ]
)

ICONS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("grid", pa.int32()),
        ("cell", pa.int32()),
        ("image", pa.binary()),
        ("activation", pa.float32()),
        ("cosine", pa.float32()),
        ("class", pa.int32()),
        ("class_gain", pa.float32()),
        ("unit_key", pa.string()),
    ]
)


@dataclass(frozen=True)
class StoredTable:
    schema: pa.Schema
    rows: str  # what one row is
    meanings: Mapping[str, str]  # column -> what it holds


TABLES = {
    "render": StoredTable(
        RENDER_SCHEMA,
        "one row per image",
        {
            "layer": "layer name",
            "channel": "channel (first channel for pairs; -1 for directions, whose id is `variant`)",
            "channel_b": "second channel for `pair` / `interpolation`, else -1",
            "objective": "`channel`, `neuron`, `negative`, `diversity`, `direction`, `pair`, `interpolation`",
            "variant": "index within a diversity set / direction id / interpolation step",
            "label": "human text, e.g. `channel 12`, `random direction 3`, `12 + 45`",
            "image": "PNG bytes",
            "activation": "mean activation of `channel` over space for the final image (direction: projection)",
            "loss": "loss curve",
            "unit_key": "content key of the unit that wrote the row",
        },
    ),
    "examples": StoredTable(
        EXAMPLES_SCHEMA,
        "one row per example",
        {
            "layer": "layer name",
            "channel": "channel; random direction i is channel -1 - i",
            "bucket": "`max`, `min`, `slightly_positive`, `slightly_negative`; SAE layers also `quantile`: "
            "10 groups of up to 5 images across (0, max], group 9 the highest",
            "rank": "0 = most extreme in its bucket; `quantile`: group 9 - rank // 5",
            "activation": "the channel's spatial maximum (`min`, `slightly_negative`: minimum) on the image",
            "source_id": "the image, e.g. `demo:horse.png@328x328+0+0` or a path relative to the folder",
            "x": "column of the position in the layer's activation map (the patch, on token layers)",
            "y": "row of the position in the layer's activation map (the patch, on token layers)",
            "crop": "PNG, the receptive field around the position; on token layers the whole image "
            "with the unit's per-patch heatmap",
            "thumb": "PNG, the whole image",
            "unit_key": "content key of the unit that wrote the row",
        },
    ),
    "histogram": StoredTable(
        HISTOGRAM_SCHEMA,
        "one row per channel",
        {
            "layer": "layer name",
            "channel": "channel; random direction i is channel -1 - i",
            "edges": "bin edges, roughly log-spaced; the outer ones are the true minimum and maximum",
            "counts": "positions (of every image) per bin",
            "active": "share of those positions where the activation is at least 2^-10 (about 0.001): "
            "where the unit fires (null in stores written before it was recorded)",
            "images_active": "share of the images where the unit fires somewhere (spatial maximum at least "
            "2^-10); SAE layers only, null elsewhere",
            "unit_key": "content key of the unit that wrote the row",
        },
    ),
    "quality": StoredTable(
        QUALITY_SCHEMA,
        "one row per picture of a render unit, written by that unit beside its `render` rows",
        {
            "layer": "as in `render`",
            "channel": "as in `render`",
            "objective": "as in `render` (`channel`, `neuron`, `negative`, `diversity`)",
            "variant": "as in `render`",
            "peak_activation": "the picture's activation at its strongest position (`negative`: minus the weakest), "
            "the measure of an example's `activation`: over the rank-0 `max` example it is the activation "
            "relative to the best dataset example (the site divides; the scan runs after rendering)",
            "robust_activation": "mean share of the picture's own objective kept under the held-out check set "
            "(`atlas.quality.CHECK_SET`: resize to 224 and 64 px, quarter shift, 30° rotation, JPEG 75; all "
            "outside the render transforms' range); null when the rendered score is not positive",
            "robust_worst": "the smallest share any one check keeps",
            "high_frequency": "share of luminance spectral power above 0.25 cycles/px (half Nyquist), "
            "Hann-windowed; white noise about 0.80, photos a few hundredths",
            "diversity_similarity": "`diversity` rows: mean pairwise cosine of the set's Gram matrices at the "
            "layer (1 = one picture repeated); null on other rows",
            "unit_key": "the render unit",
        },
    ),
    "trust": StoredTable(
        TRUST_SCHEMA,
        "one row per channel of a render unit, written by a trust unit once the channel's examples are stored",
        {
            "layer": "as in `render`",
            "channel": "as in `render`",
            "examples_robust": "mean share of the channel's activation its top dataset examples (resized to the "
            "render size) keep under the check set of `quality.robust_activation`; the site divides the "
            "picture's share by it",
            "path": "cosine similarity between the main picture's pattern in the layers below (each channel's "
            "mean, weighted by where the unit fires, standardized over random dataset images) and the mean "
            "pattern of the channel's top examples",
            "path_baseline": "the same similarity for random dataset images, averaged",
            "path_references": "the same similarity for the top examples, each against the mean of the others",
            "unit_key": "the trust unit",
        },
    ),
    "features": StoredTable(
        FEATURES_SCHEMA,
        "one row per requested feature of an SAE layer (`[[layers]] sae`)",
        {
            "layer": "the SAE layer, `<layer>@<stem>:<hash>`",
            "channel": "the feature",
            "nearest": "the features whose decoder directions have the highest cosine with this one's, best first",
            "nearest_cosine": "those cosines",
            "raises": "the classes whose logits rise most when the decoder direction (scaled to the mean length "
            "of the layer's position vectors on a mid-grey image) is added to the layer's output at every "
            "position, best first",
            "raises_by": "those logit changes",
            "lowers": "the classes whose logits fall most, the same way",
            "lowers_by": "those logit changes (negative)",
            "unit_key": "the features unit",
        },
    ),
    "stability": StoredTable(
        STABILITY_SCHEMA,
        "one row per feature of an SAE layer with `[[layers]] sae_compare`: its match in the other SAE",
        {
            "layer": "the SAE layer, `<layer>@<stem>:<hash>`",
            "channel": "the feature",
            "partner": "the other SAE's feature matched to it one to one (an optimal assignment by decoder "
            "cosine, atlas.kinds.stability); -1 when it is left unmatched",
            "cosine": "the decoder cosine with the partner; for an unmatched feature, its best cosine",
            "best": "the highest decoder cosine with any feature of the other SAE",
            "best_partner": "the feature of that cosine",
            "unit_key": "the stability unit",
        },
    ),
    "skipped": StoredTable(
        SKIPPED_SCHEMA,
        "one row per image a scan could not use; one shard per scan unit, empty when none",
        {
            "source_id": "the image, relative to the source's root (folder: `sub/x.jpg`; Parquet: `<file>#row<i>`)",
            "reason": "`corrupt`, `truncated`, `too_large` (over Pillow's decompression-bomb limit), "
            "`tiny` (a side under 16 px), `missing` (gone since the source was listed)",
            "message": "the decoder's words, e.g. `cannot identify image file ...`",
            "unit_key": "the scan unit",
        },
    ),
    "probe": StoredTable(
        PROBE_SCHEMA,
        "timeline: one row per channel and layer of a checkpoint",
        {
            "layer": "layer name",
            "channel": "channel",
            "max": "maximum activation over every position of every probe image",
            "mean": "mean activation over the same positions",
            "std": "standard deviation over the same positions",
            "active": "fraction of those positions where the activation is > 0",
            "dead": "std <= 1e-6 x (1 + abs(mean)): constant over the probe set (a dead unit may be a positive constant)",
            "signature": "activations at `positions` sampled positions (the same for every checkpoint) of each probe "
            "image: what matching and CKA compare",
            "unit_key": "the probe unit",
        },
    ),
    "match": StoredTable(
        MATCH_SCHEMA,
        "timeline: one row per channel of the earlier checkpoint of a consecutive pair",
        {
            "layer": "layer name",
            "channel": "channel in the earlier checkpoint",
            "matched": "its channel in the later checkpoint (Hungarian assignment), -1 if none",
            "correlation": "Pearson correlation of the two channels' signatures",
            "status": "`kept`, `moved` (matched to another index), `changed` (correlation below `role_threshold`), "
            "`died` (alive, then dead at this index), `born` (dead, then alive), `dead` (dead in both)",
            "unit_key": "the match unit",
        },
    ),
    "cka": StoredTable(
        CKA_SCHEMA,
        "timeline: one row per layer of a consecutive pair",
        {
            "layer": "layer name",
            "cka": "linear CKA (Kornblith et al., 2019) of the two checkpoints' signature matrices",
            "unit_key": "the match unit",
        },
    ),
    "series": StoredTable(
        SERIES_SCHEMA,
        "timeline: one row per checkpoint, in series order",
        {
            "position": "0, 1, ... in series order",
            "label": "the file name, or `step N`",
            "step": "the last number in the file name; -1 when it has none",
            "checkpoint": "the file's absolute path when it was added",
            "digest": "the weight digest: what identifies the checkpoint",
            "probe_key": "its probe unit",
            "match_key": "the match unit with the previous checkpoint (empty for the first)",
            "render_keys": "its render units (empty when never rendered)",
            "scan_keys": "its dataset scan units, one per shard (empty when never scanned)",
            "examples_keys": "its examples units: the top dataset examples per channel",
            "size": "the checkpoint file's size in bytes when its digest was taken (-1: unknown)",
            "mtime_ns": "its modification time then, in ns: the same path, size and mtime reuse the digest",
        },
    ),
    "vectors": StoredTable(
        VECTORS_SCHEMA,
        "one row per sampled image and activation-atlas layer; one shard per scan unit of a job with an atlas",
        {
            "layer": "layer name",
            "source_id": "the image",
            "position": "flat index of the hash-chosen spatial (or token) position",
            "vector": "the activation vector there (C values)",
            "unit_key": "the scan unit",
        },
    ),
    "atlas_layout": StoredTable(
        ATLAS_POINTS_SCHEMA,
        "one row per sampled image; one shard per atlas layer",
        {
            "layer": "layer name",
            "source_id": "the image",
            "position": "as in `vectors`",
            "x": "UMAP coordinate",
            "y": "UMAP coordinate",
            "unit_key": "the layout unit",
        },
    ),
    "atlas_grid": StoredTable(
        ATLAS_CELLS_SCHEMA,
        "one row per non-empty cell; one shard per atlas layer and grid size",
        {
            "layer": "layer name",
            "grid": "grid size (cells per side)",
            "cell": "row * grid + column",
            "row": "row, 0 at the lowest y",
            "column": "column, 0 at the lowest x",
            "count": "samples in the cell (the counts of a grid add up to the layout's rows)",
            "kept": "count >= min_count (dropped cells are listed, and counted, but get no mean or icon)",
            "mean": "the cell's mean activation vector (empty when dropped)",
            "source_ids": "up to 8 images that fell in the cell",
            "unit_key": "the grid unit",
        },
    ),
    "atlas_images": StoredTable(
        ATLAS_IMAGES_SCHEMA,
        "one row per image listed in a kept cell's `source_ids`; one shard per atlas layer and grid size",
        {
            "layer": "layer name",
            "grid": "grid size",
            "cell": "the cell",
            "source_id": "the image",
            "position": "as in `vectors`",
            "image": "PNG thumbnail (64 px) of the layer's receptive field around the position "
            "(the whole centered square for vector layers)",
            "unit_key": "the atlas images unit",
        },
    ),
    "atlas_places": StoredTable(
        ATLAS_PLACES_SCHEMA,
        "one row per (cell, dictionary direction) pair that is among the cell's top 5 directions by "
        "projection or the direction's top 3 cells by cosine; one shard per dictionary and grid size",
        {
            "layer": "the dictionary layer (`<layer>@<file>:<hash>`)",
            "atlas_layer": "the layer whose activation atlas holds the cell",
            "grid": "grid size",
            "cell": "the cell",
            "direction": "row of the dictionary (its channel on the dictionary layer)",
            "projection": "the cell's mean vector projected on the direction (its activation there)",
            "cosine": "cosine of the cell's mean vector with the direction",
            "cell_rank": "rank of the direction among the cell's directions by projection (-1: not in the top)",
            "place_rank": "rank of the cell among the direction's cells by cosine (-1: not in the top)",
            "unit_key": "the atlas places unit",
        },
    ),
    "icons": StoredTable(
        ICONS_SCHEMA,
        "one row per kept cell; one shard per icons unit (up to 32 cells)",
        {
            "layer": "layer name",
            "grid": "grid size",
            "cell": "the cell",
            "image": "PNG, optimized so that its activation averaged over positions reaches the cell's mean (objectives.mean_match)",
            "activation": "dot product of the icon's mean activation vector with the cell mean (not divided by the mean's norm: the objective's scale; `cosine` is the scale-free figure)",
            "cosine": "cosine of the icon's mean activation vector with the cell mean",
            "class": "the class whose logit the cell's direction raises most, through the rest of the network",
            "class_gain": "by how much that logit rises over the dataset mean's",
            "unit_key": "the icons unit",
        },
    ),
}


def keyed_table(columns: Mapping[str, Any], schema: pa.Schema, unit_key: str) -> pa.Table:
    """A unit's table in `schema`: `columns` (of equal lengths) and the unit's key on every row,
    the column every stored table carries (docs/STORE.md)."""
    rows = len(next(iter(columns.values()))) if columns else 0
    return pa.table({**columns, "unit_key": [unit_key] * rows}, schema=schema)
