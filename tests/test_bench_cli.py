"""prunetax bench / leaderboard end to end: errors, kill-resume, two writers, determinism.

The default run uses prunetax.benchmarks.perf.kill_resume's fake run_cell in subprocesses (the runner's
file handling alone); tests marked slow use the real protocol on tiny lenet5/mnist cells.
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pyarrow.parquet as pq
import pytest

from prunetax.benchmarks.cli import main as cli_main
from prunetax.benchmarks.perf import kill_resume as kr
from prunetax.benchmarks.results import read_scores, read_trajectories

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(argv, fake=True, env=None, timeout=300):
    return subprocess.run(kr.command(argv, fake), env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def nothing_under(path) -> bool:
    return not path.exists() or not any(path.rglob("*"))


@pytest.mark.parametrize("extra, match", [
    (["--networks", "lenetX"], "unknown model 'lenetX'"),
    (["--datasets", "mnistt"], "unknown data set 'mnistt'"),
    (["--metrics", "weight-value-l3-none"], "reduction"),
    (["--threshold", "120"], "threshold 120.0 is out of range"),
    (["--threshold", "0"], "threshold 0.0 is out of range"),
    (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
    (["--backend", "dask"], r"pip install prunetax\[dask\]"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, extra, match):
    if extra[:2] == ["--backend", "dask"]:
        monkeypatch.setitem(sys.modules, "dask.distributed", None)   # as if the extra were not installed
    argv = kr.bench_argv(tmp_path / "res", tmp_path / "cache", seeds=(0,))
    rc = cli_main(argv + extra)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("prunetax bench: error: ")
    assert __import__("re").search(match, err), err
    assert nothing_under(tmp_path / "res") and nothing_under(tmp_path / "cache")


def test_malformed_toml_one_line(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('networks = ["lenet5"]\ndatasets = ["mnist"]\nseeds = [0, 1\n[protocol]\n')
    rc = cli_main(["bench", str(grid), "--results", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"{grid}: malformed TOML at line 3: the array opened here" in err
    grid.write_text('networks = ["lenet5"]\ndatasets = ["mnist"]\nsedes = [0]\n')
    assert cli_main(["bench", str(grid), "--results", str(tmp_path / "res")]) == 2
    assert "unknown key 'sedes'; did you mean 'seeds'? valid keys are networks, datasets, seeds, metrics" in \
        capsys.readouterr().err
    assert nothing_under(tmp_path / "res")


ROLLED_CHILD = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from prunetax.benchmarks.models import register_model

    @register_model(name="rolled_test")
    def rolled_test(in_channels=3, num_classes=10, input_size=32):
        class Rolled(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.c2 = nn.Conv2d(in_channels, 4, 3), nn.Conv2d(4, 4, 3)
                self.fc = nn.Linear(4 * (input_size - 4) ** 2, num_classes)
            def forward(self, x):
                return self.fc(self.c2(torch.roll(self.c1(x), 1, dims=1)).flatten(1))
        return Rolled()

    from prunetax.benchmarks.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_model_the_structure_analysis_rejects(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(ROLLED_CHILD)
    argv = kr.bench_argv(tmp_path / "res", tmp_path / "cache", seeds=(0,))
    argv[argv.index("lenet5")] = "rolled_test"
    p = subprocess.run([sys.executable, str(script), *argv], env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "network 'rolled_test' cannot be pruned" in p.stderr and "roll" in p.stderr
    assert nothing_under(tmp_path / "res") and nothing_under(tmp_path / "cache")


def test_bench_then_leaderboard_formats(tmp_path, capsys):
    res = tmp_path / "res"
    p = run_cli(kr.bench_argv(res, tmp_path / "cache", seeds=(0, 1, 2))[:-2] + ["--top", "2"],
                env={"PRUNETAX_FAKE_SLEEP": "0"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("bench: 3 cells run, 0 skipped (3 cells x 3 metrics)") and str(res) in lines[0]
    rows = [line for line in lines if line[:1].isdigit()]  # the table's rows start with their rank
    assert len(rows) == 2 and "(top 2 of 3 metrics shown)" in lines  # and bench says it cut the list
    # the leaderboard, by hand from the fake's written formula
    scores = read_scores(res).to_pylist()
    assert len(scores) == 9
    rates = {}
    for r in scores:
        expected = __import__("hashlib").sha256(f"{r['cell_id']}/{r['metric_id']}".encode()).digest()[0] / 2.55
        assert r["conv_weights_removed_pct"] == pytest.approx(expected)
        rates.setdefault(r["metric_id"], []).append(expected)
    import numpy as np
    best = max(rates, key=lambda m: np.mean(rates[m]))
    assert cli_main(["leaderboard", str(res), "--format", "csv"]) == 0
    out = capsys.readouterr()
    got = list(csv.DictReader(io.StringIO(out.out)))
    assert [g["metric_id"] for g in got][0] == best and len(got) == 3
    for g in got:
        assert float(g["mean"]) == pytest.approx(np.mean(rates[g["metric_id"]]))
        assert float(g["pm2sigma"]) == pytest.approx(2 * np.std(rates[g["metric_id"]], ddof=1))
    assert "leaderboard: 3 rows in 1 groups" in out.err
    assert cli_main(["leaderboard", str(res), "--format", "markdown", "--top", "1"]) == 0
    md = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert md[0].startswith("| rank | rank 95 % | metric_id") and len(md) == 3 and best in md[2]
    assert cli_main(["leaderboard", str(res), "--format", "parquet", "--out", str(tmp_path / "lb.parquet")]) == 0
    assert pq.read_table(tmp_path / "lb.parquet").num_rows == 3
    assert cli_main(["leaderboard", str(res), "--format", "html", "--out", str(tmp_path / "lb.html")]) == 0
    assert (tmp_path / "lb.html").read_text().count("<tr>") == 4
    assert cli_main(["leaderboard", str(tmp_path / "missing")]) == 2
    assert cli_main(["leaderboard", str(res), "--format", "parquet"]) == 2
    # pandas reads the same files
    df = pd.read_parquet(res / "scores")
    assert len(df) == 9 and df.groupby("metric_id")["conv_weights_removed_pct"].mean()[best] == \
        pytest.approx(np.mean(rates[best]))
    # resume: everything skipped
    p = run_cli(kr.bench_argv(res, tmp_path / "cache", seeds=(0, 1, 2)), env={"PRUNETAX_FAKE_SLEEP": "0"})
    assert p.stdout.startswith("bench: 0 cells run, 3 skipped")


def test_kill_resume_fake_runner(tmp_path):
    report = kr.kill_resume(tmp_path, kills=2, fake=True, seed=1, seeds=(0, 1, 2))
    assert report["kills"] == 2 and report["equal"] and report["duplicates"] == 0
    assert report["rows"] == 3 * 3


def test_two_processes_on_one_results_root(tmp_path):
    res = tmp_path / "res"
    argv = kr.bench_argv(res, tmp_path / "cache", seeds=(0, 1, 2, 3, 4))
    env = {**ENV, "PRUNETAX_FAKE_SLEEP": "0.3"}
    procs = [subprocess.Popen(kr.command(argv, True), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ran = [int(o[0].split(" cells run")[0].split()[-1]) for o in outs]
    assert sum(ran) == 5  # each cell computed once (tests/test_grid_cluster.py), none lost
    scores = read_scores(res).to_pylist()
    keys = [(r["cell_id"], r["metric_id"]) for r in scores]
    assert len(keys) == len(set(keys)) == 5 * 3
    assert read_trajectories(res).num_rows == 5 * 3 * 10
    files = [p for p in res.rglob("*") if p.is_file()]
    assert len(files) == 10 and not any(p.name.startswith(".") for p in files)
    for f in files:
        pq.read_table(f)  # every file whole


@pytest.mark.slow
def test_kill_resume_real_cells(tmp_path):
    report = kr.kill_resume(tmp_path, kills=5, fake=False, seed=0, seeds=(0, 1, 2))
    assert report["kills"] == 5 and report["equal"] and report["duplicates"] == 0


@pytest.mark.slow
def test_same_config_same_files_on_cpu(tmp_path):
    """Two runs of one real cell (shared baseline cache): identical apart from wall time and device."""
    cache = tmp_path / "cache"
    for name in ("a", "b"):
        p = run_cli(kr.bench_argv(tmp_path / name, cache, seeds=(0,)), fake=False, timeout=1200)
        assert p.returncode == 0, p.stderr
    drop = ["wall_seconds", "device", "torch_version", "prunetax_version"]
    a, b = (read_scores(tmp_path / n).drop_columns(drop).sort_by([("metric_id", "ascending")]) for n in "ab")
    assert a.num_rows == 3 and a.equals(b)
    ta, tb = (read_trajectories(tmp_path / n).sort_by([("metric_id", "ascending"), ("step", "ascending")])
              for n in "ab")
    assert ta.num_rows > 0 and ta.equals(tb)
    assert {r["metric_id"] for r in a.to_pylist()} == set(kr.METRICS.split(","))


NAME_CHECK_CHILD = textwrap.dedent("""
    import sys
    from prunetax.benchmarks.cli import main
    rc = main(sys.argv[1:])
    print("torch imported" if "torch" in sys.modules else "torch not imported")
    sys.exit(rc)
""")


@pytest.mark.parametrize("extra, match", [
    (["--networks", "nosuch"], "unknown model 'nosuch'; choose one of "),
    (["--networks", "lenet6"], "unknown model 'lenet6'; did you mean lenet5"),
    (["--datasets", "nosuch"], "unknown data set 'nosuch'; choose one of mnist, fashion-mnist, cifar10, cifar100"),
])
def test_unknown_names_are_answered_without_torch(tmp_path, extra, match):
    """An unknown model or data set name: one line, exit 2, and torch never imported (so the
    answer takes well under a second; the names live apart from the modules that build them)."""
    argv = kr.bench_argv(tmp_path / "res", tmp_path / "cache", seeds=(0,))
    flag = argv.index(extra[0])
    argv[flag + 1] = extra[1]
    p = subprocess.run([sys.executable, "-c", NAME_CHECK_CHILD, *argv], env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and match in p.stderr, p.stderr
    assert p.stdout.strip() == "torch not imported"
    assert nothing_under(tmp_path / "res") and nothing_under(tmp_path / "cache")
