"""The benchmarks measure captioner's code as it is: none of bench/*.py patches it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
MOCKS = ("unittest.mock", "mock")  # modules made for patching code


def _captioner_names(tree: ast.Module) -> set[str]:
    """Names the module binds to captioner's modules, classes and functions by importing them."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "captioner"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "captioner":
            names |= {a.asname or a.name for a in node.names}
    return names


def _root(node: ast.expr) -> str | None:
    """`a` of `a.b.c` or `a.b[0]`."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def patches(source: str) -> list[str]:
    """Where the source patches captioner or the import system, as 'line N: what'."""
    tree = ast.parse(source)
    captioner = _captioner_names(tree)
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute | ast.Subscript) and _root(target) in captioner:
                found.append(f"line {node.lineno}: assigns to {ast.unparse(target)}, part of captioner")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            found.append(f"line {node.lineno}: {node.func.id}(...)")
        if isinstance(node, ast.Attribute) and node.attr == "path" and _root(node) == "sys":
            found.append(f"line {node.lineno}: sys.path (a script in bench/ imports its neighbours as it is)")
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module == "unittest":
                modules = [f"unittest.{a.name}" for a in node.names]
            found += [f"line {node.lineno}: imports {m}" for m in modules if m in MOCKS]
    return found


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_bench_script_does_not_patch_captioner(script):
    """No setattr, no assignment to captioner's modules or classes, no sys.path edits, no mocks."""
    assert patches(script.read_text()) == []


@pytest.mark.parametrize("source", [
    "import captioner.stream.session as s\ns.normalize = print",
    "from captioner.stream import engine\nengine.decode_with_draft = print",
    "from captioner.stream.engine import Engine\nEngine.encode = print",
    "setattr(engine, 'encode', print)",
    "import sys\nsys.path.insert(0, 'bench')",
    "from unittest import mock",
    "import unittest.mock",
], ids=["module alias", "module", "class", "setattr", "sys.path", "from unittest import mock", "unittest.mock"])
def test_patches_are_found(source):
    """The check finds each way bench/ used to patch (or could)."""
    assert len(patches(source)) == 1


def test_ordinary_code_is_not_a_patch():
    """Assigning attributes of the script's own objects, or reading captioner's, is not patching."""
    source = "from captioner.stream.engine import Engine\nx = Engine.run\nclass A: pass\na = A()\na.b = 1\n"
    assert patches(source) == []
