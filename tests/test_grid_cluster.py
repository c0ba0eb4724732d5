"""A grid at cluster scale, what this CPU machine can check: each cell run once (a lock beside its
state file), and the GPUs a cell task asks ray and dask for."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest

from prunetax.benchmarks import protocol
from prunetax.benchmarks.grid import GridOptions, grid_cells, run_grid, state_path
from prunetax.benchmarks.perf import kill_resume as kr
from prunetax.benchmarks.results import cell_done

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BASE = {"networks": ["lenet5"], "datasets": ["mnist"], "seeds": [0, 1, 2], "metrics": ["random"],
        "protocol": {"test_images": 100}}


def lock_path(results, cell):
    return state_path(results, cell).with_suffix(".lock")


# ------------------------------------------------------------------ each cell runs once

def test_a_cell_locked_by_another_process_is_skipped_and_said_so(tmp_path, monkeypatch, capsys):
    """Cell 1's lock is held (as a running ``prunetax bench`` holds it): the grid runs cells 0 and
    2, leaves cell 1 alone with one line naming who holds it, and counts it apart."""
    calls = []
    monkeypatch.setattr(protocol, "run_cell", lambda cell, env, options=None: calls.append(cell.id)
                        or kr.fake_run_cell(cell, env, options))
    monkeypatch.setenv("PRUNETAX_FAKE_SLEEP", "0")
    cells = grid_cells(BASE)
    res = tmp_path / "r"
    lock = lock_path(res, cells[1])
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("otherhost 4242\n")
        held.flush()
        s = run_grid(cells, res, options=GridOptions(progress=False))
        assert calls == [cells[0].id, cells[2].id]
        assert sorted(s.ran) == sorted(calls) and s.skipped == [] and s.elsewhere == [cells[1].id]
        assert not cell_done(res, cells[1]) and lock.exists()          # the holder's lock is left alone
        err = capsys.readouterr().err
        assert f"cell {cells[1].id} is running elsewhere (otherhost 4242): skipped" in err
    # the holder gone (the kernel drops its lock when it dies), a rerun computes the cell
    s = run_grid(cells, res, options=GridOptions(progress=False))
    assert s.ran == [cells[1].id] and s.skipped == [cells[0].id, cells[2].id] and s.elsewhere == []
    assert not any((res / "state").iterdir())                          # no lock or state file left


def test_a_cell_finished_meanwhile_is_skipped_as_done(tmp_path, monkeypatch):
    """A cell pending when the grid started but written by another process before its turn (its
    lock free again): not run again, counted as skipped."""
    monkeypatch.setenv("PRUNETAX_FAKE_SLEEP", "0")
    monkeypatch.setattr(protocol, "run_cell", kr.fake_run_cell)
    cells = grid_cells(BASE)
    from prunetax.benchmarks.results import write_cell_result

    def runner(cell, env, options=None):        # cell 0 writes cell 2 too, as another process would
        if cell.seed == 0:
            write_cell_result(tmp_path / "r", kr.fake_run_cell(cells[2]))
        return kr.fake_run_cell(cell, env, options)
    s = run_grid(cells, tmp_path / "r", options=GridOptions(progress=False, runner=runner))
    assert s.ran == [cells[0].id, cells[1].id] and s.skipped == [cells[2].id] and s.elsewhere == []


def _ran(stdout: str) -> int:
    return int(stdout.split(" cells run")[0].split()[-1])


def test_two_bench_processes_run_each_cell_once(tmp_path):
    """Two ``prunetax bench`` processes started together on one results folder, a 3-cell grid:
    between them they report 3 cells run, and the results equal a single run's."""
    argv = kr.bench_argv(tmp_path / "two", tmp_path / "cache", seeds=(0, 1, 2))
    env = {**ENV, "PRUNETAX_FAKE_SLEEP": "1.5"}
    procs = [subprocess.Popen(kr.command(argv, True), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(_ran(out) for out, _ in outs) == 3, outs
    single = tmp_path / "one"
    p = subprocess.run(kr.command(kr.bench_argv(single, tmp_path / "cache", seeds=(0, 1, 2)), True),
                       env={**ENV, "PRUNETAX_FAKE_SLEEP": "0"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and _ran(p.stdout) == 3, p.stderr
    assert kr.scores_rows(tmp_path / "two") == kr.scores_rows(single)
    assert kr.trajectory_rows(tmp_path / "two") == kr.trajectory_rows(single)
    assert not any((tmp_path / "two" / "state").iterdir())


# ------------------------------------------------------------------ GPUs asked for

@pytest.mark.parametrize("device, gpus_per_cell, cluster_gpus, want", [
    ("cpu", 1.0, 4.0, 0.0),        # a CPU grid asks for no GPU, even on GPU nodes
    ("cuda", 1.0, 4.0, 1.0),
    ("cuda", 0.25, 1.0, 0.25),     # four cells share a GPU
    ("cuda", 2.0, 8.0, 2.0),
    ("auto", 1.0, 2.0, 1.0),       # auto: cuda where the cluster has GPUs...
    ("auto", 1.0, 0.0, 0.0),       # ...else cpu
])
def test_ray_tasks_ask_for_gpus_when_the_grid_runs_on_cuda(device, gpus_per_cell, cluster_gpus, want):
    from prunetax.benchmarks.grid.backends import ray_task_options

    assert ray_task_options(device, gpus_per_cell, cluster_gpus) == {"num_cpus": 1, "num_gpus": want,
                                                                     "max_retries": 3}


def test_a_cuda_grid_on_a_ray_cluster_without_gpus_is_one_line():
    from prunetax.benchmarks.grid.backends import ray_task_options
    from prunetax.taxonomy.errors import PrunetaxError

    with pytest.raises(PrunetaxError, match=r"device cuda: each cell asks ray for 1 GPU, the ray cluster has 0; "
                                            r"start its GPU nodes with ray start --num-gpus=N or give --device cpu"):
        ray_task_options("cuda", 1.0, 0.0)


@pytest.mark.parametrize("device, declared, want", [
    ("cuda", [{"GPU": 1.0}, {}], {"GPU": 0.5}),     # workers that declare GPUs: the cells go to them
    ("auto", [{"GPU": 2.0}], {"GPU": 0.5}),
    ("cuda", [{}, {}], None),                         # none declares: each worker uses the GPUs it sees
    ("cpu", [{"GPU": 1.0}], None),
    ("auto", [{}], None),
])
def test_dask_cells_ask_for_the_gpu_resource_workers_declare(device, declared, want):
    from prunetax.benchmarks.grid.backends import dask_task_resources

    assert dask_task_resources(device, 0.5, declared) == want


@pytest.mark.parametrize("value, ok", [(1.0, True), (0.5, True), (2.0, True), (0.0, False), (-1.0, False),
                                       (1.5, False), (float("nan"), False)])
def test_gpus_per_cell_values(value, ok):
    from prunetax.taxonomy.errors import PrunetaxError

    if ok:
        assert GridOptions(gpus_per_cell=value).gpus_per_cell == value
    else:
        with pytest.raises(PrunetaxError, match=r"gpus_per_cell .*: must be a fraction in \(0, 1\] or a whole "
                                                r"number of GPUs"):
            GridOptions(gpus_per_cell=value)


@pytest.mark.parametrize("extra, match", [
    (["--gpus-per-cell", "1.5"], "--gpus-per-cell 1.5: must be a fraction in (0, 1] or a whole number of GPUs"),
    (["--backend", "ray", "--device", "cuda:1"], "--device cuda:1 with --backend ray: ray gives each cell its "
                                                 "own GPUs, which it sees from cuda:0; give --device cuda"),
])
def test_bad_gpu_flags_are_one_line_before_any_work(tmp_path, extra, match):
    argv = kr.bench_argv(tmp_path / "res", tmp_path / "cache", seeds=(0,))
    argv[argv.index("--device"):argv.index("--device") + 2] = []
    p = subprocess.run([sys.executable, "-m", "prunetax", *argv, *extra], env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and match in p.stderr, p.stderr
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_a_ray_cell_task_sees_the_gpu_ray_gave_it():
    """A local ray with one (pretended) GPU: a cell task of a cuda grid gets it in its
    CUDA_VISIBLE_DEVICES (ray sets it for the GPUs a task asked for); a cpu grid's does not."""
    import ray

    from prunetax.benchmarks.grid.backends import open_backend

    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level="ERROR")
    try:
        seen = {}
        for device in ("cuda", "auto", "cpu"):
            with open_backend("ray", 1, None, device=device, gpus_per_cell=1.0) as submit:
                seen[device] = list(submit(["CUDA_VISIBLE_DEVICES"], os.getenv, "unset"))
    finally:
        ray.shutdown()
    assert seen["cuda"] == seen["auto"] == ["0"] and seen["cpu"] != ["0"], seen


def test_dask_cells_of_a_cuda_grid_go_to_the_workers_that_declare_gpus():
    """Two dask workers, one declaring a GPU resource: every cell of a cuda grid runs on it."""
    from dask.distributed import Nanny, Scheduler, SpecCluster

    from prunetax.benchmarks.grid.backends import open_backend

    def worker(name, resources):
        return {"cls": Nanny, "options": {"nthreads": 1, "resources": resources, "env": {"PRUNETAX_TEST_WORKER": name},
                                          "host": "127.0.0.1"}}
    with SpecCluster(workers={"gpu": worker("gpu", {"GPU": 1}), "cpu": worker("cpu", {})},
                     scheduler={"cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}},
                     asynchronous=False) as cluster:
        cluster.scale(2)
        from dask.distributed import Client
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=60)
        with open_backend("dask", 1, cluster.scheduler_address, device="cuda", gpus_per_cell=1.0) as submit:
            where = list(submit(["PRUNETAX_TEST_WORKER"] * 4, os.getenv, "unset"))
    assert where == ["gpu"] * 4
