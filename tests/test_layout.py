"""The house plan: folders by stage, each importing only the folders below it, and no circles.

Every import in the package (function-level ones too) is read from the source; a module in a
folder may import its own folder and the folders listed before it in `STAGES`, never one after.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "atlas"
# Lowest first. The site reads the store and writes HTML (no torch, no Ray); `run` may build it.
STAGES = ("core", "store", "data", "models", "optvis", "quality", "plan", "kinds", "site", "run", "")
TOP = ("api", "cli", "catalog")  # the notebook API, the command and the docs' catalogue: on top


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "atlas" or name.startswith("atlas.")}


def _stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(STAGES)  # `atlas` itself (its lazy notebook attributes)
    if parts[1] in TOP:
        return len(STAGES)
    return STAGES.index(parts[1])


MODULES = {_module(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_stage():
    strays = [m for m in MODULES if m.count(".") and m.split(".")[1] not in STAGES + TOP]
    assert not strays, f"modules outside the stage folders: {strays}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_its_own_stage_or_below(module):
    own = _stage(module)
    upward = []
    for name in _imports(MODULES[module]):
        while name not in MODULES and "." in name:
            name = name.rpartition(".")[0]  # `from atlas.x import Class` names the module atlas.x
        if name in MODULES and name != "atlas" and _stage(name) > own:
            upward.append(name)
    assert not upward, f"{module} imports from a higher stage: {sorted(upward)}"


def test_no_import_circles():
    graph = {}
    for module, path in MODULES.items():
        targets = set()
        for name in _imports(path):
            while name not in MODULES and "." in name:
                name = name.rpartition(".")[0]
            if name in MODULES and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    state: dict[str, int] = {}
    circle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circle.extend(
                    trail[trail.index(target) :] + [node, target] if target in trail else [node, target]
                )
                return True
            if target not in state and visit(target, trail + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if module not in state and visit(module, []):
            break
    assert not circle, f"import circle: {' -> '.join(circle)}"
