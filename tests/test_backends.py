"""The grid on real backends: a dask.distributed cluster of 2 worker processes on 127.0.0.1 and a
local ray with 2 CPUs, each against loky on the same small grid of real cells; workers killed
mid-cell; a stopped client's tasks cancelled; the checks that run before any work."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from prunetax.benchmarks.grid import GridOptions, grid_cells, run_grid
from prunetax.benchmarks.perf import kill_resume as kr
from prunetax.benchmarks.results import read_scores, read_trajectories
from prunetax.benchmarks.setup import Env

from dask.distributed import Client, LocalCluster  # the test extra installs dask and ray: no skip

GRID = {"networks": ["lenet5"], "datasets": ["mnist"], "seeds": [0, 1],
        "metrics": ["filter_l1", "activation-taylor-abs_sum-elements", "random"],
        "epochs": 1, "train_limit": 1000, "protocol": {"test_images": 300}}
VOLATILE = ("wall_seconds",)
QUIET = GridOptions(progress=False)


def rows(results) -> list[tuple]:
    t = read_scores(results)
    t = t.drop_columns(list(VOLATILE))
    return sorted(tuple((k, repr(v)) for k, v in r.items()) for r in t.to_pylist())


def traj(results) -> list[tuple]:
    return sorted(tuple((k, repr(v)) for k, v in r.items()) for r in read_trajectories(results).to_pylist())


@pytest.fixture(scope="module")
def loky_reference(tmp_path_factory):
    """The grid on loky (2 processes), with the shared baseline cache its baselines went into."""
    root = tmp_path_factory.mktemp("backends")
    cells = grid_cells(GRID)
    s = run_grid(cells, root / "loky", backend="loky", n_jobs=2, env=Env("cpu", root / "cache"), options=QUIET)
    assert len(s.ran) == 2
    return root, cells


@pytest.mark.parametrize("backend", ["dask", "ray"])
def test_backend_equals_loky(loky_reference, backend):
    root, cells = loky_reference
    out = root / backend
    s = run_grid(cells, out, backend=backend, n_jobs=2, env=Env("cpu", root / "cache"), options=QUIET)
    assert sorted(s.ran) == sorted(c.id for c in cells)
    assert rows(out) == rows(root / "loky") and traj(out) == traj(root / "loky")
    assert read_scores(out).num_rows == 6
    assert not any((out / "state").glob("*.state"))           # states removed once the results are in


@pytest.mark.parametrize("backend", ["dask", "ray"])
def test_killed_worker_grid_completes(tmp_path, backend):
    """Each cell's first attempt kills its worker process (SIGKILL); the backend runs it again."""
    cells = grid_cells({**GRID, "seeds": [0, 1, 2], "metrics": ["random"]}, validate=False)
    s = run_grid(cells, tmp_path / "r", backend=backend, n_jobs=2, env=Env(cache_dir=tmp_path / "cache"),
                 options=GridOptions(progress=False, runner=kr.dying_run_cell, pretrain=False))
    assert sorted(s.ran) == sorted(c.id for c in cells)
    assert len(list((tmp_path / "r" / "state").glob("*.died"))) == 3      # every cell died once
    want = sorted(kr.fake_run_cell(c).rows[0]["conv_weights_removed_pct"] for c in cells)
    assert sorted(read_scores(tmp_path / "r")["conv_weights_removed_pct"].to_pylist()) == want


def test_stopping_the_client_cancels_its_tasks(tmp_path):
    """SIGTERM to a `prunetax bench --backend dask --scheduler ADDRESS` client cancels its tasks on
    the cluster: no cell of the stopped grid runs afterwards."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        argv = kr.bench_argv(tmp_path / "r", tmp_path / "cache", seeds=(0, 1, 2, 3), metrics="random")
        argv += ["--backend", "dask", "--scheduler", cluster.scheduler_address]
        env = {**os.environ, "PRUNETAX_FAKE_SLEEP": "4"}
        # the client trains the 4 tiny baselines first, then submits: wait until a task runs
        proc = subprocess.Popen(kr.command(argv, fake=True), env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and not any(client.processing().values()):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        assert any(client.processing().values()), "no task started"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode != 0
        deadline = time.time() + 20
        while time.time() < deadline and (any(client.processing().values()) or client.run_on_scheduler(
                lambda dask_scheduler: len(dask_scheduler.tasks))):
            time.sleep(0.2)
        assert not any(client.processing().values())
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0
    done = len(list((tmp_path / "r" / "scores").rglob("*.parquet"))) if (tmp_path / "r" / "scores").exists() else 0
    assert done <= 1                                     # the cell running at the stop at most


def run_cli(argv):
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "prunetax", *argv], capture_output=True, text=True, timeout=120)
    return p, time.perf_counter() - start


@pytest.mark.parametrize("extra, match", [
    (["--backend", "dask", "--scheduler", "tcp://127.0.0.1:9"], r"dask scheduler at tcp://127.0.0.1:9 does not answer within 10 s"),
    (["--backend", "ray", "--scheduler", "127.0.0.1:9"], r"ray cluster at 127.0.0.1:9 does not answer within 10 s"),
    (["--jobs", "0"], r"--jobs must be a positive integer or -1"),
    (["--backend", "spark"], r"invalid choice: 'spark'"),
])
def test_bad_backend_input_one_line(tmp_path, extra, match):
    argv = kr.bench_argv(tmp_path / "res", tmp_path / "cache", seeds=(0,)) + extra
    p, _ = run_cli(argv)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert __import__("re").search(match, p.stderr), p.stderr
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_unwritable_or_misplaced_roots_fail_fast(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        ("/proc/prunetax-results", "--results", r"results folder '/proc/prunetax-results' cannot be written"),
        (str(tmp_path / "file" / "res"), "--results", r"lies below the regular file"),
        (str(tmp_path / "file"), "--cache-dir", r"cache folder '.*/file' is a file; give a folder"),
    ]
    for path, flag, match in cases:
        argv = kr.bench_argv(tmp_path / "res", tmp_path / "cache", seeds=(0,))
        argv[argv.index(flag) + 1] = path
        p, seconds = run_cli(argv)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert __import__("re").search(match, p.stderr), p.stderr
        assert seconds < 20, seconds            # no torch on this path (about a second on an idle machine)
        assert "torch" not in p.stderr
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_no_torch_before_the_path_checks(tmp_path):
    """The results-root check runs before torch is imported (what makes it answer in about a second)."""
    code = ("import sys; from prunetax.benchmarks.cli import main; "
            "rc = main(['bench', '--networks', 'lenet5', '--datasets', 'mnist', '--results', '/proc/x']); "
            "print('torch' in sys.modules, rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["False", "2"], p.stdout + p.stderr


def test_metric_the_network_cannot_compute_fails_before_training(tmp_path):
    argv = kr.bench_argv(tmp_path / "res", tmp_path / "cache", seeds=(0,))
    argv[argv.index("--metrics") + 1] = "filter_l1,gfbs"
    p, _ = run_cli(argv)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "network 'lenet5'" in p.stderr and "BatchNorm" in p.stderr and "gfbs" in p.stderr.lower()
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()     # nothing trained


def test_grid_file_without_tomllib(tmp_path):
    """Python 3.10 has no tomllib: the grid file is read with tomli."""
    import tomli  # a dependency on 3.10 and of the test extra: a broken install fails here
    assert tomli.loads("a = [1]") == {"a": [1]}
    grid = tmp_path / "g.toml"
    grid.write_text('networks = ["lenet5"]\ndatasets = ["mnist"]\nseeds = [0, 1]\n[protocol]\nthreshold = 2.0\n')
    code = ("import sys; sys.modules['tomllib'] = None\n"
            "from prunetax.benchmarks.grid import load_grid_file\n"
            f"print(load_grid_file({str(grid)!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "'seeds': [0, 1]" in p.stdout and "'threshold': 2.0" in p.stdout
    p = subprocess.run([sys.executable, "-c", code.replace("= None\n", "= None; sys.modules['tomli'] = None\n")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "needs tomli; pip install tomli" in p.stderr
