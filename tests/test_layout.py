"""The code's shape, as docs and the README's Layout promise it: small parts, and data flowing one way.

audio -> features -> encoder -> decoder -> captions: the shared layers (layers/) know nothing above
them, the network (encoder/, decoder/) stands on them and knows nothing of the model assembled from it
(model/), of streaming or of the service; the streaming core (stream/) reaches the network only through
`Model` and knows nothing of the service (server/); and no module or folder imports itself back through others.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import typing
from pathlib import Path

import pytest
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
CORE = ("stream", "encoder", "decoder", "server")
PACKAGES = (*CORE, "layers", "model", "tools")
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 200
NOT_IMPORTED = {  # folder: the folders its modules must not import
    "layers": {"encoder", "decoder", "model", "stream", "server", "tools"},
    "encoder": {"decoder", "model", "stream", "server", "tools"},
    "decoder": {"encoder", "model", "stream", "server", "tools"},
    "model": {"stream", "server", "tools"},
    "stream": {"server", "tools"},
    "server": {"tools"},
}


def modules() -> dict[str, Path]:
    """captioner.<folder>.<name> -> its file."""
    found = {}
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("captioner", *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The captioner modules that a module imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("captioner.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("captioner."):
                out.add(target)
                out |= {f"{target}.{alias.name}" for alias in node.names}
    return out


@pytest.mark.parametrize("folder", CORE)
def test_functions_and_classes_stay_small(folder):
    too_long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                lines = node.end_lineno - node.lineno + 1
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                if lines > limit:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long


def test_imports_flow_one_way():
    found = modules()
    wrong = []
    for name, path in found.items():
        folder = name.split(".")[1]
        for target in imports(name, path):
            if target.split(".")[1] in NOT_IMPORTED.get(folder, ()):
                wrong.append(f"{name} imports {target}")
    assert not wrong


def test_no_import_cycles():
    found = modules()
    graph = {name: {t for t in imports(name, path) if t in found and t != name} for name, path in found.items()}
    # a package's __init__ is part of each of its modules' imports: leave packages out of the cycle search
    packages = {name for name, path in found.items() if path.name == "__init__.py"}
    graph = {name: targets - packages for name, targets in graph.items() if name not in packages}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles


def test_folders_import_one_way():
    """The folders' imports form no loop: each folder stands only on folders below it."""
    found = modules()
    edges: dict[str, set[str]] = {}
    for name, path in found.items():
        folder = name.split(".")[1]
        edges.setdefault(folder, set()).update(
            t.split(".")[1] for t in imports(name, path) if t.split(".")[1] != folder and len(t.split(".")) > 1)
    order: list[str] = []
    remaining = {folder: set(targets) & set(edges) for folder, targets in edges.items()}
    while remaining:
        ready = sorted(f for f, targets in remaining.items() if not targets - set(order))
        assert ready, f"folders import each other in a loop: {remaining}"
        order += ready
        for folder in ready:
            del remaining[folder]
    assert order.index("layers") < order.index("encoder") < order.index("model") < order.index("stream")


def _runs_the_network(value: object) -> bool:
    """A torch module class, or a function that takes one (it would run the network around Model)."""
    if inspect.isclass(value):
        return issubclass(value, nn.Module)
    if inspect.isfunction(value):
        hints = typing.get_type_hints(value)
        return any(inspect.isclass(h) and issubclass(h, nn.Module) for h in hints.values())
    return False


def test_stream_reaches_the_network_only_through_model():
    """captioner.stream never touches Model.network and imports no network module or function that runs one."""
    wrong = []
    for path in sorted((ROOT / "stream").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "network":
                wrong.append(f"{path.name}:{node.lineno} .network")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[1:2] in (["encoder"], ["decoder"]):
                module = importlib.import_module(node.module)
                wrong += [f"{path.name}:{node.lineno} {node.module}.{alias.name}" for alias in node.names
                          if _runs_the_network(getattr(module, alias.name))]
    assert not wrong
