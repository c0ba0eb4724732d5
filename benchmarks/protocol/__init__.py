"""The pruning protocol: K metrics prune one trained network at once, one unit per step.

One concept per module:

- ``trajectory``: :class:`Trajectory` (one metric's progress), :func:`resolve_metrics` (a
  cell's metric list; equivalent metrics run once), :func:`crossing` (the interpolated rate);
- ``network``: :class:`Network`, the network a cell prunes as one value;
- ``pruner``: :class:`Pruner`, one network's counts, removability, rates and passes;
- ``saliency_pass``: the saliency passes of a step (signal groups, shared masks);
- ``evaluation``: the test passes (whole test set, or the sequential test's chunks);
- ``sequential``: the sequential test's mathematics (pure functions);
- ``work``: what the passes cost, counted;
- ``loop``: :class:`Pruning`, the step of every pending trajectory, the fast schedule's refinement;
- ``retraining``: :class:`Retraining`, the characterise / retrain modes' after-step strategy;
- ``cell_pruning``: :class:`CellPruning`, every metric of a cell with its state;
- ``run``: :func:`run_cell`, the one way to run a cell (set-up, state file, progress, rows);
- ``progress``: a running cell's bar or log lines.

Each of the loop's classes has ``state_dict`` / ``load_state_dict``: a run stopped after any step
continues from its state exactly. See docs/protocol.md.
"""
from __future__ import annotations

from prunetax.benchmarks.protocol.cell_pruning import CellPruning
from prunetax.benchmarks.protocol.loop import Pruning
from prunetax.benchmarks.protocol.network import Network
from prunetax.benchmarks.protocol.progress import PROGRESS_LINE_EVERY
from prunetax.benchmarks.protocol.pruner import Pruner
from prunetax.benchmarks.protocol.retraining import Retraining
from prunetax.benchmarks.protocol.run import cell_rows, run_cell
from prunetax.benchmarks.protocol.trajectory import Trajectory, crossing, resolve_metrics

__all__ = ["run_cell", "cell_rows", "CellPruning", "Pruning", "Pruner", "Network", "Retraining", "Trajectory",
           "resolve_metrics", "crossing", "PROGRESS_LINE_EVERY"]
