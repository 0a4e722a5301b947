"""fedens' imports point one way (DESIGN.md): read from the source, every import inside a
function included. A lower layer never imports a higher one, no modules import each other in a
circle, and a pipeline never imports another pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import fedens

ROOT = Path(fedens.__file__).resolve().parent
#: bottom to top; a module may import its own layer or a lower one
LAYERS = [
    {"fedens.registry", "fedens.files", "fedens.config_schema", "fedens.lazy"},
    {"fedens.data", "fedens.experts"},
    {"fedens.combiners"},
    {"fedens.privacy"},
    {"fedens.federation"},
    {"fedens.runs"},
    {"fedens.pipelines"},
    {"fedens", "fedens.cli", "fedens.__main__", "fedens.flower_app"},
]


def module_name(path: Path) -> str:
    parts = ["fedens", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The fedens modules ``path`` imports (``from fedens.x import y``: ``fedens.x.y`` if that is a
    module, else ``fedens.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fedens")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedens"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}
GRAPH = {name: imports_of(path) & set(MODULES) for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    for depth in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:depth])
        for i, layer in enumerate(LAYERS):
            if prefix in layer:
                return i
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(m, i) for m, targets in graph.items() for i in targets if layer_of(i) > layer_of(m)]


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import circle, if any. Edges from a package to its own submodules are how a package
    exposes them, not a dependency of the package's code; every other edge counts."""

    def edges(module: str) -> set[str]:
        own = MODULES[module].name == "__init__.py"
        return {t for t in graph[module] if not (own and t.startswith(module + "."))}

    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(edges(module)):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def test_no_module_imports_a_higher_layer():
    upward = upward_imports(GRAPH)
    assert upward == [], "\n".join(f"{m} (layer {layer_of(m)}) imports {i} (layer {layer_of(i)})"
                                   for m, i in upward)


def test_no_import_circle():
    circle = find_circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_no_pipeline_imports_another():
    pipelines = {m for m in MODULES if m.startswith("fedens.pipelines.")}
    crossing = [(m, t) for m in pipelines for t in GRAPH[m] if t in pipelines and t != m]
    assert crossing == []


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """The checks above could fail: a lazy upward import, and a circle, written into the graph."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fedens.runs.frame import run\n")
    assert imports_of(bad) == {"fedens.runs.frame"}
    graph = {m: set(t) for m, t in GRAPH.items()}
    graph["fedens.data.schema"].add("fedens.runs.frame")
    assert upward_imports(graph) == [("fedens.data.schema", "fedens.runs.frame")]
    graph["fedens.combiners.base"].add("fedens.combiners.state")
    assert find_circle(graph) == ["fedens.combiners.base", "fedens.combiners.state", "fedens.combiners.base"]
