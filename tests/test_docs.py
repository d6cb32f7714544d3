"""The stored tables' columns are documented once, generated from atlas/schema.py: the docs stay true."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import gen_docs  # noqa: E402

from atlas.schema import TABLES, StoredTable  # noqa: E402


def test_store_doc_lists_the_columns_of_atlas_schema() -> None:
    text = gen_docs.STORE_DOC.read_text()
    assert gen_docs.updated(gen_docs.STORE_DOC, text) == text, "run python scripts/gen_docs.py"


def test_every_column_is_documented_with_its_type(monkeypatch) -> None:
    tables = gen_docs.column_tables()
    for table in TABLES.values():
        for column in table.schema:
            assert (
                f"| {column.name} | {gen_docs.type_name(column.type)} | {table.meanings[column.name]} |"
                in tables
            )
    assert "| loss | list<float32> |" in tables
    undocumented = StoredTable(
        pa.schema([("layer", pa.string()), ("new", pa.int32())]), "rows", {"layer": "x"}
    )
    monkeypatch.setitem(TABLES, "render", undocumented)
    with pytest.raises(ValueError, match="meanings of 'render' do not match"):
        gen_docs.column_tables()
