"""The pruning protocol: K metrics prune one trained network at once, one unit per step.

Every trajectory carries its own keep mask (a row of a ``[K, units]`` tensor). At each step the
saliency images (``saliency_batches x batch_size`` eval images, reshuffled) go through the
masked network once for all trajectories of a signal group, each trajectory's metric picks the
argmin unit among the removable ones, and the test accuracy is measured on the schedule:
``exact`` after every step; ``fast`` every ``eval_every`` steps, then every step inside the
bracket where accuracy fell below the target. Without retraining the removal sequence does not
depend on accuracy, so ``fast`` re-evaluates the bracket's masks in one batched pass.

``Pruning`` is the loop (``while pruning.pending: pruning.step()``), ``Retraining`` the
characterise/retrain modes' after-step strategy, ``CellPruning`` every metric of a cell (one
``Pruning``, or one per metric with retraining), ``prune`` / ``prune_cell`` the entry points and
``run_cell`` one whole cell (set-up: ``prunetax.benchmarks.setup``; rows:
``prunetax.benchmarks.results``; resuming from a state file: ``prunetax.benchmarks.checkpoint``).
Each of the loop's classes has ``state_dict`` / ``load_state_dict``: a run stopped after any step
continues from its state exactly. See docs/protocol.md.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
import time

import torch
from torch.nn import functional as F

from prunetax.benchmarks.cell import REFERENCES, Cell, CellResult, Protocol
from prunetax.metrics import evaluate_metrics
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.expr import parse_metric
from prunetax.taxonomy.spec import MetricSpec

_ROWS_PER_PASS = 8192                 # images per batched forward on CPU (x4 on GPU)
_WEIGHT_GRAD_BUDGET = 1 << 30          # bytes of per-image weight gradients per chunk


class Trajectory:
    """One metric pruning one copy of the network (its keep mask lives in the cell's tensor)."""

    def __init__(self, name: str, metric, ran_as: str):
        self.name, self.metric, self.ran_as = name, metric, ran_as
        self.run_metric = ran_as if ran_as in REFERENCES else parse_metric(ran_as)
        self.removed: list[int] = []              # units removed, in order
        self.step_end: list[int] = [0]            # len(removed) after each step
        self.rates: list[tuple] = [(0.0, 0.0, 0.0)]  # (conv %, channels %, MACs %) after step i
        self.accuracy: dict[int, float] = {}      # step -> test accuracy
        self.done = False
        self.crossed = False
        self.order: torch.Tensor | None = None    # one-shot: each unit's rank on the baseline

    def state_dict(self) -> dict:
        """Its progress (copies of the lists, which the run goes on extending; ``order`` is
        never changed in place, so it is shared)."""
        return {"ran_as": self.ran_as, "removed": list(self.removed), "step_end": list(self.step_end),
                "rates": list(self.rates), "accuracy": dict(self.accuracy), "done": self.done,
                "crossed": self.crossed, "order": self.order}

    def load_state_dict(self, state: dict, device="cpu") -> None:
        """Continue from ``state`` (:meth:`state_dict` of the same metric); ``order`` goes to ``device``."""
        if state["ran_as"] != self.ran_as:
            raise PrunetaxError(f"the saved trajectory is of {state['ran_as']!r}, not {self.ran_as!r}")
        self.removed, self.step_end = [int(u) for u in state["removed"]], [int(e) for e in state["step_end"]]
        self.rates = [tuple(r) for r in state["rates"]]
        self.accuracy = dict(state["accuracy"])
        self.done, self.crossed = bool(state["done"]), bool(state["crossed"])
        self.order = None if state["order"] is None else state["order"].to(device, copy=True)


def _metric_key(m) -> tuple:
    """Trajectories whose metrics share this key share one signal pass."""
    if isinstance(m, MetricSpec):
        return ("spec", m.base_input, m.pointwise, m.aggregation)
    return ("expr", str(m))


def resolve_metrics(texts, structure) -> list[Trajectory]:
    """Parse the cell's metric list; metrics equivalent on this network run once (``ran_as``)."""
    single_member = all(len(u.members) == 1 for u in structure.units)
    trajectories, seen = [], set()
    for text in texts:
        text = text.strip()
        if text in REFERENCES:
            metric, name = text, text
        else:
            metric = parse_metric(text)
            name = text if ("-" not in text and "*" not in text and "+" not in text) else str(metric)
        if name in seen:
            continue
        seen.add(name)
        ran = metric
        if isinstance(metric, MetricSpec) and metric.structure == "domino_o" and single_member:
            ran = metric.replace(structure="channel")   # no merges and no groups: domino_o == channel
        trajectories.append(Trajectory(name, metric, ran if isinstance(ran, str) else str(ran)))
    if not trajectories:
        raise PrunetaxError("the cell has no metrics")
    return trajectories


class _Pruner:
    def __init__(self, model, structure, masked, data, protocol: Protocol, seed: int, device, evaluator=None):
        self.model, self.st, self.masked, self.p = model, structure, masked, protocol
        self.device, self.seed = device, seed
        if evaluator not in (None, "slim", "masked"):
            raise PrunetaxError(f"unknown evaluator {evaluator!r}; use 'slim', 'masked' or None (by device)")
        # how test passes run (the results are the same): K masks in one batched pass of the masked
        # network (GPU), or each mask's physically slimmed network (CPU, compute-bound)
        self.batched_eval = (evaluator or ("slim" if device.type == "cpu" else "masked")) == "masked"
        self.eval_x, self.eval_y = data.eval_x, data.eval_y
        self.test_x, self.test_y = protocol.test_split(data.test_x, data.test_y)
        U = structure.num_units
        self.U = U
        self.rows = _ROWS_PER_PASS * (4 if device.type == "cuda" else 1)
        # members of each unit per producer, to keep every layer non-empty
        P = len(structure.producers)
        self.members = torch.zeros(P, U, device=device)
        for i, p in enumerate(structure.producers):
            u = structure.layers[p].out_units
            self.members[i].index_add_(0, u[u >= 0].to(device), torch.ones(int((u >= 0).sum()), device=device))
        self.scored = self.members.sum(0) > 0              # units with a scored (pruned) member
        full = torch.ones(1, U, dtype=torch.bool, device=device)
        c = structure.counts(full)[0].tolist()
        self.initial = (c[0], c[3], c[2])                  # conv weights, conv channels, MACs

    # -- counts ---------------------------------------------------------------------------------
    def removable(self, keep: torch.Tensor) -> torch.Tensor:
        """bool [K, U]: kept units whose removal leaves every producer at least one channel."""
        m = self.members                                   # [P, U]
        kept = keep.to(m.dtype) @ m.T                      # [K, P] kept channels per producer
        ok = ((m[None] == 0) | (kept[:, :, None] - m[None] > 0)).all(1)   # [K, U]
        return keep & ok & self.scored

    def rates(self, keep: torch.Tensor, with_left: bool = False):
        """(conv %, channels %, MACs %) removed for each row of ``keep``; with ``with_left`` also
        whether each row has a removable unit left (one device-to-host transfer for both)."""
        c = self.st.counts(keep)                                          # [K, 4], exact integers
        cols = [c[:, 0], c[:, 3], c[:, 2]]
        if with_left:
            cols.append(self.removable(keep).any(1).to(torch.float64))
        rows = torch.stack(cols, 1).tolist()
        c0, h0, m0 = self.initial
        out = [(100 * (1 - r[0] / c0), 100 * (1 - r[1] / h0), 100 * (1 - r[2] / m0)) for r in rows]
        return (out, [r[3] > 0 for r in rows]) if with_left else out

    # -- batched forwards -----------------------------------------------------------------------
    @torch.no_grad()
    def accuracy(self, keep: torch.Tensor) -> list[float]:
        """Test accuracy (%) of each mask row of ``keep`` [K, U].

        On a GPU: batched passes of the masked network (K masks at once). On a CPU, where the
        test passes are compute-bound, each row's physically slimmed network instead, which
        costs only the MACs that remain (``slim`` equals masking; tests/test_masking.py).
        ``evaluator=`` of :func:`prune` picks one explicitly.
        """
        if not self.batched_eval:
            from prunetax.benchmarks.training import evaluate
            from prunetax.metrics import slim

            return [evaluate(slim(self.model, self.masked.structure, row.cpu()), self.test_x, self.test_y)
                    for row in keep]
        out = []
        T = len(self.test_y)
        per_pass = max(1, self.rows // T)
        for k0 in range(0, len(keep), per_pass):
            ks = keep[k0:k0 + per_pass]
            K = len(ks)
            correct = torch.zeros(K, device=self.device)
            step = max(1, self.rows // K)
            self.masked.set_keep(ks)
            for i in range(0, T, step):
                xb, yb = self.test_x[i:i + step], self.test_y[i:i + step]
                logits = self.masked(xb.repeat(K, *([1] * (xb.dim() - 1))))
                pred = logits.argmax(1).view(K, -1)
                correct += (pred == yb[None]).sum(1)
            out += (100.0 * correct / T).tolist()
        return out

    @torch.no_grad()
    def losses(self, keep: torch.Tensor, x, y) -> torch.Tensor:
        """Mean eval-batch loss of each mask row (the oracle's criterion), [K]."""
        out = []
        per_pass = max(1, self.rows // len(y))
        for k0 in range(0, len(keep), per_pass):
            ks = keep[k0:k0 + per_pass]
            self.masked.set_keep(ks)
            logits = self.masked(x.repeat(len(ks), *([1] * (x.dim() - 1))))
            loss = F.cross_entropy(logits, y.repeat(len(ks)), reduction="none").view(len(ks), -1).mean(1)
            out.append(loss)
        return torch.cat(out)

    def saliency_images(self, step: int):
        """The step's eval images (the same for every metric and the oracle), drawn once per step."""
        if getattr(self, "_images", (None,))[0] != step:
            n = min(self.p.saliency_batches * self.p.batch_size, len(self.eval_y))
            if n == 0:
                raise PrunetaxError("the eval split is empty: saliency metrics need held-out eval images")
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            idx = torch.randperm(len(self.eval_y), generator=gen, device="cpu")[:n].to(self.eval_y.device)
            self._images = (step, self.eval_x[idx], self.eval_y[idx])
        return self._images[1:]

    def unit_saliencies(self, metrics: list, keep: torch.Tensor, x, y) -> torch.Tensor:
        """Unit saliency [K, U] of trajectory k under metric k, one signal pass per metric group."""
        K = len(metrics)
        out = torch.empty(K, self.U, dtype=torch.float64, device=self.device)
        groups: dict[tuple, list[int]] = {}
        for k, m in enumerate(metrics):
            groups.setdefault(_metric_key(m), []).append(k)
        cap = self.p.max_trajectories or K            # trajectories per pass: bounds the memory
        chunks = [g[c:c + cap] for g in groups.values() for c in range(0, len(g), cap)]
        for idx in chunks:
            # the engine sets the masks, repeats the images per trajectory, splits them into passes
            # that bound the per-image weight gradients, and skips the image pass for weight values
            values = evaluate_metrics(self.masked, self.st, list(dict.fromkeys(metrics[k] for k in idx)),
                                      lambda: [(x, y)], keep[idx], weight_grad_bytes=_WEIGHT_GRAD_BUDGET)
            self._take(values, idx=idx, metrics=metrics, out=out)
        return out

    def _take(self, values, idx, metrics, out) -> None:
        """Unit saliencies of the group's rows (``values``: the engine's MetricValues), each
        trajectory under its own metric."""
        rows = values.row_unit_saliency([metrics[k] for k in idx])
        out[torch.tensor(idx, device=out.device)] = rows.to(out.device)


def _crossing(traj: Trajectory, target: float):
    """Interpolated (conv %, channels %, MACs %) where accuracy crosses ``target``, and the step."""
    steps = sorted(traj.accuracy)
    prev = None
    for s in steps:
        a = traj.accuracy[s]
        if a < target:
            if prev is None:
                return traj.rates[s], s
            a0, r0, r1 = traj.accuracy[prev], traj.rates[prev], traj.rates[s]
            t = (a0 - target) / (a0 - a) if a0 != a else 1.0
            return tuple(x0 + t * (x1 - x0) for x0, x1 in zip(r0, r1)), s
        prev = s
    return None, None


class Pruning:
    """The protocol's loop: every trajectory of ``metrics_texts`` prunes ``pruner``'s network at
    once, one step at a time, until it crosses the target or runs out of removable units.

        pruning = Pruning(pruner, metrics, baseline_accuracy)
        while pruning.pending:
            pruning.step()
        trajectories = pruning.results()          # or: Pruning(...).run()

    ``after_step(keep_row)`` (a strategy: the retraining modes pass a :class:`Retraining`) runs
    on each pending trajectory's mask after its removals, before its rates and accuracy are read.
    ``progress(step, pending, K)`` is called after every step. ``last_accuracies``: the test
    accuracies of the latest evaluation (what a progress bar shows).
    """

    def __init__(self, pruner: _Pruner, metrics_texts, baseline_accuracy: float, progress=None,
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
        self.step_no = 0
        self.pending = list(range(len(self.active)))                 # indices into ``active``
        self.last_accuracies = [baseline_accuracy]
        self.progress, self.after_step = progress, after_step

    def state_dict(self) -> dict:
        """The loop after its last step: the step, the masks, the pending trajectories, each
        trajectory's progress and the generator (random and the oracle's candidates). Copies:
        the loop goes on. Everything else is fixed by the network, metrics and protocol, or, like
        the saliency images, drawn from (seed, step)."""
        return {"step": self.step_no, "keep": self.keep.clone(), "pending": list(self.pending),
                "gen": self.gen.get_state(), "last_accuracies": self.last_accuracies,
                "trajectories": [t.state_dict() for t in self.active]}

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
        pr, p, active, pending, keep, step = self.pr, self.p, self.active, self.pending, self.keep, self.step_no
        device = pr.device
        choose = torch.full((len(pending), pr.U), float("inf"), dtype=torch.float64, device=device)
        metric_rows = [(i, k) for i, k in enumerate(pending) if active[k].metric not in REFERENCES]
        need_sal = [(i, k) for i, k in metric_rows if not (p.one_shot and active[k].order is not None)]
        if need_sal:
            x, y = pr.saliency_images(step)
            sal = pr.unit_saliencies([active[k].run_metric for _, k in need_sal],
                                     keep[[k for _, k in need_sal]], x, y)
            if p.one_shot:                        # rank once: position in the baseline's order
                for j, (i, k) in enumerate(need_sal):
                    order = torch.argsort(sal[j], stable=True)
                    active[k].order = torch.empty_like(sal[j]).scatter_(
                        0, order, torch.arange(pr.U, dtype=sal.dtype, device=device))
            else:
                choose[torch.tensor([i for i, _ in need_sal], device=device)] = sal
        for i, k in enumerate(pending):
            t = active[k]
            if t.metric == "random":
                choose[i] = torch.rand(pr.U, generator=self.gen, dtype=torch.float64, device="cpu").to(device)
            elif t.metric == "oracle":
                choose[i] = _oracle_scores(pr, keep[k], rem[i], step, self.gen)
            elif p.one_shot:
                choose[i] = t.order
        return torch.where(rem, choose, torch.full_like(choose, float("inf")))

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
            self.last_accuracies = pr.accuracy(self.keep[due])
            for k, a in zip(due, self.last_accuracies):
                active[k].accuracy[step] = a
        for k in list(pending):
            t = active[k]
            if step in t.accuracy and t.accuracy[step] < self.target:
                if self.stride > 1:
                    _refine(pr, t, step, self.stride, self.target)
                t.crossed, t.done = True, True
                pending.remove(k)
            elif k in exhausted:
                t.done = True
                pending.remove(k)

    def results(self) -> list[Trajectory]:
        """One trajectory per metric asked for; equivalent metrics share the run's trajectory."""
        by_name = {t.ran_as: t for t in self.active}
        for t in self.trajectories:
            src = by_name[t.ran_as]
            if src is not t:
                t.removed, t.step_end, t.rates = src.removed, src.step_end, src.rates
                t.accuracy, t.crossed, t.done = src.accuracy, src.crossed, True
        return self.trajectories


class Retraining:
    """The ``characterise`` / ``retrain`` modes, as :class:`Pruning`'s ``after_step`` strategy.

    SGD changes the weights, so the trajectory prunes its own copy of the network (``net``,
    masked by ``masked``); after every pruning step, SGD steps (lr ``retrain_lr``, momentum 0.9,
    batch ``batch_size``) on the training split with the trajectory's mask applied: ``retrain``
    runs ``retrain_steps``; ``characterise`` stops once the training batch's accuracy is back at
    ``target`` (at most ``max(retrain_steps, 50)``). BatchNorm stays in eval mode.
    """

    def __init__(self, model, masked, data, protocol: Protocol, seed: int, index: int, target: float):
        from prunetax.metrics import MaskedModel

        self.net = copy.deepcopy(model)
        for prm in self.net.parameters():
            prm.requires_grad_(True)
        self.masked = MaskedModel(self.net, masked.structure)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=protocol.retrain_lr, momentum=0.9)
        self.gen = torch.Generator().manual_seed(seed * 7919 + index)
        self.data, self.p, self.target = data, protocol, target

    def __call__(self, keep_row: torch.Tensor) -> None:
        p, data, mm = self.p, self.data, self.masked
        mm.set_keep(keep_row[None])
        steps = p.retrain_steps if p.mode == "retrain" else max(p.retrain_steps, 50)
        for _ in range(steps):
            idx = torch.randint(len(data.train_y), (p.batch_size,), generator=self.gen, device="cpu")
            idx = idx.to(data.train_y.device)
            with torch.enable_grad():
                logits = mm(data.train_x[idx])
                loss = F.cross_entropy(logits, data.train_y[idx])
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
            self.opt.step()
            if p.mode == "characterise":    # stop once the training batch is back above the target
                if 100.0 * (logits.argmax(1) == data.train_y[idx]).float().mean() >= self.target:
                    break

    def state_dict(self) -> dict:
        """The network's weights, the optimizer's momentum and the batch generator (copies)."""
        return {"net": {k: v.detach().clone() for k, v in self.net.state_dict().items()},
                "opt": copy.deepcopy(self.opt.state_dict()), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (:meth:`state_dict` of the same metric's Retraining)."""
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])


class CellPruning:
    """Every metric of a cell pruning its network, one step at a time.

    Mode ``none``: one :class:`Pruning` of all metrics at once. ``characterise`` / ``retrain``:
    one :class:`Pruning` per metric (in order), each on its own copy of the network with a
    :class:`Retraining` hook and the ``exact`` schedule; the next metric starts when a step
    finishes the current one. ``pruning`` is the current loop, ``index`` its metric group
    (always 0 in mode ``none``).

        run = CellPruning(...)                    # or CellPruning.of(setup)
        while run.pending:
            run.step()
        trajectories = run.results()              # or: CellPruning(...).run()

    :meth:`state_dict` after any step, loaded into a fresh CellPruning of the same cell,
    continues the run exactly (``prunetax.benchmarks.checkpoint`` keeps it in a file).
    """

    def __init__(self, model, structure, masked, data, metrics_texts, protocol: Protocol, seed: int, device,
                 baseline_accuracy: float, progress=None, evaluator=None):
        self.retraining = protocol.mode != "none"
        if self.retraining and not hasattr(data, "train_x"):
            raise PrunetaxError(f"mode {protocol.mode!r} needs the training split")
        self.model, self.structure, self.masked, self.data, self.seed = model, structure, masked, data, seed
        self.device, self.baseline, self.progress, self.evaluator = device, baseline_accuracy, progress, evaluator
        self.p = dataclasses.replace(protocol, schedule="exact") if self.retraining else protocol
        self.groups = [[text] for text in metrics_texts] if self.retraining else [list(metrics_texts)]
        if not self.groups:
            raise PrunetaxError("the cell has no metrics")
        self.completed: list[Trajectory] = []       # the finished groups' trajectories
        self._completed_state: list[dict] = []      # and their states (they no longer change)
        self._start(0)

    @classmethod
    def of(cls, setup, progress=None, evaluator=None) -> "CellPruning":
        """The pruning of a prepared cell (``prunetax.benchmarks.setup.prepare_cell``): its metrics
        and protocol, on its network, data, seed, device and baseline accuracy."""
        c = setup.cell
        return cls(setup.model, setup.structure, setup.masked, setup.data, c.metrics, c.protocol, c.seed,
                   setup.device, setup.baseline_accuracy, progress, evaluator)

    def _start(self, index: int) -> None:
        """Set up group ``index``'s loop (with retraining: on a fresh copy of the network)."""
        self.index = index
        if self.retraining:
            self.hook = Retraining(self.model, self.masked, self.data, self.p, self.seed, index,
                                   self.p.target(self.baseline))
            pr = _Pruner(self.hook.net.eval(), self.structure, self.hook.masked, self.data, self.p, self.seed,
                         self.device, self.evaluator)
        else:
            self.hook = None
            pr = _Pruner(self.model, self.structure, self.masked, self.data, self.p, self.seed, self.device,
                         self.evaluator)
        self.pruning = Pruning(pr, self.groups[index], self.baseline, self.progress, after_step=self.hook)

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
            self._start(self.index + 1)

    def run(self) -> list[Trajectory]:
        """Step until done; the trajectories of every metric asked for."""
        while self.pending:
            self.step()
        return self.results()

    def results(self) -> list[Trajectory]:
        """One trajectory per metric asked for, in order."""
        return self.completed + self.pruning.results()

    def state_dict(self) -> dict:
        """The run after its last step: the finished groups' trajectories, the current group's
        index and its :class:`Pruning` and :class:`Retraining` states (None before its first step)."""
        fresh = self.pruning.step_no == 0
        return {"index": self.index, "completed": list(self._completed_state),
                "pruning": None if fresh else self.pruning.state_dict(),
                "retraining": None if fresh or self.hook is None else self.hook.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (:meth:`state_dict` of the same cell's run). A state that does
        not fit raises PrunetaxError; the object may then be half-loaded: build a fresh one."""
        index = int(state["index"])
        if not 0 <= index < len(self.groups):
            raise PrunetaxError(f"the saved run is at metric group {index} of {len(self.groups)}")
        completed = [t for g in self.groups[:index] for t in resolve_metrics(g, self.structure)]
        if len(completed) != len(state["completed"]):
            raise PrunetaxError("the saved run finished other metrics")
        for t, s in zip(completed, state["completed"]):
            t.load_state_dict(s, self.device)
        self.completed, self._completed_state = completed, list(state["completed"])
        self._start(index)
        if state["pruning"] is not None:
            self.pruning.load_state_dict(state["pruning"])
            if self.hook is not None:
                self.hook.load_state_dict(state["retraining"])


def prune(model, structure, masked, data, metrics_texts, protocol: Protocol, seed: int, device,
          baseline_accuracy: float, progress=None, evaluator=None) -> list[Trajectory]:
    """Run every metric's trajectory to its crossing; returns the trajectories (one per metric).

    Mode ``none``: one :class:`Pruning` of all metrics at once. ``characterise`` / ``retrain``:
    one :class:`Pruning` per metric (in order), each on its own copy of the network with a
    :class:`Retraining` hook and the ``exact`` schedule.
    ``evaluator``: ``"masked"`` (K masks per batched pass; the default on GPU), ``"slim"`` (each
    mask's slimmed network; the default on CPU) or None. Both give the same accuracies.
    :func:`prune_cell` runs it on a :class:`~prunetax.benchmarks.setup.CellSetup`; both are
    :meth:`CellPruning.run`.
    """
    return CellPruning(model, structure, masked, data, metrics_texts, protocol, seed, device, baseline_accuracy,
                       progress, evaluator).run()


def prune_cell(setup, progress=None, evaluator=None) -> list[Trajectory]:
    """:func:`prune` on a prepared cell (``prunetax.benchmarks.setup.prepare_cell``): its metrics
    and protocol, on its network, data, seed, device and baseline accuracy."""
    return CellPruning.of(setup, progress, evaluator).run()


def _refine(pr: _Pruner, t: Trajectory, step: int, stride: int, target: float) -> None:
    """Evaluate every step inside (step - stride, step) in one batched pass."""
    lo = max(0, step - stride)
    inner = [s for s in range(lo + 1, step) if s not in t.accuracy]
    if not inner:
        return
    masks = torch.ones(len(inner), pr.U, dtype=torch.bool, device=pr.device)
    for row, s in enumerate(inner):
        masks[row, t.removed[: t.step_end[s]]] = False
    if not pr.batched_eval:   # one row at a time anyway: scan left to right, stop at the first crossing
        for row, s in enumerate(inner):
            t.accuracy[s] = pr.accuracy(masks[row:row + 1])[0]
            if t.accuracy[s] < target:
                return
        return
    for s, a in zip(inner, pr.accuracy(masks)):   # GPU: the whole bracket in one batched pass
        t.accuracy[s] = a


def _oracle_scores(pr: _Pruner, keep_row, rem_row, step, gen) -> torch.Tensor:
    """Myopic oracle: among candidate units, the removal with the lowest eval-batch loss scores 0."""
    cand = torch.nonzero(rem_row).flatten()
    n = pr.p.oracle_candidates or 32
    if len(cand) > n:
        cand = cand[torch.randperm(len(cand), generator=gen, device="cpu")[:n].to(cand.device)]
    masks = keep_row[None].repeat(len(cand), 1)
    masks[torch.arange(len(cand), device=cand.device), cand] = False
    x, y = pr.saliency_images(step)
    loss = pr.losses(masks, x, y)
    scores = torch.full((pr.U,), float("inf"), dtype=torch.float64, device=pr.device)
    scores[cand] = loss.to(torch.float64)
    return scores


def run_cell(cell: Cell, env=None, progress: bool = False, *, device=None, cache_dir=None,
             data_root=None, checkpoint=None, checkpoint_every: float = 300.0,
             allow_weak_baseline: bool = False) -> CellResult:
    """Train or fetch the cell's baseline, prune it with every metric, score the crossings.

    ``env``: a :class:`prunetax.benchmarks.setup.Env` (None: the defaults); the keywords
    ``device``, ``cache_dir`` and ``data_root`` set its fields too (the older signature).
    ``progress``: the baseline's training bar, then a bar over the pruning steps (trajectories
    still running, the accuracies of the latest evaluation).

    ``checkpoint``: the path of the cell's state file (None: none; ``prunetax.benchmarks.checkpoint``).
    A state of this cell on this baseline found there is resumed (one line on stderr says from
    which step); the state after the last completed step is written there every
    ``checkpoint_every`` seconds (0: after every step) and at once on SIGTERM or SIGINT, after
    which the signal ends the run as it would have. The file stays when the cell completes: the
    caller removes it (``checkpoint.remove_state``) once the results are written. The rows equal
    an uninterrupted run's except ``wall_seconds`` (the runs' time up to the saved step plus
    this run's). See docs/protocol.md, "Resuming a cell".

    A baseline whose accuracy target is not above chance stops the cell with a one-line error
    (``setup.check_baseline``) unless ``allow_weak_baseline``.
    """
    from prunetax.benchmarks.results import score_row, trajectory_rows
    from prunetax.benchmarks.setup import Env, prepare_cell

    start = time.perf_counter()
    setup = prepare_cell(cell, Env.of(env, device=device, cache_dir=cache_dir, data_root=data_root),
                         progress=progress)
    if not allow_weak_baseline:   # a target at or below chance: no metric could cross it
        from prunetax.benchmarks.setup import check_baseline
        check_baseline(setup)
    run = CellPruning.of(setup)
    saver, before = None, 0.0              # before: the earlier runs' seconds up to the saved state
    if checkpoint is not None:
        from prunetax.benchmarks.checkpoint import CellCheckpoint, baseline_digest

        saver = CellCheckpoint(checkpoint, cell.id, baseline_digest(setup), checkpoint_every)
        state = saver.load()
        if state is not None:
            try:
                run.load_state_dict(state["run"])
                before, saved = float(state["elapsed"]), time.localtime(state["saved_at"])
            except (PrunetaxError, LookupError, TypeError, ValueError, RuntimeError) as exc:
                saver.ignore(f"it does not fit this run: {exc}")
                run, before = CellPruning.of(setup), 0.0
            else:
                of = f" of metric {run.index + 1}/{len(run.groups)}" if run.retraining else ""
                print(f"resuming {cell.id} from step {run.pruning.step_no}{of} "
                      f"(saved {time.strftime('%Y-%m-%d %H:%M:%S', saved)})", file=sys.stderr, flush=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"{cell.network}/{cell.dataset}/s{cell.seed}", unit="step", leave=False,
                   initial=run.pruning.step_no)
        _show(bar, run)
        if saver is not None:
            saver.log = lambda line: tqdm.write(line, file=sys.stderr)
    try:
        with saver.saving_on_signals() if saver is not None else contextlib.nullcontext():
            while run.pending:
                run.step()
                if saver is not None:
                    saver.step_done(run.state_dict(), step=run.pruning.step_no, metric=run.index,
                                    elapsed=before + time.perf_counter() - start)
                if bar is not None:
                    _show(bar, run)
    finally:
        if bar is not None:
            bar.close()
    trajs = run.results()
    wall = before + time.perf_counter() - start
    baseline = setup.baseline_accuracy
    target = cell.protocol.target(baseline)
    rows, traj_rows = [], []
    for t in trajs:
        crossing, cstep = _crossing(t, target)
        if crossing is None:       # never fell below the target: report the final rate
            crossing, cstep = t.rates[-1], len(t.rates) - 1
        rows.append(score_row(cell, t, crossing, cstep, baseline, setup.device, wall, info=setup.info))
        traj_rows += trajectory_rows(cell, t)
    return CellResult(cell, rows, traj_rows, wall)


def _show(bar, run: CellPruning) -> None:
    """``bar`` at the current loop's step: its trajectories still running and the range of the
    accuracies of its latest evaluation (with retraining, which metric runs)."""
    pr = run.pruning
    if pr.step_no < bar.n:                 # the next metric's loop has started
        bar.reset()
    bar.update(pr.step_no - bar.n)
    accs = pr.last_accuracies
    metric = f"metric {run.index + 1}/{len(run.groups)}, " if run.retraining else ""
    bar.set_postfix_str(f"{metric}{len(pr.pending)}/{len(pr.active)} running, "
                        f"acc {min(accs):.1f}-{max(accs):.1f} %")
