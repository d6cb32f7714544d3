"""Opening a dataset source by what the user names: `demo`, a folder of images, a `.parquet`
file, a folder of Parquet shards or a bucket prefix (the formats are in atlas.data.source and
atlas.data.formats)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from atlas.data.formats import open_filesystem_source
from atlas.data.source import (
    IMAGE_SUFFIXES,
    DemoSource,
    FolderSource,
    ImageSource,
    ParquetSource,
    SourceError,
    _is_image_column,
    check_label_column,
)
from atlas.store.location import check_uri


def open_source(source: str | Path, column: str | None = None, labels: str | None = None) -> ImageSource:
    """`demo`, a folder of images, a `.parquet` file, a folder of Parquet shards or a bucket prefix
    (`s3://...`, any URI pyarrow.fs opens); fails now (not mid-scan) when unusable.

    `labels` names a label column of Parquet sources (label enrichment): each row's id then starts
    with its label, `<label>/<file>#row<i>`, as in an ImageFolder; a folder of images has its
    labels in its paths already and the demo photos have none, so both refuse it.
    """
    check_uri(str(source), "the dataset source")
    if str(source) == "demo":
        if labels is not None:
            raise SourceError(
                "examples.label_column names a column of Parquet files, but the source is 'demo' "
                "(the demo photos have no labels); drop label_column or point examples.source at Parquet files"
            )
        demo = DemoSource()
        if not demo.ids():
            raise SourceError("the demo photos were not found: reinstall scikit-image and scikit-learn")
        return demo
    if "://" in str(source) or (Path(source).is_dir() and not _has_images(Path(source))):
        return open_filesystem_source(str(source), column, labels)
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(
            f"dataset source {str(source)!r} does not exist; use 'demo', a folder of images or a .parquet file"
        )
    if path.is_dir():
        if labels is not None:
            raise SourceError(
                f"examples.label_column names a column of Parquet files, but {str(source)!r} is a folder "
                "of images; drop label_column (an ImageFolder's labels are its folder names: <label>/<image>)"
            )
        folder = FolderSource(path.resolve())
        if not folder.ids():
            raise SourceError(
                f"folder {path} holds no images (looked recursively for {', '.join(IMAGE_SUFFIXES)}); "
                "point examples.source at a folder with images"
            )
        return folder
    if path.suffix.lower() == ".parquet":
        return _open_parquet(path.resolve(), column, labels)
    raise SourceError(
        f"dataset source {path} is neither a folder nor a .parquet file; use 'demo', a folder or a .parquet file"
    )


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def _open_parquet(path: Path, column: str | None, labels: str | None = None) -> ParquetSource:
    try:
        schema = pq.read_schema(path)
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowInvalid) as err:
        raise SourceError(f"cannot read Parquet file {path}: {err}") from err
    image_columns = [f.name for f in schema if _is_image_column(f)]
    if column is None:
        column = "image" if "image" in image_columns else (image_columns[0] if image_columns else None)
        if column is None:
            names = ", ".join(f"{f.name} ({f.type})" for f in schema)
            raise SourceError(
                f"Parquet file {path} has no binary image column (columns: {names}); "
                "store encoded image bytes (PNG/JPEG) in a binary column"
            )
    elif column not in schema.names:
        raise SourceError(f"Parquet file {path} has no column {column!r}; columns: {', '.join(schema.names)}")
    elif column not in image_columns:
        raise SourceError(
            f"column {column!r} of {path} is {schema.field(column).type}, not image bytes; "
            f"binary columns: {', '.join(image_columns) or 'none'}"
        )
    if rows == 0:
        raise SourceError(f"Parquet file {path} has no rows; it must hold at least one image")
    if labels is not None:
        check_label_column(f"Parquet file {path}", schema, labels)
    return ParquetSource(path, column, labels)
