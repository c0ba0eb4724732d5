"""The user's own model from the command line: docs/plugins.md's example, run as written, through
``--import`` and through an entry point of a package on the Python path."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from prunetax.benchmarks.plugins import load_plugins, resolve_imports
from prunetax.taxonomy.errors import PrunetaxError

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def doc_example() -> tuple[str, list[list[str]]]:
    """The example module and the `prunetax` commands of docs/plugins.md."""
    text = DOC.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    commands = [shlex.split(line.strip()) for line in text.splitlines() if line.startswith("    prunetax ")]
    return code, commands


def prunetax(argv, cwd, env=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "prunetax", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_doc_example_through_import(tmp_path):
    code, commands = doc_example()
    (tmp_path / "my_nets.py").write_text(code)
    assert [c[:2] for c in commands] == [["prunetax", "structure"], ["prunetax", "bench"], ["prunetax", "leaderboard"]]
    structure, bench, board = commands
    p = prunetax(structure[1:] + ["--format", "json"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "tinyres" in p.stdout or json.loads(p.stdout)
    p = prunetax(bench[1:] + ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--top", "0"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "bench: 2 cells run, 0 skipped (2 cells x 3 metrics)" in p.stdout, p.stdout
    p = prunetax(board[1:] + ["--format", "csv"], tmp_path)
    assert p.returncode == 0, p.stderr
    rows = p.stdout.strip().splitlines()
    assert len(rows) == 4 and all("tinyres" in r for r in rows[1:]), p.stdout     # 3 metrics of tinyres


def test_doc_example_through_an_entry_point(tmp_path):
    """A package whose metadata declares ``[prunetax] my_nets = my_nets``: no flag needed."""
    code, commands = doc_example()
    site = tmp_path / "site"
    (site / "my_nets_pkg-0.1.dist-info").mkdir(parents=True)
    (site / "my_nets.py").write_text(code)
    (site / "my_nets_pkg-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: my-nets-pkg\nVersion: 0.1\n")
    (site / "my_nets_pkg-0.1.dist-info" / "entry_points.txt").write_text("[prunetax]\nmy_nets = my_nets\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    work = tmp_path / "work"
    work.mkdir()
    p = prunetax(["list", "models", "--pattern", "tiny*"], work, env)
    assert p.returncode == 0 and p.stdout.startswith("tinyres"), p.stdout + p.stderr
    bench = [a for a in commands[1][1:] if a not in ("--import", "my_nets")]
    bench[bench.index("--seeds") + 1] = "0"
    p = prunetax(bench + ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--top", "0"], work, env)
    assert p.returncode == 0, p.stderr
    assert "bench: 1 cells run" in p.stdout


def test_bad_imports_are_one_line_errors(tmp_path):
    (tmp_path / "broken.py").write_text("raise ValueError('no such layer')\n")
    with pytest.raises(PrunetaxError, match=r"--import nosuchmodule_xyz: no module named 'nosuchmodule_xyz'"):
        load_plugins(["nosuchmodule_xyz"], tmp_path, entry_points=False)
    with pytest.raises(PrunetaxError, match=r"--import .*broken.py: ValueError: no such layer"):
        load_plugins(["broken.py"], tmp_path, entry_points=False)
    with pytest.raises(PrunetaxError, match=r"no such file"):
        load_plugins(["missing.py"], tmp_path, entry_points=False)
    assert resolve_imports(["a.b", "sub/x.py", ""], tmp_path) == ("a.b", str(tmp_path / "sub" / "x.py"))
    p = prunetax(["list", "models", "--import", "nosuchmodule_xyz"], tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no module named 'nosuchmodule_xyz'" in p.stderr
