"""The package's shape: no import cycles among xfer's modules, and only the UI subpackage imports gradio.

Read from the source (every import statement, also those inside functions or under
``TYPE_CHECKING``), so a cycle that only a lazy import keeps from failing is still found.
``xfer/__init__``'s names imported on first use (``importlib``, PEP 562) are not import statements.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xfer"
UI_PACKAGE = "xfer.studio"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports, by absolute name: xfer's own and third-party top-level packages."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import lite` imports the module xfer.nets.lite; `from . import __version__` the package itself.
            submodules = {f"{target}.{a.name}" for a in node.names} & set(MODULES)
            found.update(submodules)
            if len(submodules) < len(node.names) or target not in MODULES:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """xfer module -> the xfer modules it imports."""
    return {name: {m for m in _imports(name) if m in MODULES and m != name} for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_xfer_modules():
    graph = import_graph()
    assert {"xfer", "xfer.model", "xfer.card", "xfer.nets.registry", "xfer.data.folders"} <= set(graph)
    assert "xfer.nets.registry" in graph["xfer.nets.strategies"]  # the graph sees relative imports
    assert graph["xfer.nets"] >= {"xfer.nets.lite", "xfer.nets.registry"} and "xfer.nets" not in graph["xfer.nets"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_ui_subpackage_imports_gradio():
    outside = [name for name in MODULES if name != UI_PACKAGE and not name.startswith(UI_PACKAGE + ".")
               and any(m == "gradio" or m.startswith("gradio.") for m in _imports(name))]
    assert outside == [], f"gradio is imported outside {UI_PACKAGE}: {outside}"
