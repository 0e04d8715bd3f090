"""The layers hold: every module is on docs/architecture.md's map, and vaelab's import graph has no cycle."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import grimp

import vaelab

ROOT = Path(__file__).parent.parent


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(vaelab.__path__, "vaelab."))


def test_every_module_is_on_the_architecture_page():
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [m for m in _modules() if f"`{m.removeprefix('vaelab.')}`" not in page]
    assert not missing, f"modules not in docs/architecture.md: {missing}"


def find_cycle(package: str) -> list[str] | None:
    """A chain of modules of `package` that imports itself (depth-first search), or None. The package's own
    __init__ is left out: every module imports it implicitly."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=True, cache_dir=None)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph.find_modules_directly_imported_by(m)):
            if n == package or not n.startswith(package + "."):
                continue
            if state.get(n) == 1:
                return path + [m, n]
            if n not in state and (found := visit(n, path + [m])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph.modules - {package}):
        if m not in state and (found := visit(m, [])):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    assert find_cycle("vaelab") is None


def test_a_cycle_is_found_when_there_is_one(tmp_path, monkeypatch):
    """The check can fail: a package whose modules import each other through a third is reported."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_cycle("cyc") == ["cyc.a", "cyc.b", "cyc.c", "cyc.a"]
    (pkg / "c.py").write_text("")
    assert find_cycle("cyc") is None


def _long_functions(root: Path, most: int = 60) -> list[str]:
    import ast

    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= most:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    return out


def test_no_function_is_longer_than_60_lines(tmp_path):
    assert _long_functions(ROOT / "src" / "vaelab") == []
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * 60)  # 61 lines: found
    assert _long_functions(tmp_path) == ["m.py:1 f (61)"]


def test_modules_read_in_one_sitting_and_say_what_they_hold():
    """Every module ≤ 500 lines with a docstring; the top of the package holds at most six modules (the rest are
    the layer packages)."""
    src = ROOT / "src" / "vaelab"
    long = [f"{p.relative_to(src)} ({n})" for p in src.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500]
    assert long == []
    import ast

    silent = [str(p.relative_to(src)) for p in src.rglob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))]
    assert silent == []
    top = sorted(p.name for p in src.glob("*.py"))
    assert len(top) <= 6, top
