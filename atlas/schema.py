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
