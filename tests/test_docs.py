"""The stored tables' columns are documented once, generated from atlas/core/schema.py: the docs stay true."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import gen_docs  # noqa: E402

from atlas.core.schema import TABLES, StoredTable  # noqa: E402


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


def _contract_block(title: str) -> str:
    """The fenced block of docs/CONTRACTS.md that starts with `title`."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md").read_text()
    blocks = re.findall(r"^```\w*\n(.*?)^```", text, flags=re.S | re.M)
    return next(block for block in blocks if block.startswith(title))


def test_loaded_model_has_every_member_the_contract_lists_as_written() -> None:
    import torch

    from atlas.models import load_model

    model = load_model("tiny-cnn")
    members = []
    for line in _contract_block("LoadedModel").splitlines()[1:]:
        for part in line.split("#")[0].split(";"):  # `name: type`, `a, b: type`, `method(args) -> type`
            cut = min((i for i in (part.find(":"), part.find("(")) if i >= 0), default=len(part))
            members += [name.strip() for name in part[:cut].split(",") if name.strip()]
    assert {"preprocessing.mean", "normalize", "activations", "digest"} <= set(members)
    for member in dict.fromkeys(members):
        value = model
        for part in member.split("."):
            value = getattr(value, part)  # AttributeError names a member the docs promise
    assert tuple(model.preprocessing.mean) == tuple(float(v) for v in model.preprocessing.mean)
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    assert torch.allclose(model.normalize(x), (x - mean) / std)
