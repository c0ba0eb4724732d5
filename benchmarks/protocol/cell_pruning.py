"""Every metric of a cell pruning its network, one step at a time, with its state."""
from __future__ import annotations

import dataclasses

from prunetax.benchmarks.cell import Measurement, Protocol
from prunetax.benchmarks.protocol.loop import Pruning
from prunetax.benchmarks.protocol.pruner import Pruner
from prunetax.benchmarks.protocol.retraining import Retraining
from prunetax.benchmarks.protocol.trajectory import Trajectory, resolve_metrics
from prunetax.benchmarks.protocol.work import add_work
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["CellPruning"]


class CellPruning:
    """Every metric of ``metrics_texts`` pruning ``network`` (a :class:`Network`) under ``protocol``.

    Mode ``none``: one :class:`Pruning` of all metrics at once. ``characterise`` / ``retrain``:
    one :class:`Pruning` per metric (in order), each on its own copy of the network with a
    :class:`Retraining` hook and the ``exact`` schedule; the next metric starts when a step
    finishes the current one. ``pruning`` is the current loop, ``index`` its metric group
    (always 0 in mode ``none``). ``measurement``: how the passes run (``Measurement``; the
    results are the same); ``progress``: :class:`Pruning`'s per-step callback.

        run = CellPruning(Network.of(setup), setup.cell.metrics, setup.cell.protocol)
        while run.pending:
            run.step()
        trajectories = run.results()              # or: run.run()

    :meth:`state_dict` after any step, loaded into a fresh CellPruning of the same cell,
    continues the run exactly (``prunetax.benchmarks.checkpoint`` keeps it in a file).
    """

    def __init__(self, network, metrics_texts, protocol: Protocol, measurement: Measurement | None = None,
                 progress=None):
        self.retraining = protocol.mode != "none"
        if self.retraining and not hasattr(network.data, "train_x"):
            raise PrunetaxError(f"mode {protocol.mode!r} needs the training split")
        self.network, self.measurement, self.progress = network, measurement or Measurement(), progress
        self.p = dataclasses.replace(protocol, schedule="exact") if self.retraining else protocol
        self.groups = [[text] for text in metrics_texts] if self.retraining else [list(metrics_texts)]
        if not self.groups:
            raise PrunetaxError("the cell has no metrics")
        self.completed: list[Trajectory] = []       # the finished groups' trajectories
        self._completed_state: list[dict] = []      # and their states (they no longer change)
        self._completed_work: dict = {}             # and their work (Work.report)
        self._start(0)

    def _start(self, index: int) -> None:
        """Set up group ``index``'s loop (with retraining: on a fresh copy of the network)."""
        self.index = index
        net = self.network
        if self.retraining:
            self.hook = Retraining(net, self.p, index, self.p.target(net.baseline_accuracy))
            net = self.hook.network()
        else:
            self.hook = None
        pr = Pruner(net, self.p, self.measurement)
        self.pruning = Pruning(pr, self.groups[index], net.baseline_accuracy, self.progress, after_step=self.hook)

    @property
    def pending(self) -> bool:
        """Whether a step is left to take."""
        return bool(self.pruning.pending)

    def step(self) -> None:
        """One step of the current loop; when that finishes its group, the next group starts."""
        self.pruning.step()
        if not self.pruning.pending and self.index + 1 < len(self.groups):
            finished = self.pruning.results()
            self.completed += finished
            self._completed_state += [t.state_dict() for t in finished]
            self._completed_work = add_work(self._completed_work, self.pruning.pr.work.report())
            self._start(self.index + 1)

    def run(self) -> list[Trajectory]:
        """Step until done; the trajectories of every metric asked for."""
        while self.pending:
            self.step()
        return self.results()

    def results(self) -> list[Trajectory]:
        """One trajectory per metric asked for, in order."""
        return self.completed + self.pruning.results()

    def work(self) -> dict:
        """The image-passes of every loop so far (``Work.report``): run, and without sharing or
        early stops (``test_images_exhaustive``: every test on the whole test set)."""
        return add_work(self._completed_work, self.pruning.pr.work.report())

    def state_dict(self) -> dict:
        """The run after its last step: the finished groups' trajectories, the current group's
        index and its :class:`Pruning` and :class:`Retraining` states (None before its first step)."""
        fresh = self.pruning.step_no == 0
        return {"index": self.index, "completed": list(self._completed_state),
                "completed_work": dict(self._completed_work),
                "pruning": None if fresh else self.pruning.state_dict(),
                "retraining": None if fresh or self.hook is None else self.hook.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (:meth:`state_dict` of the same cell's run). A state that does
        not fit raises PrunetaxError; the object may then be half-loaded: build a fresh one."""
        index = int(state["index"])
        if not 0 <= index < len(self.groups):
            raise PrunetaxError(f"the saved run is at metric group {index} of {len(self.groups)}")
        completed = [t for g in self.groups[:index] for t in resolve_metrics(g, self.network.structure)]
        if len(completed) != len(state["completed"]):
            raise PrunetaxError("the saved run finished other metrics")
        for t, s in zip(completed, state["completed"]):
            t.load_state_dict(s, self.network.device)
        self.completed, self._completed_state = completed, list(state["completed"])
        self._completed_work = dict(state.get("completed_work", {}))    # absent in older states
        self._start(index)
        if state["pruning"] is not None:
            self.pruning.load_state_dict(state["pruning"])
            if self.hook is not None:
                self.hook.load_state_dict(state["retraining"])
