"""The protocol's loop: every trajectory of a metric group prunes one network at once, one step
at a time, until it crosses the accuracy target or runs out of removable units.

Each step, for every pending trajectory (its keep mask a row of a ``[K, units]`` tensor): the
removable units, the scores (its metric's unit saliencies from the step's saliency images, a
random draw, the oracle's eval losses, or the one-shot rank), the ``units_per_step`` lowest
removed, the rates, and the test accuracy on the schedule: ``exact`` after every step; ``fast``
every ``stride`` steps, then every step inside the bracket where accuracy fell below the target
(:func:`refine`). With the sequential test a mask is tested until its side of the target is
decided, and what the scores read is completed on the whole test set (:func:`settle`).
"""
from __future__ import annotations

import math

import torch

from prunetax.benchmarks.cell import REFERENCES
from prunetax.benchmarks.protocol.pruner import Pruner
from prunetax.benchmarks.protocol.trajectory import Trajectory, is_above, record, resolve_metrics
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["Pruning", "refine", "settle"]


class Pruning:
    """The loop over one :class:`Pruner`'s network for the metrics ``metrics_texts``.

        pruning = Pruning(pruner, metrics, baseline_accuracy)
        while pruning.pending:
            pruning.step()
        trajectories = pruning.results()          # or: Pruning(...).run()

    ``after_step(keep_row)`` (a strategy: the retraining modes pass a ``Retraining``) runs on
    each pending trajectory's mask after its removals, before its rates and accuracy are read.
    ``progress(step, pending, K)`` is called after every step. ``last_accuracies``: the test
    accuracies of the latest evaluation (what a progress bar shows).
    """

    def __init__(self, pruner: Pruner, metrics_texts, baseline_accuracy: float, progress=None,
                 after_step=None):
        self.pr, self.p = pruner, pruner.p
        self.trajectories = resolve_metrics(metrics_texts, pruner.st)
        self.target = self.p.target(baseline_accuracy)
        runs = {}                                   # ran_as -> the trajectory that actually runs
        for t in self.trajectories:
            runs.setdefault(t.ran_as, t)
        self.active = list(runs.values())
        self.keep = torch.ones(len(self.active), pruner.U, dtype=torch.bool, device=pruner.device)
        stride = self.p.eval_every or max(1, math.isqrt(int(pruner.scored.sum()) // self.p.units_per_step))
        self.stride = 1 if self.p.schedule == "exact" else stride     # steps between test passes
        self.gen = torch.Generator().manual_seed(pruner.seed)         # random and the oracle's candidates
        for t in self.active:
            t.accuracy[0] = baseline_accuracy
        # retraining changes the network after each step: a step's accuracy could not be
        # completed later, so the retraining modes test every step on the whole test set
        self.sequential = self.p.sequential_test and self.p.mode == "none"
        self.step_no = 0
        self.pending = list(range(len(self.active)))                 # indices into ``active``
        self.last_accuracies = [baseline_accuracy]
        self.progress, self.after_step = progress, after_step

    def state_dict(self) -> dict:
        """The loop after its last step: the step, the masks, the pending trajectories, each
        trajectory's progress, the generator (random and the oracle's candidates) and the work.
        Copies: the loop goes on. Everything else is fixed by the network, metrics and protocol,
        or, like the saliency images, drawn from (seed, step)."""
        return {"step": self.step_no, "keep": self.keep.clone(), "pending": list(self.pending),
                "gen": self.gen.get_state(), "last_accuracies": self.last_accuracies,
                "trajectories": [t.state_dict() for t in self.active], "work": self.pr.work.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (:meth:`state_dict` of a Pruning of the same network, metrics
        and protocol): the following steps are those the saved run would have taken."""
        saved = [t["ran_as"] for t in state["trajectories"]]
        if saved != [t.ran_as for t in self.active] or tuple(state["keep"].shape) != tuple(self.keep.shape):
            raise PrunetaxError("the saved pruning state is of other metrics or another network")
        for t, s in zip(self.active, state["trajectories"]):
            t.load_state_dict(s, self.pr.device)
        self.step_no = int(state["step"])
        self.keep = state["keep"].to(self.pr.device, torch.bool, copy=True)
        self.pending = [int(k) for k in state["pending"]]
        self.gen.set_state(state["gen"])
        self.last_accuracies = list(state["last_accuracies"])
        self.pr.work.load_state_dict(state.get("work"))              # absent in older states

    def run(self) -> list[Trajectory]:
        """Step until no trajectory is pending; the trajectories of every metric asked for."""
        while self.pending:
            self.step()
        return self.results()

    def step(self) -> None:
        """One step of every pending trajectory: choose and remove its units, ``after_step``,
        read the rates and, on the schedule, the accuracy; a trajectory below the target or
        without a removable unit left leaves ``pending``."""
        self.step_no += 1
        P = torch.tensor(self.pending, device=self.pr.device)
        rem = self.pr.removable(self.keep[P])
        self._remove(P, rem, self._scores(rem))
        if self.after_step is not None:
            for k in self.pending:
                self.after_step(self.keep[k])
        self._measure(P)
        if self.progress is not None:
            self.progress(self.step_no, len(self.pending), len(self.active))

    def _scores(self, rem: torch.Tensor) -> torch.Tensor:
        """[pending, U] score of every unit for every pending trajectory (lowest goes first):
        its metric's unit saliency (one signal pass per metric group), a random draw, the
        oracle's eval losses or the one-shot rank; inf where a unit is not removable."""
        pr, active, pending = self.pr, self.active, self.pending
        choose = torch.full((len(pending), pr.U), float("inf"), dtype=torch.float64, device=pr.device)
        metric_rows = [(i, k) for i, k in enumerate(pending) if active[k].metric not in REFERENCES]
        need_sal = [(i, k) for i, k in metric_rows if not (self.p.one_shot and active[k].order is not None)]
        if need_sal:
            self._metric_scores(need_sal, choose)
        for i, k in enumerate(pending):
            t = active[k]
            if t.metric == "random":
                choose[i] = torch.rand(pr.U, generator=self.gen, dtype=torch.float64, device="cpu").to(pr.device)
            elif t.metric == "oracle":
                choose[i] = pr.oracle_scores(self.keep[k], rem[i], self.step_no, self.gen)
            elif self.p.one_shot:
                choose[i] = t.order
        return torch.where(rem, choose, torch.full_like(choose, float("inf")))

    def _metric_scores(self, need_sal: list[tuple[int, int]], choose: torch.Tensor) -> None:
        """The unit saliencies of the trajectories ``need_sal`` (row in ``choose``, trajectory)
        into ``choose``; one-shot: each unit's rank on the baseline, kept as the trajectory's order."""
        pr, active, device = self.pr, self.active, self.pr.device
        ks = [k for _, k in need_sal]
        x, y = pr.saliency.images(self.step_no)
        sal = pr.saliency.unit_saliencies([active[k].run_metric for k in ks], self.keep[ks], x, y, self._keys(ks))
        if self.p.one_shot:                        # rank once: position in the baseline's order
            for j, (i, k) in enumerate(need_sal):
                order = torch.argsort(sal[j], stable=True)
                active[k].order = torch.empty_like(sal[j]).scatter_(
                    0, order, torch.arange(pr.U, dtype=sal.dtype, device=device))
        else:
            choose[torch.tensor([i for i, _ in need_sal], device=device)] = sal

    def _remove(self, P: torch.Tensor, rem: torch.Tensor, choose: torch.Tensor) -> None:
        """Every pending trajectory removes its ``units_per_step`` lowest-scored removable units,
        all trajectories at once; the chosen ids reach the host in one transfer per step."""
        pr, keep, pending = self.pr, self.keep, self.pending
        rows = torch.arange(len(pending), device=pr.device)
        picks = []
        for j in range(self.p.units_per_step):
            ok = rem if j == 0 else pr.removable(keep[P])               # [n, U]; keep unchanged since rem
            score = torch.where(ok, choose, torch.full_like(choose, float("inf")))
            # argmin takes the lowest unit id on ties; a row with no finite score takes its first
            # removable unit; a row with none removes nothing (-1)
            u = torch.where(torch.isfinite(score).any(1), score.argmin(1), ok.to(torch.uint8).argmax(1))
            u = torch.where(ok.any(1), u, -1)
            hit = u >= 0
            uc = u.clamp(min=0)
            keep[P, uc] = keep[P, uc] & ~hit
            choose[rows, uc] = torch.where(hit, float("inf"), choose[rows, uc])
            picks.append(u)
        picked = torch.stack(picks, 1).tolist()                           # [n, units_per_step]
        for i, k in enumerate(pending):
            self.active[k].removed.extend(v for v in picked[i] if v >= 0)
            self.active[k].step_end.append(len(self.active[k].removed))

    def _keys(self, ks: list[int]) -> list | None:
        """One key per trajectory of ``ks``, equal for equal keep masks (its removed units; the
        host knows them, so no device transfer), or None when masks are not shared."""
        return [frozenset(self.active[k].removed) for k in ks] if self.pr.share else None

    def _measure(self, P: torch.Tensor) -> None:
        """Rates after the step; test accuracy on the schedule (every ``stride`` steps, and for a
        trajectory with nothing left to remove); a trajectory below the target is refined inside
        its bracket and, like one with nothing left, leaves ``pending``."""
        pr, active, pending, step = self.pr, self.active, self.pending, self.step_no
        rates, left = pr.rates(self.keep[P], with_left=True)
        for k, r in zip(pending, rates):
            active[k].rates.append(r)
        exhausted = {k for k, more in zip(pending, left) if not more}
        due = [k for k in pending if step % self.stride == 0 or k in exhausted]
        if due:
            got = pr.tests.test(self.keep[due], self.target, self._keys(due), self.sequential)
            self.last_accuracies = [g[3] if g[3] is not None else 100.0 * g[0] / max(1, g[1]) for g in got]
            for k, g in zip(due, got):
                record(active[k], step, g)
        leaving = []
        for k in list(pending):
            t = active[k]
            if (step in t.accuracy or step in t.early) and not is_above(t, step, self.target):
                if self.stride > 1:
                    refine(pr, t, (step, self.stride), self.target, self.sequential)
                t.crossed, t.done = True, True
            elif k in exhausted:
                t.done = True
            else:
                continue
            pending.remove(k)
            leaving.append(t)
        if leaving and self.sequential:
            settle(pr, leaving, self.target)

    def results(self) -> list[Trajectory]:
        """One trajectory per metric asked for; equivalent metrics share the run's trajectory."""
        by_name = {t.ran_as: t for t in self.active}
        for t in self.trajectories:
            src = by_name[t.ran_as]
            if src is not t:
                t.follow(src)
        return self.trajectories


def refine(pr: Pruner, t: Trajectory, bracket: tuple[int, int], target: float, sequential: bool = False) -> None:
    """Test every step inside ``bracket`` = (step, stride), i.e. (step - stride, step): on a CPU
    left to right up to the first one below the target, on a GPU the whole bracket in one
    batched pass."""
    step, stride = bracket
    lo = max(0, step - stride)
    inner = [s for s in range(lo + 1, step) if s not in t.accuracy and s not in t.early]
    if not inner:
        return
    masks = t.masks(inner, pr.U, pr.device)
    if not pr.tests.batched:   # one row at a time anyway: scan left to right, stop at the first crossing
        for row, s in enumerate(inner):
            record(t, s, pr.tests.test(masks[row:row + 1], target, sequential=sequential)[0])
            if not is_above(t, s, target):
                return
        return
    for s, g in zip(inner, pr.tests.test(masks, target, sequential=sequential)):   # GPU: one batched pass
        record(t, s, g)


def settle(pr: Pruner, trajs: list[Trajectory], target: float) -> None:
    """Complete on the whole test set what each trajectory's scores read: its first step below
    the target, the step before it, and its last tested step (``final_accuracy``), for all of
    ``trajs`` in one test call. A completed step that turns out on the other side of its early
    decision (probability at most ``sequential_delta`` each) moves the crossing; the loop then
    completes what the new one reads."""
    while True:
        todo = []
        for t in trajs:
            steps = sorted(set(t.accuracy) | set(t.early))
            need = {steps[-1]}
            for i, s in enumerate(steps):
                if not is_above(t, s, target):
                    need.update(steps[max(0, i - 1):i + 1])
                    break
            todo += [(t, s) for s in sorted(need) if s in t.early]
        if not todo:
            return
        masks = torch.cat([t.masks([s], pr.U, pr.device) for t, s in todo])
        got = pr.tests.test(masks, None, sequential=True, start=[t.tested[s] for t, s in todo])
        for (t, s), g in zip(todo, got):
            if (g[3] >= target) != t.early[s]:
                pr.work.reversed_decision()
            record(t, s, g)
