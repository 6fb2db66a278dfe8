"""The layer rule of docs/architecture.md and no import circles, read from the source (AST): imports
anywhere in a file, and the modules its strings name (``"jobs.kinds.train:PRETRAIN"`` in a registry,
``"llava_core.train.loop"`` in a package's face), which ``importlib`` loads at run time."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llava_core", "cluster", "jobs", "bench")
FORBIDDEN = {"llava_core": {"cluster", "jobs", "bench"}, "cluster": {"llava_core", "jobs", "bench"},
             "jobs": {"bench"}}
"""Package -> the packages it must never import (jobs -> cluster and jobs -> llava_core only)."""


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _named_module(text: str, files: dict[str, Path]) -> str | None:
    """The project module a string names (``pkg.mod`` or ``pkg.mod:attribute``), if it names one."""
    module = text.partition(":")[0]
    return module if "." in module and module in files else None


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file, lazy imports included; not
    those under ``if TYPE_CHECKING:``, for annotations only) or names in a string (registries loaded
    through importlib)."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                       for n in ast.walk(block)}   # imports for annotations only: no run-time dependency
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _named_module(node.value, files):
                targets = [_named_module(node.value, files)]
            else:
                continue
            deps |= {t for t in targets if t in files and t != name}
        graph[name] = deps
    return graph


def test_layers_import_one_way() -> None:
    crossings = [f"{mod} imports {dep}" for mod, deps in _graph().items() for dep in deps
                 if dep.split(".")[0] in FORBIDDEN.get(mod.split(".")[0], set())]
    assert not crossings, crossings


def test_no_import_circles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)
    assert not circles, [" -> ".join(c) for c in circles]


@pytest.mark.parametrize("package", PACKAGES)
def test_the_graph_sees_every_package(package: str) -> None:
    assert any(mod.startswith(package + ".") for mod in _graph())


def test_registries_are_seen() -> None:
    graph = _graph()
    assert "jobs.kinds.demo" in graph["jobs.kinds"]
    assert "cluster.local_executor" in graph["cluster.launch_spec"]
    assert "llava_core.train.loop" in graph["llava_core.train"]
