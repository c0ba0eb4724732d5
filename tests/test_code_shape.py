"""The code's shape, as docs/architecture.md states it: no harness module over 600 lines, no
function over 80 lines or with more than 8 parameters (perf scripts and tests aside), and no
module importing another module's private name (perf scripts and tests included).

Measured on the source files with ``ast``: a function's lines run from its ``def`` to its last
line (decorators and docstring included); its parameters are every named parameter but ``self``
and ``cls``, with ``*args`` and ``**kwargs`` one each."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("taxonomy", "enumerate", "metrics", "benchmarks", "prunetax")
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 600, 80, 8


def _sources(folders, skip=()) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if not any(s in p.parts for s in skip))


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _parameters(fn) -> int:
    a = fn.args
    named = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
    return len(named) + (a.vararg is not None) + (a.kwarg is not None)


def _name(path: Path, fn) -> str:
    return f"{path.relative_to(ROOT)}:{fn.name} (line {fn.lineno})"


def test_no_harness_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources(["benchmarks"], skip=("perf",))
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_function_is_over_80_lines_or_takes_more_than_8_parameters():
    long, wide = [], []
    for path in _sources(PACKAGES, skip=("perf",)):
        for fn in _functions(path):
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES:
                long.append((_name(path, fn), fn.end_lineno - fn.lineno + 1))
            if _parameters(fn) > MAX_PARAMETERS:
                wide.append((_name(path, fn), _parameters(fn)))
    assert not long, long
    assert not wide, wide


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _private_imports(path: Path) -> list[str]:
    """``from prunetax.x import _y`` and ``m._y`` on a prunetax module ``m`` imported in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    modules: dict[str, str] = {}                     # local name -> the project module it is
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prunetax"):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}")
                elif _is_module(f"{node.module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("prunetax") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and _private(node.attr)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {modules[node.value.id]}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_name():
    found = [hit for path in _sources(PACKAGES + ("tests",)) for hit in _private_imports(path)]
    assert not found, found


def test_the_checks_catch_what_they_check(tmp_path):
    """The measures above, on a file written for them (each check can fail)."""
    src = tmp_path / "sample.py"
    src.write_text("from prunetax.benchmarks import training\nfrom prunetax.taxonomy.spec import _x\n"
                   "def f(a, b, c, d, e, f, g, h, *i, **j):\n" + "    pass\n" * 80 + "y = training._fit\n")
    fn = next(_functions(src))
    assert _parameters(fn) == 10 and fn.end_lineno - fn.lineno + 1 == 81
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert [h.split(": ", 1)[1] for h in _private_imports(src)] == [
            "from prunetax.taxonomy.spec import _x", "prunetax.benchmarks.training._fit"]
    finally:
        ROOT = root
