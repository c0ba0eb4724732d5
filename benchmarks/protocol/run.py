"""Running one cell: set-up, pruning with its state file, progress, and the result rows.

``run_cell(cell, env, options)`` is the one way to run a cell (a grid's workers run it too):
the cell is prepared (``prunetax.benchmarks.setup.prepare_cell``), its baseline checked, its
pruning (:class:`CellPruning`) resumed from its state file when it holds this cell's state,
stepped to the end with the state saved on the way (``prunetax.benchmarks.checkpoint``), and
scored (:func:`cell_rows`, columns in ``prunetax.benchmarks.results``).
"""
from __future__ import annotations

import contextlib
import sys
import time

from prunetax.benchmarks.cell import Cell, CellResult, RunOptions
from prunetax.benchmarks.protocol.cell_pruning import CellPruning
from prunetax.benchmarks.protocol.network import Network
from prunetax.benchmarks.protocol.progress import ProgressLines, StepBar
from prunetax.benchmarks.protocol.trajectory import crossing
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["run_cell", "cell_rows"]


def run_cell(cell: Cell, env=None, options: RunOptions | None = None) -> CellResult:
    """Train or fetch the cell's baseline, prune it with every metric, score the crossings.

    ``env``: a :class:`prunetax.benchmarks.setup.Env` (None: the defaults). ``options``: a
    :class:`prunetax.benchmarks.cell.RunOptions` (None: no progress, no state file):

    - ``progress``: True: the baseline's training bar, then a bar over the pruning steps
      (trajectories still running, the accuracies of the latest evaluation); ``"lines"``: the same
      facts as one plain line on stderr at most every ``PROGRESS_LINE_EVERY`` seconds.
    - ``checkpoint``: the cell's state file. A state of this cell on this baseline found there is
      resumed (one line on stderr says from which step); the state after the last completed step
      is written every ``checkpoint_every`` seconds (0: after every step) and at once on SIGTERM
      or SIGINT, after which the signal ends the run as it would have. The file stays when the
      cell completes: the caller removes it (``checkpoint.remove_state``) once the results are
      written. The rows equal an uninterrupted run's except ``wall_seconds`` (the runs' time up
      to the saved step plus this run's). See docs/protocol.md, "Resuming a cell".
    - ``allow_weak_baseline``: prune a baseline whose accuracy target is not above chance (by
      default such a cell stops with a one-line ``BaselineError``, ``setup.check_baseline``).
    - ``measurement``: how the passes run (sharing, the test evaluator); the same results.
    """
    from prunetax.benchmarks.setup import Env, check_baseline, prepare_cell

    options = options or RunOptions()
    start = time.perf_counter()
    setup = prepare_cell(cell, Env.of(env), progress=options.progress is True)
    if not options.allow_weak_baseline:   # a target at or below chance: no metric could cross it
        check_baseline(setup)
    network = Network.of(setup)
    run, saver, before = _resumed(cell, setup, network, options)
    show = None
    if options.progress is True:
        show = StepBar(cell, run)
        if saver is not None:
            saver.log = show.write
    elif options.progress == "lines":
        show = ProgressLines(cell, start)
    try:
        with saver.saving_on_signals() if saver is not None else contextlib.nullcontext():
            while run.pending:
                run.step()
                if saver is not None:
                    saver.step_done(run.state_dict(), step=run.pruning.step_no, metric=run.index,
                                    elapsed=before + time.perf_counter() - start)
                if show is not None:
                    show.show(run, before)
    finally:
        if show is not None:
            show.close()
    wall = before + time.perf_counter() - start
    rows, traj_rows = cell_rows(setup, run, wall)
    return CellResult(cell, rows, traj_rows, wall)


def _resumed(cell: Cell, setup, network: Network, options: RunOptions):
    """``(run, saver, before)``: the cell's pruning, resumed from ``options.checkpoint`` when it
    holds a state of this cell on this baseline; the state file's keeper (None without one); the
    earlier runs' seconds up to the saved state."""
    run = CellPruning(network, cell.metrics, cell.protocol, options.measurement)
    if options.checkpoint is None:
        return run, None, 0.0
    from prunetax.benchmarks.checkpoint import CellCheckpoint, baseline_digest

    saver = CellCheckpoint(options.checkpoint, cell.id, baseline_digest(setup), options.checkpoint_every)
    state = saver.load()
    if state is None:
        return run, saver, 0.0
    try:
        run.load_state_dict(state["run"])
        before, saved = float(state["elapsed"]), time.localtime(state["saved_at"])
    except (PrunetaxError, LookupError, TypeError, ValueError, RuntimeError) as exc:
        saver.ignore(f"it does not fit this run: {exc}")
        return CellPruning(network, cell.metrics, cell.protocol, options.measurement), saver, 0.0
    of = f" of metric {run.index + 1}/{len(run.groups)}" if run.retraining else ""
    print(f"resuming {cell.id} from step {run.pruning.step_no}{of} "
          f"(saved {time.strftime('%Y-%m-%d %H:%M:%S', saved)})", file=sys.stderr, flush=True)
    return run, saver, before


def cell_rows(setup, run: CellPruning, wall: float) -> tuple[list[dict], list[dict]]:
    """The scores rows (one per metric) and trajectories rows of a finished ``run`` of the
    prepared cell ``setup`` (``prunetax.benchmarks.results``), ``wall`` seconds long."""
    from prunetax.benchmarks.results import RowFacts, score_row, trajectory_rows

    cell, baseline = setup.cell, setup.baseline_accuracy
    target = cell.protocol.target(baseline)
    facts = RowFacts(setup.device, wall, info=setup.info, work=run.work())
    rows, traj_rows = [], []
    for t in run.results():
        rates, cstep = crossing(t, target)
        if rates is None:       # never fell below the target: report the final rate
            rates, cstep = t.rates[-1], len(t.rates) - 1
        rows.append(score_row(cell, t, rates, cstep, baseline, facts))
        traj_rows += trajectory_rows(cell, t)
    return rows, traj_rows
