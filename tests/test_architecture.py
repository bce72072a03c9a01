"""The architecture as the README draws it: which package may import which, and functions a screen long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
MAX_FUNCTION_LINES = 60

# package -> app packages it must never import (at module level or inside functions)
FORBIDDEN = {
    "app.core": ("app.api", "app.web", "app.http", "app.service", "app.store", "app.hub", "app.calibration"),
    "app.exports": ("app.api", "app.web", "app.http", "app.service", "app.store"),
    "app.http": ("app.api", "app.web"),
    "app.api": ("app.web",),
    "app.web": ("app.api",),
    "app.service": ("app.api", "app.web", "app.http"),
    "app.compare": ("app.api", "app.web", "app.http", "app.store"),
    "app.store": ("app.api", "app.web", "app.http", "app.service"),
}


def _module(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _sources() -> list[tuple[str, ast.AST, Path]]:
    return [(_module(p), ast.parse(p.read_text()), p) for p in sorted(APP.rglob("*.py"))]


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_every_package_imports_only_what_sits_below_it() -> None:
    broken = []
    for module, tree, _ in _sources():
        for package, banned in FORBIDDEN.items():
            if _inside(module, package):
                broken += [
                    f"{module} imports {name}" for name in _imports(tree) if any(_inside(name, b) for b in banned)
                ]
    assert broken == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_exists(package: str) -> None:
    assert any(_inside(module, package) for module, _, _ in _sources()), f"{package} has no module"


def test_every_function_in_app_fits_a_screen() -> None:
    long = [
        f"{path.relative_to(APP.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for _, tree, path in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
