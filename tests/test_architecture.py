"""The packages' import graph has no cycle (docs/architecture.md, "Where things are"): a module
that needs another's names imports it, and nothing imports back, not even inside a function (an
import deferred to dodge a cycle hides one)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dicomnode",)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its source (``from p import m`` counts as m
    when m is a module, else as p)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {module for module in found if module in known and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_back() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert "dicomnode.segmentation.volume" in graph["dicomnode.segmentation.spectct"]  # the graph is read
    assert cycles(graph) == []


def test_the_model_package_imports_no_other_room_and_training_only_the_model_and_simulator() -> None:
    """docs/architecture.md, "Layout": the model package works on arrays and cards; training builds
    on it and on the simulator; nothing outside ``dicomnode`` is a top-level package of ours."""
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}

    def outside(prefix: str, allowed: tuple[str, ...]) -> dict[str, set[str]]:
        return {name: {m for m in targets if not m.startswith(allowed)}
                for name, targets in graph.items() if name.startswith(prefix)
                and any(not m.startswith(allowed) for m in targets)}

    assert outside("dicomnode.segmentation", ("dicomnode.segmentation",)) == {}
    assert outside("dicomnode.train", ("dicomnode.train", "dicomnode.segmentation", "dicomnode.synth")) == {}
    assert not (REPO / "segmentation").exists() and not (REPO / "train").exists()
