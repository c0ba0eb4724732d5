"""The project's import graph, read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` counts, at module top or inside a function, and so does
a lazy ``importlib.import_module`` table (a string constant naming a project module in a module
that calls ``importlib.import_module``). The rules:

(a) no import cycle among the project's modules (a package's ``__init__`` counts as a module;
    importing ``prunetax.x.y`` is an edge to ``prunetax.x.y`` only, not to its parent packages);
(b) ``taxonomy`` imports nothing of the project outside ``taxonomy``;
(c) ``enumerate`` imports only ``taxonomy`` (and itself);
(d) ``metrics`` imports only ``taxonomy`` and ``metrics``;
(e) nothing imports the bare names ``taxonomy``, ``metrics``, ``enumerate``, ``benchmarks``: the
    folders install and import only as ``prunetax.<part>``;
(f) inside ``metrics``, a module imports only the modules below it (``METRICS_ORDER``): the
    component kernels never import the engine.

One kind of edge is left out of the graph: a deprecation shim's import of a name's new home
(``DEPRECATION_SHIMS``), made inside a module ``__getattr__`` only when the old name is asked for
(``BaselineError`` moved from taxonomy to the harness). ``test_shims_are_lazy`` checks that it
stays inside a function.

A failure lists every violation, one per line, with the file and line of the import.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("taxonomy", "enumerate", "metrics", "benchmarks")
ALLOWED = {                     # part -> the parts it may import
    "taxonomy": {"taxonomy"},
    "enumerate": {"taxonomy", "enumerate"},
    "metrics": {"taxonomy", "metrics"},
    "benchmarks": {"taxonomy", "enumerate", "metrics", "benchmarks"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["prunetax", *parts] if parts[0] in PARTS else parts)


def _project_files() -> dict[str, Path]:
    files = {}
    for folder in (*PARTS, "prunetax"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            files[_module_name(path)] = path
    return files


FILES = _project_files()
MODULES = set(FILES)


def _part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 and bits[0] == "prunetax" and bits[1] in PARTS else None


def _imports(module: str, path: Path):
    """(imported name, line, how) for every import in ``path``; names are absolute module paths,
    a ``from X import y`` gives ``X.y`` when that is a module of the project, else ``X``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    lazy = any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, "import"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module
            for alias in node.names:
                full = f"{src}.{alias.name}"
                yield (full if full in MODULES else src), node.lineno, "from"
        elif (lazy and isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith("prunetax.") and node.value in MODULES):
            yield node.value, node.lineno, "lazy"


# module -> the modules its deprecation shims import on demand (a moved name's new home)
DEPRECATION_SHIMS = {"prunetax.taxonomy.errors": {"prunetax.benchmarks.errors"}}


def _graph():
    edges: dict[str, dict[str, tuple[int, str]]] = defaultdict(dict)
    raw = []
    for module, path in FILES.items():
        for name, line, how in _imports(module, path):
            if name in DEPRECATION_SHIMS.get(module, ()):
                continue
            raw.append((module, name, line, how))
            if name in MODULES and name != module:
                edges[module].setdefault(name, (line, how))
    return edges, raw


EDGES, RAW = _graph()


def _where(module: str, line: int) -> str:
    return f"{FILES[module].relative_to(ROOT)}:{line}"


def _cycles(edges) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return out


def _one_cycle(comp: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    members, start = set(comp), comp[0]
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(EDGES.get(v, ())):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def _report(title: str, lines: list[str]) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines)


def test_the_graph_sees_the_project():
    # guards the test itself: the parser finds the modules and the imports it should
    assert {"prunetax.metrics.structure", "prunetax.taxonomy.spec", "prunetax.enumerate.space",
            "prunetax.benchmarks.cli", "prunetax.metrics"} <= MODULES
    assert "prunetax.metrics._trace" in EDGES["prunetax.metrics.structure"]
    assert "prunetax.taxonomy.vocab" in EDGES["prunetax.taxonomy.spec"]
    assert "prunetax.metrics.structure" in EDGES["prunetax.metrics"]  # the lazy table counts


def test_no_import_cycles():
    found = []
    for comp in _cycles(EDGES):
        cyc = _one_cycle(comp)
        members = set(comp)
        inner = [f"      {a} -> {b}  ({_where(a, line)}, {how})" for a in comp
                 for b, (line, how) in sorted(EDGES[a].items()) if b in members]
        found.append(f"{len(comp)} modules in a circle, e.g. {' -> '.join(cyc)}; their imports of each other:\n"
                     + "\n".join(inner))
    assert not found, _report("import cycles among the project's modules", found)


@pytest.mark.parametrize("part", ["taxonomy", "enumerate", "metrics"])
def test_parts_import_only_the_parts_below_them(part):
    bad = []
    for module, name, line, how in RAW:
        if _part(module) != part:
            continue
        target = _part(name) if name.startswith("prunetax.") else None
        if name == "prunetax" or (name.startswith("prunetax.") and target is None):
            bad.append(f"{_where(module, line)}: {module} imports {name} (the top-level package)")
        elif target is not None and target not in ALLOWED[part]:
            bad.append(f"{_where(module, line)}: {module} imports {name} ({how}); "
                       f"{part} may import only {', '.join(sorted(ALLOWED[part]))}")
    assert not bad, _report(f"imports out of {part}/", bad)


def test_no_bare_part_names():
    bad = [f"{_where(module, line)}: {module} imports {name} ({how}); write prunetax.{name}"
           for module, name, line, how in RAW if name.split(".")[0] in PARTS]
    assert not bad, _report("imports of a bare part name", bad)


# metrics/ from the bottom up: a module imports only metrics modules earlier in this list (its own
# package's ``__init__`` aside). ``kernels`` (the component registries, base inputs included)
# imports nothing of metrics, so registering or running a kernel never pulls the engine in.
METRICS_ORDER = ("_types", "_fx_rules", "_trace", "structure", "masking", "curvature", "signals", "kernels",
                 "engine.plan", "engine.sites", "engine.stream", "engine.finalize", "engine", "saliency")


def test_metrics_modules_import_from_below():
    rank = {f"prunetax.metrics.{m}": i for i, m in enumerate(METRICS_ORDER)}
    assert {m for m in MODULES if _part(m) == "metrics"} - set(rank) == {"prunetax.metrics"}
    bad = [f"{_where(module, line)}: {module} imports {name}"
           for module, name, line, how in RAW if module in rank and name in rank and rank[name] >= rank[module]]
    assert EDGES["prunetax.metrics.kernels"].keys().isdisjoint(rank)
    assert not bad, _report("metrics imports against the order _types -> ... -> saliency", bad)


def test_shims_are_lazy():
    """A deprecation shim imports the new home inside a function, never at import time."""
    for module, targets in DEPRECATION_SHIMS.items():
        tree = ast.parse(FILES[module].read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        named = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
        assert not (named & targets), (module, named & targets)
        inside = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert targets <= inside, (module, targets - inside)
