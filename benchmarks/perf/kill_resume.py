"""Kill-and-resume check of the grid runner: SIGKILL ``prunetax bench`` at random moments, re-run
until done, and compare the results with an uninterrupted run's.

    python -m prunetax.benchmarks.perf.kill_resume [--kills 5] [--fake] [--workdir DIR] [--seed 0]

Default: a real grid of 6 tiny cells (lenet5 on mnist, 2,000 training images, 1 epoch, 500 test
images, 3 metrics, seeds 0-5) with a fresh baseline cache. ``--fake`` swaps run_cell for a fast
deterministic stand-in (1 s per cell) to test the runner's file handling alone. Exit 0 when the
resumed results equal the reference (scores sorted, wall time dropped; no row lost or repeated).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METRICS = "weight-value-l1-none,activation-taylor-abs_sum-elements,random"
VOLATILE = ("wall_seconds",)


def bench_argv(results, cache, seeds=(0, 1, 2, 3), metrics=METRICS) -> list[str]:
    return ["bench", "--networks", "lenet5", "--datasets", "mnist", "--seeds", ",".join(map(str, seeds)),
            "--metrics", metrics, "--test-images", "500", "--schedule", "fast", "--epochs", "1",
            "--train-limit", "2000", "--results", str(results), "--cache-dir", str(cache), "--device", "cpu",
            "--top", "0"]


def command(argv: list[str], fake: bool) -> list[str]:
    if fake:
        return [sys.executable, "-m", "prunetax.benchmarks.perf.kill_resume", "--child-fake", *argv]
    return [sys.executable, "-m", "prunetax", *argv]


# ------------------------------------------------------------------ the fake runner (--fake)
def fake_run_cell(cell, env=None, options=None):
    """Deterministic rows and trajectories from the cell alone, after a short sleep (the signature of
    ``prunetax.benchmarks.protocol.run_cell``, which a grid runs)."""
    from prunetax.benchmarks.cell import CellResult
    from prunetax.benchmarks.results import ROW_COLUMNS

    time.sleep(float(os.environ.get("PRUNETAX_FAKE_SLEEP", "1.0")))
    rows, traj = [], []
    for m in cell.metrics:
        h = hashlib.sha256(f"{cell.id}/{m}".encode()).digest()
        rate = h[0] / 2.55
        r = dict.fromkeys(ROW_COLUMNS)
        r.update(cell_id=cell.id, metric_id=m, kind="reference", network=cell.network, dataset=cell.dataset,
                 seed=cell.seed, threshold=cell.protocol.threshold, threshold_mode="absolute",
                 baseline_accuracy=90.0, conv_weights_removed_pct=rate, steps=h[1], crossed=True,
                 protocol="{}", device="cpu", wall_seconds=time.time())
        rows.append(r)
        traj += [{"cell_id": cell.id, "metric_id": m, "network": cell.network, "dataset": cell.dataset,
                  "seed": cell.seed, "step": s, "unit": h[s % 32], "conv_weights_removed_pct": rate * s / 10,
                  "channels_removed_pct": s, "macs_removed_pct": s, "accuracy": 90.0 - s} for s in range(10)]
    return CellResult(cell, rows, traj, 0.4)


def dying_run_cell(cell, env=None, options=None):
    """``fake_run_cell``, except that the first attempt at each cell kills its own worker process
    (SIGKILL, as a lost node would) after leaving a mark beside the cell's state file
    (``options.checkpoint``): a backend that runs the cell again elsewhere completes the grid."""
    mark = Path(f"{options.checkpoint}.died")
    if not mark.exists():
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return fake_run_cell(cell, env, options)


def _child_fake(argv: list[str]) -> int:
    """``prunetax ARGV`` with ``fake_run_cell`` as ``protocol.run_cell``, what a grid runs by default."""
    from prunetax.benchmarks import protocol
    from prunetax.benchmarks.cli import main

    protocol.run_cell = fake_run_cell
    return main(argv)


# ------------------------------------------------------------------ the check
def scores_rows(results) -> list[tuple]:
    """Scores as sorted tuples without the volatile columns."""
    from prunetax.benchmarks.results import read_scores

    t = read_scores(results)
    t = t.drop_columns([c for c in VOLATILE if c in t.column_names])
    return sorted(tuple((k, repr(v)) for k, v in r.items()) for r in t.to_pylist())


def trajectory_rows(results) -> list[tuple]:
    from prunetax.benchmarks.results import read_trajectories

    return sorted(tuple((k, repr(v)) for k, v in r.items()) for r in read_trajectories(results).to_pylist())


def run_once(cmd, env, kill_after: float | None) -> tuple[int | None, float]:
    """Run ``cmd``; SIGKILL it after ``kill_after`` s. Returns (returncode or None if killed, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None, time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return proc.returncode, time.perf_counter() - start


def kill_resume(workdir, kills: int = 5, fake: bool = False, seed: int = 0, seeds=(0, 1, 2, 3, 4, 5),
                log=print) -> dict:
    """The whole check; returns a report dict (``equal`` True when the resumed results match)."""
    rng = random.Random(seed)
    workdir = Path(workdir)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cache = workdir / "cache"
    ref = workdir / "reference"
    _, ref_seconds = run_once(command(bench_argv(ref, cache, seeds), fake), env, None)  # also trains baselines
    _, startup = run_once(command(bench_argv(ref, cache, seeds), fake), env, None)  # every cell skipped
    log(f"uninterrupted run: {ref_seconds:.1f}s; start-up and validation alone: {startup:.1f}s")
    a, ta = scores_rows(ref), trajectory_rows(ref)
    landed, runs, rounds, partials, equal, dups, scale = 0, 0, 0, [], True, 0, 1.0
    while landed < kills:  # a round: kill at random moments until the grid completes, then compare
        rounds += 1
        resumed = workdir / f"resumed{rounds}"
        while True:
            runs += 1
            left = len(seeds) - len(list((resumed / "scores").rglob("*.parquet")))
            per_cell = max(ref_seconds - startup, 0.5) / len(seeds)
            horizon = startup + min(left, 2) * per_cell
            kill_after = rng.uniform(0.3, 1.0) * horizon * scale if landed < kills else None
            rc, secs = run_once(command(bench_argv(resumed, cache, seeds), fake), env, kill_after)
            done = len(scores_rows(resumed)) if resumed.exists() else 0  # every read must succeed: no partial file is ever visible
            if rc is None:
                landed += 1
                temps = [p for p in resumed.rglob(".*") if p.is_file()]
                partials.append(len(temps))
                log(f"round {rounds} run {runs}: killed after {secs:.1f}s with {done} score rows written, "
                    f"{len(temps)} temp files left")
            else:
                log(f"round {rounds} run {runs}: finished in {secs:.1f}s")
                if kill_after is not None:  # the estimate was too long (a busy or a faster machine)
                    scale = min(scale, 0.9 * secs / horizon)
                break
        b, tb = scores_rows(resumed), trajectory_rows(resumed)
        equal = equal and a == b and ta == tb
        dups += len(b) - len(set(b))
    report = {"kills": landed, "runs": runs, "rounds": rounds, "reference_seconds": ref_seconds, "rows": len(a),
              "equal": equal, "duplicates": dups, "temp_files_left": partials}
    log(f"kill-resume: {landed} kills in {runs} runs ({rounds} rounds); {len(a)} score rows per run; "
        f"{'EQUAL' if equal else 'DIFFERENT'} to the uninterrupted run, {dups} duplicates")
    return report


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child-fake"]:
        return _child_fake(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--fake", action="store_true", help="fast stand-in for run_cell")
    p.add_argument("--workdir", default=None, help="keep the files here (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = p.parse_args(argv)
    if args.workdir:
        report = kill_resume(args.workdir, args.kills, args.fake, args.seed)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = kill_resume(tmp, args.kills, args.fake, args.seed)
    return 0 if report["equal"] and report["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
