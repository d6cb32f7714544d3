"""Image sources behind `pyarrow.fs`: a bucket prefix (s3://, gs://, ...) or a folder of Parquet
shards of a large dataset (e.g. `train-00000-of-01024.parquet`), or both mixed.

Every image file under the prefix is one image (id: its path relative to the prefix), every row
of every `.parquet` file under it too (id: `<relative path>#row<i>`). With a label column
(`examples.label_column`) the prefix must hold only Parquet files, each with that column, and a
row's id starts with its label: `<label>/<relative path>#row<i>`, the ImageFolder form that label
enrichment reads (atlas.site.labels). The label is the column's text or integer with each `/`
made `_`; a null or empty label is `(none)` (`atlas.data.source.UNLABELLED`): the row is counted
in the dataset but enrichment never reports `(none)` as a feature's label. Workers open the filesystem
themselves (the source pickles as its URI), read only the files and row groups they need, and
decode with `atlas.data.source.decode_image` (or a scan's own decoder, from `raw_many`), so bad images
are skipped and counted as everywhere else.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from atlas.data.source import (
    IMAGE_SUFFIXES,
    Decoded,
    ImageSource,
    Raw,
    SourceError,
    _image_bytes,
    _is_image_column,
    check_label_column,
    decode_raw,
    row_label,
)

_ROW = "#row"


@lru_cache(maxsize=8)
def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """One filesystem per URI and process (resolving a bucket may ask the network)."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceError(f"cannot open dataset source {uri}: {err}") from err


@dataclass
class FileSystemSource(ImageSource):
    """Images and Parquet shards under a URI prefix; see the module docstring."""

    uri: str
    column: str | None = None
    label_column: str | None = None

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"dataset {self.uri}"

    def __getstate__(self) -> dict:
        """Workers get the listing but not every row's label (the driver's: they read rows by id)."""
        state = dict(self.__dict__)
        state.pop("_labels", None)
        return state

    @cached_property
    def _listing(self) -> list[tuple[str, int, int]]:
        """(relative path, size, mtime in ns) of every image and Parquet file, sorted."""
        fs, root = _filesystem(self.uri)
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        except (OSError, pa.ArrowInvalid) as err:
            raise SourceError(f"cannot list dataset source {self.uri}: {err}") from err
        found = []
        for info in infos:
            rel = info.path[len(root) :].lstrip("/")
            if info.type != pafs.FileType.File or any(p.startswith(".") for p in rel.split("/")):
                continue
            if rel.lower().endswith((*IMAGE_SUFFIXES, ".parquet")):
                found.append((rel, info.size or 0, info.mtime_ns or 0))
        return sorted(found)

    def _path(self, rel: str) -> str:
        return f"{_filesystem(self.uri)[1].rstrip('/')}/{rel}"

    @cached_property
    def _row_counts(self) -> dict[str, int]:
        """Rows of each Parquet file (from its footer), and the image column checked once."""
        fs, _ = _filesystem(self.uri)
        counts = {}
        for rel, _, _ in self._listing:
            if rel.lower().endswith(".parquet"):
                with fs.open_input_file(self._path(rel)) as handle:
                    parquet = pq.ParquetFile(handle)
                    self._check_column(rel, parquet.schema_arrow)
                    if self.label_column is not None:
                        check_label_column(f"{self.uri}/{rel}", parquet.schema_arrow, self.label_column)
                    counts[rel] = parquet.metadata.num_rows
        return counts

    def _check_column(self, rel: str, schema: pa.Schema) -> None:
        column = self.image_column(schema)
        if column is None:
            raise SourceError(
                f"{self.uri}/{rel} has no binary image column{f' {self.column!r}' if self.column else ''}; "
                f"columns: {', '.join(schema.names)}. Set examples.column to the image-bytes column"
            )

    def image_column(self, schema: pa.Schema) -> str | None:
        names = [f.name for f in schema if _is_image_column(f)]
        if self.column is not None:
            return self.column if self.column in names else None
        return "image" if "image" in names else (names[0] if names else None)

    def _check_only_parquet(self) -> None:
        """With a label column every file must be a Parquet file (an image has no column)."""
        images = [rel for rel, _, _ in self._listing if rel not in self._row_counts]
        if images:
            raise SourceError(
                f"examples.label_column names a column of Parquet files, but {self.uri} also holds images "
                f"({images[0]}{f' and {len(images) - 1} more' if len(images) > 1 else ''}); "
                "drop label_column or point examples.source at a prefix of Parquet files only"
            )

    def holds_images(self) -> bool:
        """Whether there is anything to scan: checked from the listing and the Parquet footers (with
        a label column, no label is read: workers open the source too)."""
        if self.label_column is None:
            return bool(self.ids())
        self._check_only_parquet()
        return any(self._row_counts.values())

    @cached_property
    def _labels(self) -> dict[str, list[str]]:
        """The label part of each row's id, per Parquet file (only with a label column)."""
        if self.label_column is None:
            return {}
        fs, _ = _filesystem(self.uri)
        self._check_only_parquet()
        labels = {}
        for rel in self._row_counts:
            with fs.open_input_file(self._path(rel)) as handle:
                column = pq.ParquetFile(handle).read(columns=[self.label_column]).column(0)
            labels[rel] = [row_label(value) for value in column.to_pylist()]
        return labels

    def ids(self) -> list[str]:
        if self.label_column is not None:
            return [
                f"{label}/{rel}{_ROW}{i}"
                for rel, labels in self._labels.items()
                for i, label in enumerate(labels)
            ]
        ids = []
        for rel, _, _ in self._listing:
            if rel in self._row_counts:
                ids.extend(f"{rel}{_ROW}{i}" for i in range(self._row_counts[rel]))
            else:
                ids.append(rel)
        return ids

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.column}\n".encode())
        if self.label_column is not None:  # other ids; a source without labels keeps its old fingerprint
            digest.update(f"labels:{self.label_column}\n".encode())
        for rel, size, mtime in self._listing:
            digest.update(f"{rel}\t{size}\t{mtime}\n".encode())
        return digest.hexdigest()[:16]

    def load_many(
        self, source_ids: Sequence[str], draft_size: int | None = None
    ) -> Iterator[tuple[str, Decoded]]:
        return ((source_id, decode_raw(raw, draft_size)) for source_id, raw in self.raw_many(source_ids))

    def raw_many(self, source_ids: Sequence[str]) -> Iterator[tuple[str, Raw]]:
        """Image files one read each; Parquet rows grouped by file, each row group read once."""
        fs, _ = _filesystem(self.uri)
        rows: dict[str, list[tuple[int, str]]] = {}
        for source_id in source_ids:
            rel, _, row = (source_id.partition("/")[2] if self.label_column else source_id).partition(_ROW)
            if row or self.label_column is not None:
                if row.isdigit() and int(row) < self._row_counts.get(rel, 0):
                    rows.setdefault(rel, []).append((int(row), source_id))
                else:
                    yield source_id, Decoded(None, ["skipped:missing"])
                continue
            try:
                with fs.open_input_file(self._path(rel)) as handle:
                    raw = handle.read()
            except (FileNotFoundError, OSError):
                yield source_id, Decoded(None, ["skipped:missing"])
                continue
            yield source_id, raw
        for rel, wanted in rows.items():
            with fs.open_input_file(self._path(rel)) as handle:
                parquet = pq.ParquetFile(handle)
                column = self.image_column(parquet.schema_arrow)
                starts = [0]
                for group in range(parquet.num_row_groups):
                    starts.append(starts[-1] + parquet.metadata.row_group(group).num_rows)
                cached_group, cached = -1, None
                for row, source_id in sorted(wanted):
                    group = bisect.bisect_right(starts, row) - 1
                    if group != cached_group:
                        cached_group = group
                        cached = _image_bytes(parquet.read_row_group(group, columns=[column]).column(0))
                    value = cached[row - starts[group]].as_py()
                    if isinstance(value, bytes) and value:
                        yield source_id, value
                    else:
                        yield source_id, Decoded(None, ["skipped:missing"])


def open_filesystem_source(
    uri: str, column: str | None = None, label_column: str | None = None
) -> FileSystemSource:
    """A bucket prefix or a folder of Parquet shards; fails now (not mid-scan) when unusable
    (a shard without the image or label column, a label column of other than text or integers)."""
    source = FileSystemSource(uri, column, label_column)
    if not source.holds_images():
        raise SourceError(
            f"{uri} holds no images and no Parquet rows (looked recursively for "
            f"{', '.join(IMAGE_SUFFIXES)} and .parquet); point examples.source at a prefix with images"
        )
    return source
