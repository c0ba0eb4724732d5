"""Cells that resume mid-way (run_cell's ``checkpoint``): killed at random moments, stopped by
SIGTERM or SIGINT, or handed a state file that is not theirs, a cell ends with the rows and
trajectories of an uninterrupted run, to the bit (wall time aside)."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from prunetax.benchmarks import checkpoint
from prunetax.benchmarks.cell import Cell, Protocol, RunOptions
from prunetax.benchmarks.protocol import Retraining, run_cell
from prunetax.benchmarks.setup import Env

pytestmark = pytest.mark.usefixtures("one_thread")

# about 45 steps of 50 ms on LeNet-5; random and the oracle draw from the loop's generator
METRICS = ("weight-value-l1-none", "activation-taylor-abs_sum-elements", "random", "oracle")
PROTOCOL = Protocol(test_images=100, schedule="fast", saliency_batches=1, batch_size=16, oracle_candidates=2)
CELL = Cell("lenet5", "mnist", 0, METRICS, PROTOCOL, epochs=1, train_limit=2000)
RESUMING = re.compile(r"resuming (\S+) from step (\d+)(?: of metric (\d+)/(\d+))? \(saved ")

# run_cell in a child process, one intra-op thread as the tests here; with a step given, it
# stops at the start of the step after that one, says "holding" and waits (for a signal)
CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
from prunetax.benchmarks.cell import Cell, Protocol, RunOptions
from prunetax.benchmarks.protocol import Pruning, run_cell
from prunetax.benchmarks.setup import Env
d, cache, state, every, hold = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
cell = Cell(d["network"], d["dataset"], d["seed"], tuple(d["metrics"]), Protocol.from_dict(d["protocol"]),
            d["epochs"], d["train_limit"])
step = Pruning.step
def holding(self):
    if self.step_no == hold:
        print("holding", flush=True)
        time.sleep(120)
    step(self)
Pruning.step = holding
run_cell(cell, Env("cpu", cache), RunOptions(checkpoint=state, checkpoint_every=every))
"""


def child(cache, state, every=0.0, hold=-1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(CELL.to_dict()), str(cache), str(state),
                             str(every), str(hold)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def comparable(result) -> tuple[list[dict], list[dict]]:
    """The rows without wall time, and the trajectories."""
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in result.rows], result.trajectories


def saved_step(path) -> int | None:
    """The step of the state file at ``path`` (None: no file yet)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["step"]
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(cache):
    """CELL run uninterrupted without a state file (its baseline trained here, once)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_cell(CELL, Env("cpu", str(cache)))
    finally:
        torch.set_num_threads(n)


def test_killed_at_random_moments_resumes_to_the_same_rows(reference, cache, tmp_path, capsys):
    rng = random.Random(0)
    state = tmp_path / "state" / "cell.pt"
    kills, expect = 0, None          # expect: the step the next run resumes from
    while kills < 3:
        proc = child(cache, state)
        target = (saved_step(state) or 0) + rng.randint(1, 8)
        while proc.poll() is None and (saved_step(state) or 0) < target:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1][-2000:]   # killed before it completes
        time.sleep(rng.uniform(0, 0.05))   # somewhere in the next step, or in writing it
        proc.kill()
        _, err = proc.communicate()
        resumed = RESUMING.findall(err)
        assert [int(m[1]) for m in resumed] == ([] if expect is None else [expect]), err[-2000:]
        kills, expect = kills + 1, saved_step(state)
        assert expect >= target
    result = run_cell(CELL, Env("cpu", str(cache)), RunOptions(checkpoint=state, checkpoint_every=0))
    lines = RESUMING.findall(capsys.readouterr().err)
    assert [(m[0], int(m[1])) for m in lines] == [(CELL.id, expect)] and expect > 0
    assert comparable(result) == comparable(reference)
    assert state.exists()            # the caller removes it, once the results are written
    checkpoint.remove_state(state)
    checkpoint.remove_state(state)   # already gone: nothing to do
    assert not state.exists()


def test_sigterm_saves_the_last_completed_step_at_once_and_a_rerun_completes(reference, cache, tmp_path, capsys):
    state = tmp_path / "cell.pt"
    proc = child(cache, state, every=1e9, hold=5)    # no periodic write: only SIGTERM writes
    assert proc.stdout.readline() == "holding\n", proc.communicate()[1][-2000:]
    assert not state.exists()
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.perf_counter() - start < 30          # the held step (120 s) was not waited for
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    assert f"SIGTERM: step 5 of {CELL.id} saved to {state}" in err
    umask = os.umask(0)
    os.umask(umask)
    assert saved_step(state) == 5 and state.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["cell.pt"]       # no temporary file left
    result = run_cell(CELL, Env("cpu", str(cache)), RunOptions(checkpoint=state))
    assert [(m[0], int(m[1])) for m in RESUMING.findall(capsys.readouterr().err)] == [(CELL.id, 5)]
    assert comparable(result) == comparable(reference)


def test_a_state_file_of_another_cell_is_ignored_with_one_line(reference, cache, tmp_path, capsys):
    state = tmp_path / "cell.pt"
    other = checkpoint.CellCheckpoint(state, "lenet5_mnist_s1_0123456789ab", "digest", every=0)
    other.step_done({"index": 0, "completed": [], "pruning": None, "retraining": None}, step=3, metric=0,
                    elapsed=1.0)
    result = run_cell(CELL, Env("cpu", str(cache)), RunOptions(checkpoint=state, checkpoint_every=1e9))
    err = capsys.readouterr().err
    assert err.count("ignoring the state file") == 1 and "lenet5_mnist_s1_0123456789ab" in err
    assert not RESUMING.search(err)
    assert comparable(result) == comparable(reference)


def test_a_state_file_that_is_not_the_cells_is_not_loaded(tmp_path, capsys):
    path = tmp_path / "cell.pt"
    mine = checkpoint.CellCheckpoint(path, "cell-a", "digest-a", every=0)
    mine.step_done({"anything": 1}, step=2, metric=0, elapsed=0.5)
    assert mine.load()["run"] == {"anything": 1} and capsys.readouterr().err == ""
    for who, reason in ((("cell-b", "digest-a"), "state of cell cell-a"),
                        (("cell-a", "digest-b"), "another baseline")):
        assert checkpoint.CellCheckpoint(path, *who).load() is None
        assert reason in capsys.readouterr().err
    torch.save({**torch.load(path, weights_only=True), "version": 0}, path)
    assert mine.load() is None and "schema version 0" in capsys.readouterr().err
    path.write_bytes(b"not a state file")
    assert mine.load() is None and "unreadable" in capsys.readouterr().err


def test_retrain_mode_resumes_mid_metric_after_sigint(cache, tmp_path, capsys, monkeypatch):
    """SIGINT in the middle of a step (inside its retraining) saves the step before; the reruns
    resume in the first metric, then in the second, and end as an uninterrupted run."""
    p = Protocol(test_images=100, saliency_batches=1, batch_size=16, threshold=3.0, mode="retrain", retrain_steps=1)
    cell = Cell("lenet5", "mnist", 0, ("weight-value-l1-none", "random"), p, epochs=1, train_limit=2000)
    env = Env("cpu", str(cache))
    ref = run_cell(cell, env)
    first = sum(t["metric_id"] == "weight-value-l1-none" for t in ref.trajectories)   # steps of the first metric
    stops = {first // 2, first + 3}          # Retraining calls (one per step) that get a SIGINT
    calls, retrain = 0, Retraining.__call__

    def interrupted(self, keep_row):
        nonlocal calls
        calls += 1
        if calls in stops:
            os.kill(os.getpid(), signal.SIGINT)
        retrain(self, keep_row)

    monkeypatch.setattr(Retraining, "__call__", interrupted)
    state = tmp_path / "cell.pt"
    for _ in stops:
        with pytest.raises(KeyboardInterrupt):
            run_cell(cell, env, RunOptions(checkpoint=state))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler    # restored
    result = run_cell(cell, env, RunOptions(checkpoint=state))
    lines = [(int(m[1]), m[2], m[3]) for m in RESUMING.findall(capsys.readouterr().err)]
    assert lines == [(first // 2 - 1, "1", "2"), (1, "2", "2")]
    assert comparable(result) == comparable(ref)


def test_progress_lines_for_a_log_file(reference, cache, monkeypatch, capsys):
    """progress="lines" (a grid writing to a file): one plain line per interval, here every step."""
    from prunetax.benchmarks.protocol import progress

    monkeypatch.setattr(progress, "PROGRESS_LINE_EVERY", 0.0)
    result = run_cell(CELL, Env("cpu", str(cache)), RunOptions(progress="lines"))
    assert comparable(result) == comparable(reference)
    lines = capsys.readouterr().err.splitlines()
    pattern = re.compile(rf"{re.escape(CELL.id)}: step (\d+), (\d+)/4 trajectories running, "
                         r"acc (\d+\.\d)-(\d+\.\d) %, (\d+\.\d) min$")
    got = [pattern.match(ln) for ln in lines]
    assert lines and all(got), lines[:3]
    steps = [int(m[1]) for m in got]
    longest = max(r["steps"] for r in result.rows)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= longest
    assert [int(m[2]) for m in got][-1] == 0 and all(float(m[3]) <= float(m[4]) for m in got)
