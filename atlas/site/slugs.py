"""Safe, unique file names for layers, whatever characters their module names contain.

Layer names come from models and job specs (`features.3.conv`, `Mixed_5b`, or anything a user
module registers), so they may hold dots, slashes, `..` or markup. A slug keeps only
`[a-z0-9-]`, can never climb out of the site folder, and never collides with another layer's
slug or with the site's own pages; when cleaning would merge two names, a short hash of the
original name tells them apart.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

RESERVED = frozenset({"index", "static", "img", "build"})
MAX_SLUG_LENGTH = 48


def _clean(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:MAX_SLUG_LENGTH].strip("-") or "layer"


def _hashed(name: str, base: str) -> str:
    return f"{base}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def layer_slugs(names: Iterable[str]) -> dict[str, str]:
    """Map each distinct layer name to a unique slug; names that clean to the same slug all get a hash."""
    distinct = list(dict.fromkeys(names))
    cleaned = {name: _clean(name) for name in distinct}
    counts: dict[str, int] = {}
    for slug in cleaned.values():
        counts[slug] = counts.get(slug, 0) + 1
    slugs = {}
    for name, slug in cleaned.items():
        clash = counts[slug] > 1 or slug in RESERVED
        slugs[name] = _hashed(name, slug) if clash else slug
    if len(set(slugs.values())) != len(slugs):  # a hashed slug equal to another clean one
        slugs = {name: _hashed(name, slug) for name, slug in cleaned.items()}
    return slugs
