"""The house's layering rules, checked from the imports in the code (no module is imported here).

- services never import handlers;
- the runtime (`services/`, `handlers/`) never imports the importer (`importer/`, used only by
  `server.py db import-original`), and the importer never imports handlers;
- the agent backends (`services/agents/<backend>/`) never import each other;
- the generic agent modules (`services/agents/*.py`) import no backend: they reach one only
  through `registry.py`'s "module:Class" rows;
- there is no import circle among the modules of `services/` (imports made only for type
  annotations, under `if TYPE_CHECKING:`, do not count: they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("claude_remote", "managed_agents")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, *, runtime_only: bool) -> set[str]:
    """Every module `path` imports (`from a import b` counts as a.b when a.b is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and runtime_only and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    ROOT / Path(*candidate.split(".")) / "__init__.py"
                ).exists():
                    found.add(candidate)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _modules(folder: str) -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((ROOT / folder).rglob("*.py"))}


def test_services_never_import_handlers() -> None:
    offenders = {
        name: sorted(i for i in _imports(path, runtime_only=False) if i.split(".")[0] == "handlers")
        for name, path in _modules("services").items()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_runtime_never_imports_the_importer() -> None:
    offenders = {
        name: sorted(i for i in _imports(path, runtime_only=False) if i.split(".")[0] == "importer")
        for name, path in {**_modules("services"), **_modules("handlers")}.items()
    }
    offenders |= {
        name: sorted(i for i in _imports(path, runtime_only=False) if i.split(".")[0] == "handlers")
        for name, path in _modules("importer").items()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_backends_never_import_each_other() -> None:
    offenders = {}
    for backend in BACKENDS:
        others = tuple(f"services.agents.{other}" for other in BACKENDS if other != backend)
        for name, path in _modules(f"services/agents/{backend}").items():
            found = sorted(i for i in _imports(path, runtime_only=False) if i.startswith(others))
            if found:
                offenders[name] = found
    assert offenders == {}


def test_generic_agent_modules_import_no_backend() -> None:
    backends = tuple(f"services.agents.{backend}" for backend in BACKENDS)
    offenders = {}
    for path in sorted((ROOT / "services" / "agents").glob("*.py")):
        found = sorted(i for i in _imports(path, runtime_only=False) if i.startswith(backends))
        if found:
            offenders[_module_name(path)] = found
    assert offenders == {}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph`, as the modules along it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_no_import_circle_among_services() -> None:
    modules = _modules("services")
    graph = {
        name: {i for i in _imports(path, runtime_only=True) if i in modules and i != name and i != "services"}
        for name, path in modules.items()
    }
    # A package's __init__ is imported with any of its modules; it imports nothing of ours here.
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
