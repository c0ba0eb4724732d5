"""docs/architecture.md's concept map points at code that exists, and the docs stand alone.

Every `` `path/to/file.py:Name` `` or `` `path/to/file.py:Class.method` `` on the page must name a
file of the repository that defines ``Name`` at the top level (a function, a class, or an
assigned constant) and, for ``Class.method``, a method (or property) of that class. Read with
``ast``: nothing is imported. Rows marked ``<!-- TODO-lead -->`` are checked like the others.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# `path.py:Name` or `path.py:Class.method` inside backticks
REF = re.compile(r"`([A-Za-z0-9_./-]+\.py):([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)`")
# any backticked token that looks like a repository .py path, with or without a name after it
PATH = re.compile(r"`([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*\.py)(?::[^`]*)?`")
# design notes that live outside the repository
OUTSIDE = re.compile(r"(PROTOCOL|ARCHITECTURE|STYLE)\.md|shared[/ ]design")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def references(text: str) -> list[tuple[str, str]]:
    return REF.findall(text)


@lru_cache(maxsize=None)
def definitions(file: Path) -> dict[str, set[str] | None]:
    """Top-level names of a file: class -> its method names; function or constant -> None."""
    tree = ast.parse(file.read_text(), filename=str(file))
    out: dict[str, set[str] | None] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = None
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out.setdefault(target.id, None)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.setdefault(node.target.id, None)
    return out


def problem(path: str, name: str, root: Path = ROOT) -> str | None:
    """Why `path:name` is wrong, or None when the code defines it."""
    file = root / path
    if not file.is_file():
        return f"{path} does not exist"
    defs = definitions(file)
    top, _, member = name.partition(".")
    if top not in defs:
        return f"{path} defines no top-level {top!r}"
    if member:
        methods = defs[top]
        if methods is None:
            return f"{path}:{top} is not a class, so it has no method {member!r}"
        if member not in methods:
            return f"class {top} in {path} has no method {member!r}"
    return None


def test_architecture_references_exist():
    text = ARCHITECTURE.read_text()
    refs = references(text)
    assert len(refs) > 100, "the concept map lost its references (or the pattern no longer matches them)"
    bad = list(dict.fromkeys(f"`{p}:{n}`: {why}" for p, n in refs if (why := problem(p, n))))
    assert not bad, "docs/architecture.md points at code that is not there:\n" + "\n".join(bad)


def test_architecture_paths_exist():
    text = ARCHITECTURE.read_text()
    missing = sorted({p for p in PATH.findall(text) if "/" in p and not (ROOT / p).is_file()})
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_checker_catches_wrong_references(tmp_path):
    # the checker itself, on a file of its own: a wrong file, name or method is reported
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        "LIMIT = 3\nTABLE: dict = {}\n\ndef f():\n    def inner():\n        pass\n\n"
        "class C:\n    def m(self):\n        pass\n\n    @property\n    def p(self):\n        return 1\n")
    for good in ("f", "C", "C.m", "C.p", "LIMIT", "TABLE"):
        assert problem("pkg/mod.py", good, tmp_path) is None, good
    for bad in ("g", "inner", "C.q", "f.m", "LIMIT.x", "m"):
        assert problem("pkg/mod.py", bad, tmp_path), bad
    assert problem("pkg/other.py", "f", tmp_path)
    assert references("see `metrics/kernels.py:_taylor`, `a/b.py:C.m` and `a/b.py`") == [
        ("metrics/kernels.py", "_taylor"), ("a/b.py", "C.m")]


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_stand_alone(doc: Path):
    hits = [f"{doc.name}:{i}: {line.strip()}" for i, line in enumerate(doc.read_text().splitlines(), 1)
            if OUTSIDE.search(line)]
    assert not hits, "docs must not refer to design notes outside the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto: ...
            continue
        if not (doc.parent / target).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files: {broken}"
