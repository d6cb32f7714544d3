"""The Arrow schemas of the tables the atlas stores (README: "Output and store").

One home for them: the renderer's units, the dataset examples and the synthetic stores of the
site's tests and benchmark all write exactly these columns.
"""

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

# Activation atlases (atlas.actatlas): the vectors a scan shard sampled, their 2-D layout, the
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
