"""A running cell's progress: a bar on a terminal, or a plain line a minute in a log file."""
from __future__ import annotations

import sys
import time

__all__ = ["PROGRESS_LINE_EVERY", "StepBar", "ProgressLines", "status"]

PROGRESS_LINE_EVERY = 60.0   # seconds between two plain progress lines of a cell


def status(run, running: str = "running") -> str:
    """What a cell's progress shows (``run``: a ``CellPruning``): with retraining, which metric
    runs; the trajectories still running; the range of the accuracies of the latest evaluation."""
    pr = run.pruning
    accs = pr.last_accuracies
    metric = f"metric {run.index + 1}/{len(run.groups)}, " if run.retraining else ""
    return f"{metric}{len(pr.pending)}/{len(pr.active)} {running}, acc {min(accs):.1f}-{max(accs):.1f} %"


class ProgressLines:
    """A cell's progress as plain lines (a log file, not a terminal): at most one a minute."""

    def __init__(self, cell, start: float):
        self.cell, self.start, self.last = cell, start, start

    def show(self, run, before: float) -> None:
        """One line if a minute has passed: the step, the trajectories running, the minutes so far
        (``before``: the earlier runs' seconds, when the cell resumed)."""
        now = time.perf_counter()
        if now - self.last < PROGRESS_LINE_EVERY:
            return
        self.last = now
        print(f"{self.cell.id}: step {run.pruning.step_no}, {status(run, 'trajectories running')}, "
              f"{(before + now - self.start) / 60:.1f} min", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to close (the same interface as :class:`StepBar`)."""


class StepBar:
    """A tqdm bar over a cell's pruning steps (with retraining, restarted for each metric)."""

    def __init__(self, cell, run):
        from tqdm import tqdm

        self.bar = tqdm(desc=f"{cell.network}/{cell.dataset}/s{cell.seed}", unit="step", leave=False,
                        initial=run.pruning.step_no)
        self.show(run, 0.0)

    def write(self, line: str) -> None:
        """``line`` on stderr above the bar."""
        from tqdm import tqdm
        tqdm.write(line, file=sys.stderr)

    def show(self, run, before: float) -> None:
        """The bar at the current loop's step: its trajectories still running and the range of the
        accuracies of its latest evaluation."""
        pr, bar = run.pruning, self.bar
        if pr.step_no < bar.n:                 # the next metric's loop has started
            bar.reset()
        bar.update(pr.step_no - bar.n)
        bar.set_postfix_str(status(run))

    def close(self) -> None:
        self.bar.close()
