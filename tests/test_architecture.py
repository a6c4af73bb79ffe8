"""The package's layers: each module imports only from its own layer or those below it, so the
study depends on the pipeline and never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import sibeatgan_imports

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sibeatgan"
BENCH = "sibeatgan_bench"  # the benchmarks, a package of their own beside the core one

# bottom to top
LAYERS = [
    ("sibeatgan.datasets",),
    ("sibeatgan.config", "sibeatgan.io", "sibeatgan.provenance"),
    ("sibeatgan.models",),
    ("sibeatgan.data",),
    ("sibeatgan.evaluation",),
    ("sibeatgan.training",),
    ("sibeatgan.tracking",),
    ("sibeatgan.pipeline",),
    ("sibeatgan.stages",),
    ("sibeatgan.detection",),
    ("sibeatgan.study",),
    ("sibeatgan.cli", "sibeatgan.__main__"),
]


def layer_of(module: str) -> int:
    if module == "sibeatgan":  # the package itself: its version only
        return 0
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The sibeatgan modules (and names in them) a file imports, anywhere in it."""
    return {n for n in sibeatgan_imports(path) if n.startswith("sibeatgan.")}


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_modules_import_only_downward(path):
    me = module_name(path)
    upward = {m for m in imported(path) if layer_of(m) > layer_of(me)}
    assert not upward, f"{me} (layer {layer_of(me)}) imports from above: {sorted(upward)}"


def test_every_layer_is_used_and_an_upward_import_is_seen(tmp_path):
    assert {layer_of(module_name(p)) for p in MODULES} == set(range(len(LAYERS)))
    bad = tmp_path / "loader.py"  # as if it were sibeatgan.data.loader
    bad.write_text("def f():\n    from sibeatgan import tracking\n")
    assert layer_of("sibeatgan.tracking") > layer_of("sibeatgan.data.loader")
    assert imported(bad) == {"sibeatgan.tracking"}


def imports_bench(path: Path) -> bool:
    """Whether a file imports the benchmark package, anywhere in it."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(n == BENCH or n.startswith(BENCH + ".") for n in names):
            return True
    return False


def test_only_the_command_line_imports_the_benchmarks():
    importers = {module_name(p) for p in MODULES if imports_bench(p)}
    assert importers - {"sibeatgan.cli"} == set(), f"only sibeatgan.cli may import {BENCH}"
    assert "sibeatgan.cli" in importers, "the bench commands' imports are seen"
    bench = sorted((PACKAGE.parent / BENCH).rglob("*.py"))
    assert bench, f"{BENCH} sits beside the core package"
    assert not [p.name for p in bench if "sibeatgan.cli" in imported(p)], "no import cycle"
