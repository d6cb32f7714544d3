"""Rewrite the table of registered names in docs/CONTRACTS.md from the registries.

Run after adding a built-in objective, parameterization, transform preset, precision, unit kind
or model source; tests/test_registry.py fails while the table is stale. With --check it only
reports (exit status 1 when the table differs).
"""

import sys
from pathlib import Path

from atlas.catalog import BEGIN, END, registry_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "CONTRACTS.md"


def updated(text: str) -> str:
    """`text` with the block between the markers replaced by the current table."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + registry_table() + text[end:]


if __name__ == "__main__":
    current = DOC.read_text()
    fresh = updated(current)
    if "--check" in sys.argv[1:]:
        sys.exit(0 if fresh == current else f"{DOC} is stale: run python scripts/registry_tables.py")
    DOC.write_text(fresh)
    print(f"wrote the registry table of {DOC}")
