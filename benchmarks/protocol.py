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
import functools
import math
import sys
import time
from types import SimpleNamespace

import torch
from torch.nn import functional as F

from prunetax.benchmarks.cell import REFERENCES, Cell, CellResult, Protocol
from prunetax.metrics import evaluate_metrics
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.expr import parse_metric
from prunetax.taxonomy.spec import MetricSpec

_ROWS_PER_PASS = 8192                 # images per batched forward on CPU (x4 on GPU)
_WEIGHT_GRAD_BUDGET = 1 << 30          # bytes of per-image weight gradients per chunk
# A shared saliency pass computes each of its rows as the unshared pass does, with BLAS's rules
# as measured for MKL (docs/performance.md, "Cheaper cells"): a row of a matrix product of at
# least 12 rows in whole blocks of 4 comes out the same in any product; the last M % 4 rows (the
# block's tail, float64) depend on the tail alone; float32 products of fewer than 12 rows differ.
# So a shared pass keeps every image pass at least _SAME_PRODUCT_ROWS rows long (or is the
# unshared pass), its row count congruent to the unshared one modulo _BLAS_BLOCK, and the
# unshared pass's last trajectory on its own last row.
_SAME_PRODUCT_ROWS = 16
_BLAS_BLOCK = 4
_TEST_ORDER_SEED = 0x7E57_0DE5         # the sequential test's order of the test images: this + seed
_TEST_CHUNK = 250                      # the sequential test's first chunk, in images (at most)
_WORK = ("saliency", "oracle", "test")  # what the cost counters count


class Trajectory:
    """One metric pruning one copy of the network (its keep mask lives in the cell's tensor)."""

    def __init__(self, name: str, metric, ran_as: str):
        self.name, self.metric, self.ran_as = name, metric, ran_as
        self.run_metric = ran_as if ran_as in REFERENCES else parse_metric(ran_as)
        self.removed: list[int] = []              # units removed, in order
        self.step_end: list[int] = [0]            # len(removed) after each step
        self.rates: list[tuple] = [(0.0, 0.0, 0.0)]  # (conv %, channels %, MACs %) after step i
        self.accuracy: dict[int, float] = {}      # step -> test accuracy on the whole test set
        self.tested: dict[int, tuple] = {}        # step -> (correct, images) its test pass read
        self.early: dict[int, bool] = {}          # step decided on part of the test set -> above the target?
        self.done = False
        self.crossed = False
        self.order: torch.Tensor | None = None    # one-shot: each unit's rank on the baseline

    def state_dict(self) -> dict:
        """Its progress (copies of the lists, which the run goes on extending; ``order`` is
        never changed in place, so it is shared)."""
        return {"ran_as": self.ran_as, "removed": list(self.removed), "step_end": list(self.step_end),
                "rates": list(self.rates), "accuracy": dict(self.accuracy), "done": self.done,
                "crossed": self.crossed, "order": self.order, "tested": dict(self.tested),
                "early": dict(self.early)}

    def load_state_dict(self, state: dict, device="cpu") -> None:
        """Continue from ``state`` (:meth:`state_dict` of the same metric); ``order`` goes to ``device``."""
        if state["ran_as"] != self.ran_as:
            raise PrunetaxError(f"the saved trajectory is of {state['ran_as']!r}, not {self.ran_as!r}")
        self.removed, self.step_end = [int(u) for u in state["removed"]], [int(e) for e in state["step_end"]]
        self.rates = [tuple(r) for r in state["rates"]]
        self.accuracy = dict(state["accuracy"])
        self.tested = {int(k): (int(v[0]), int(v[1])) for k, v in state.get("tested", {}).items()}
        self.early = {int(k): bool(v) for k, v in state.get("early", {}).items()}   # absent in older states
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
    """The passes of one network: saliency passes, test passes, the oracle's losses, and counts.

    ``share``: trajectories with equal keep masks share one saliency pass (per signal group) and
    one test pass (``keys`` of :meth:`unit_saliencies` and :meth:`test` say which masks are
    equal); the results are those of one pass per trajectory, to the bit on a CPU. ``cost``:
    image-passes run (``saliency_images``, ``oracle_images``, ``test_images``) and what they
    would have been without sharing or early stops (``*_unshared``, ``test_images_exhaustive``);
    :meth:`work` adds the same weighted by each mask's MACs.
    """

    def __init__(self, model, structure, masked, data, protocol: Protocol, seed: int, device, evaluator=None,
                 share: bool = True):
        self.model, self.st, self.masked, self.p = model, structure, masked, protocol
        self.device, self.seed, self.share = device, seed, bool(share)
        self.cost = {f"{w}_images{x}": 0 for w in _WORK for x in ("", "_unshared")}
        self.cost["test_images_exhaustive"] = self.cost.pop("test_images_unshared")
        self.cost["test_decisions_reversed"] = 0           # early decisions a completed pass overturned
        self._macs = torch.zeros(2 * len(_WORK), dtype=torch.float64, device=device)   # MAC-weighted, see work()
        self._seq = None                                   # the sequential test's set-up, made on first use
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
        return (100.0 * self._masked_counts(keep, self.test_x, self.test_y) / len(self.test_y)).tolist()

    # -- test passes: shared, sequential -----------------------------------------------------------
    def test(self, keep: torch.Tensor, target: float | None, keys=None, sequential: bool = False,
             start=None) -> list[tuple]:
        """Test each mask row of ``keep``: a list of ``(correct, images, above, accuracy)``.

        ``sequential`` False: every row on the whole test set (:meth:`accuracy`). True: on the
        test images in the sequential order, a chunk at a time, until its side of ``target`` is
        decided (``above``: accuracy >= target; ``accuracy`` None when fewer than all images were
        read); ``target`` None reads them all. ``start``: one ``(correct, images)`` per row to go
        on from (a row stopped early). ``keys``: one hashable per row, equal for equal masks:
        with ``share`` each distinct row is tested once."""
        K = len(keep)
        first: dict = {}
        slot = list(range(K)) if keys is None or not self.share else [first.setdefault(k, len(first)) for k in keys]
        R = max(slot) + 1 if slot else 0
        rows = [slot.index(j) for j in range(R)]
        sub = keep if R == K else keep[torch.tensor(rows, device=keep.device)]
        N = len(self.test_y)
        if not sequential:
            accs = self.accuracy(sub)
            self._count("test", sub, N, unshared=keep)
            got = [(_count_of(a, N), N, None if target is None else a >= target, a) for a in accs]
        else:
            got = self._sequential(sub, target, None if start is None else [start[i] for i in rows])
            before = [0] * R if start is None else [start[i][1] for i in rows]
            self._count("test", sub, [g[1] - b for g, b in zip(got, before)], unshared=keep,
                        unshared_images=0 if start is not None else N)
        return [got[j] for j in slot]

    def _order(self):
        """The sequential test's set-up: the test images in a fixed random order (drawn from the
        seed), the chunks' ends (first chunk ``_TEST_CHUNK`` images at most, then half the
        images read so far, the last at least as long as the first) and log(chunks / delta)."""
        if self._seq is None:
            N = len(self.test_y)
            gen = torch.Generator().manual_seed(_TEST_ORDER_SEED + self.seed)
            order = torch.randperm(N, generator=gen, device="cpu").to(self.test_y.device)
            ends = _chunk_ends(N)
            delta = self.p.sequential_delta
            self._seq = SimpleNamespace(x=self.test_x[order], y=self.test_y[order], ends=ends, cstar={},
                                        log_bound=math.log(len(ends) / delta) if delta > 0 else None)
        return self._seq

    def _cstar(self, target: float) -> int:
        """The fewest correct images whose accuracy (as :meth:`accuracy` computes it from the
        count) is at least ``target``; N + 1 if none."""
        seq, N = self._order(), len(self.test_y)
        if target not in seq.cstar:
            if self.batched_eval:              # float32 on the device, as the batched pass computes it
                vals = 100.0 * torch.arange(N + 1, dtype=torch.get_default_dtype(), device=self.device) / N
                seq.cstar[target] = int((vals < target).sum().item())
            else:
                lo, hi = 0, N + 1              # 100.0 * c / N is non-decreasing in c
                while lo < hi:
                    mid = (lo + hi) // 2
                    if 100.0 * mid / N >= target:
                        hi = mid
                    else:
                        lo = mid + 1
                seq.cstar[target] = lo
        return seq.cstar[target]

    @torch.no_grad()
    def _sequential(self, keep: torch.Tensor, target: float | None, start=None) -> list[tuple]:
        """:meth:`test` of distinct rows, sequentially (see docs/protocol.md, "Sequential test")."""
        seq, N, K = self._order(), len(self.test_y), len(keep)
        c = [0] * K if start is None else [int(s[0]) for s in start]
        n = [0] * K if start is None else [int(s[1]) for s in start]
        cstar = None if target is None else self._cstar(target)
        side = [None if cstar is None else _decide(c[j], n[j], N, cstar, seq.log_bound) for j in range(K)]
        nets: dict[int, torch.nn.Module] = {}
        lo = 0
        for hi in seq.ends:
            live = [j for j in range(K) if side[j] is None and n[j] == lo]
            if live:
                if self.batched_eval:
                    got = self._masked_counts(keep[torch.tensor(live, device=keep.device)], seq.x[lo:hi],
                                              seq.y[lo:hi]).tolist()
                else:
                    got = [self._slim_count(nets, keep, j, lo, hi) for j in live]
                for j, cnt in zip(live, got):
                    c[j] += int(cnt)
                    n[j] = hi
                    if cstar is not None:
                        side[j] = _decide(c[j], n[j], N, cstar, seq.log_bound)
            lo = hi
        full = [j for j in range(K) if n[j] == N]
        accs = dict(zip(full, self._accuracy_of([c[j] for j in full])))
        return [(c[j], n[j], side[j] if cstar is not None else None, accs.get(j)) for j in range(K)]

    def _slim_count(self, nets: dict, keep: torch.Tensor, j: int, lo: int, hi: int) -> int:
        """Correct predictions of row j's slimmed network (built once per call) on sequential
        images lo:hi, in batches of at most 1,000 as ``training.evaluate`` (of equal sizes: no
        small last batch, whose products a BLAS may round differently)."""
        from prunetax.metrics import slim

        if j not in nets:
            nets[j] = slim(self.model, self.masked.structure, keep[j].cpu()).eval()
        seq, correct = self._order(), 0
        nb = -(-(hi - lo) // 1000)
        cuts = [lo + (i * (hi - lo)) // nb for i in range(nb + 1)]
        for a, b in zip(cuts, cuts[1:]):
            correct += int((nets[j](seq.x[a:b]).argmax(1) == seq.y[a:b]).sum().item())
        return correct

    def _masked_counts(self, keep: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Correct predictions [K] (float, on the device) of the masked network under each row of
        ``keep`` on images ``x`` with labels ``y``, K masks per batched pass."""
        T = len(y)
        out = [torch.zeros(0, device=self.device)]
        per_pass = max(1, self.rows // T)
        for k0 in range(0, len(keep), per_pass):
            ks = keep[k0:k0 + per_pass]
            K = len(ks)
            correct = torch.zeros(K, device=self.device)
            step = max(1, self.rows // K)
            self.masked.set_keep(ks)
            for i in range(0, T, step):
                xb, yb = x[i:i + step], y[i:i + step]
                pred = self.masked(xb.repeat(K, *([1] * (xb.dim() - 1)))).argmax(1).view(K, -1)
                correct += (pred == yb[None]).sum(1)
            out.append(correct)
        return torch.cat(out)

    def _accuracy_of(self, counts: list[int]) -> list[float]:
        """Accuracies (%) of whole-test-set counts, computed as :meth:`accuracy` computes them."""
        N = len(self.test_y)
        if not counts:
            return []
        if self.batched_eval:
            return (100.0 * torch.tensor(counts, dtype=torch.get_default_dtype(), device=self.device) / N).tolist()
        return [100.0 * c / N for c in counts]

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
        self._count("oracle", keep, len(y))
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

    def unit_saliencies(self, metrics: list, keep: torch.Tensor, x, y, keys=None) -> torch.Tensor:
        """Unit saliency [K, U] of trajectory k under metric k, one signal pass per metric group.

        ``keys``: one hashable per row, equal for equal masks (None: every row its own). With
        ``share``, the rows of a group's pass with equal keys are computed once."""
        K = len(metrics)
        out = torch.empty(K, self.U, dtype=torch.float64, device=self.device)
        groups: dict[tuple, list[int]] = {}
        for k, m in enumerate(metrics):
            groups.setdefault(_metric_key(m), []).append(k)
        cap = self.p.max_trajectories or K            # trajectories per pass: bounds the memory
        chunks = [g[c:c + cap] for g in groups.values() for c in range(0, len(g), cap)]
        for idx in chunks:
            group = list(dict.fromkeys(metrics[k] for k in idx))
            if self.share and keys is not None and len(set(keys[k] for k in idx)) < len(idx):
                self._shared_pass(group, idx, metrics, keep, x, y, [keys[k] for k in idx], out)
            else:
                self._unshared_pass(group, idx, metrics, keep, x, y, out)
        return out

    def _shared_pass(self, group, idx, metrics, keep, x, y, keys, out) -> None:
        """The pass of chunk ``idx`` of a signal group with one row per distinct mask (``keys``).

        Each row is computed as in the unshared pass: the images go through in the unshared
        pass's split (``images_per_pass`` of len(idx) rows), every image pass has at least
        ``_SAME_PRODUCT_ROWS`` rows, the row count is that of the unshared pass modulo
        ``_BLAS_BLOCK`` (repeated masks fill it), and the chunk's last trajectory has the last
        row to itself; when that leaves nothing to save, the chunk runs unshared."""
        from prunetax.metrics.engine import MetricEvaluator

        dev = self.device

        def evaluator(rows):
            return MetricEvaluator(self.masked, self.st, group, keep[torch.tensor(rows, device=dev)],
                                   weight_grad_bytes=_WEIGHT_GRAD_BUDGET)
        first: dict = {}
        slot = [first.setdefault(key, len(first)) for key in keys]           # row of each trajectory
        rows = [idx[slot.index(j)] for j in range(len(first))]                # its first trajectory
        ev = evaluator(rows)
        n, K = len(y), len(idx)
        if ev.needs_images:
            unshared = copy.copy(ev)                                          # only asked its split
            unshared.K = K
            per = unshared.images_per_pass(n)
            smallest = min(per, n % per or per)                               # images of the last pass
            first = {}
            slot = [first.setdefault(key, len(first)) for key in keys[:-1]]
            rows = [idx[slot.index(j)] for j in range(len(first))]
            need = max(len(rows) + 1, -(-_SAME_PRODUCT_ROWS // smallest))
            R = need + (K - need) % _BLAS_BLOCK
            if R >= K:                                                        # nothing to save
                self._unshared_pass(group, idx, metrics, keep, x, y, out)
                return
            rows += [rows[0]] * (R - 1 - len(rows)) + [idx[-1]]
            slot.append(R - 1)
            ev = evaluator(rows)
            for i in range(0, n, per):
                ev.update(x[i:i + per], y[i:i + per])
            self._count("saliency", ev.keep, n, unshared=keep[idx])
        else:
            ev.update()
        values = ev.compute()
        # trajectory idx[i] reads row slot[i] under its own metric; row_unit_saliency takes one
        # metric per row, so a row's trajectories are read in layers (the i-th of each row)
        by_row: dict[int, list[int]] = {}
        for i, j in enumerate(slot):
            by_row.setdefault(j, []).append(idx[i])
        for layer in range(max(len(ks) for ks in by_row.values())):
            picked = {j: ks[layer] for j, ks in by_row.items() if layer < len(ks)}
            sal = values.row_unit_saliency([metrics[picked.get(j, idx[0])] for j in range(len(rows))])
            out[torch.tensor(list(picked.values()), device=dev)] = \
                sal[torch.tensor(list(picked), device=dev)].to(out.dtype)

    def _unshared_pass(self, group, idx, metrics, keep, x, y, out) -> None:
        """The pass of chunk ``idx`` of a signal group, one row per trajectory."""
        # the engine sets the masks, repeats the images per trajectory, splits them into passes
        # that bound the per-image weight gradients, and skips the image pass for weight values
        read = []
        rows = keep[idx]
        values = evaluate_metrics(self.masked, self.st, group, lambda: read.append(1) or [(x, y)], rows,
                                  weight_grad_bytes=_WEIGHT_GRAD_BUDGET)
        self._take(values, idx=idx, metrics=metrics, out=out)
        if read:
            self._count("saliency", rows, len(y))

    # -- counts of work -------------------------------------------------------------------------
    def _count(self, kind: str, keep: torch.Tensor, images, unshared: torch.Tensor | None = None,
               unshared_images=None) -> None:
        """Count image-passes of ``kind``: ``images`` (an int, or one per row) through each row
        of ``keep``, and, without sharing or early stops, ``unshared_images`` (default
        ``images``) through each row of ``unshared`` (default ``keep``). MAC-weighted on the
        device (no host transfer)."""
        w = _WORK.index(kind)
        unshared = keep if unshared is None else unshared
        unshared_images = images if unshared_images is None else unshared_images
        names = (f"{kind}_images", "test_images_exhaustive" if kind == "test" else f"{kind}_images_unshared")
        for slot, (rows, imgs) in enumerate(((keep, images), (unshared, unshared_images))):
            if len(rows) == 0:
                continue
            macs = self.st.counts(rows)[:, 2]
            if isinstance(imgs, int):
                self.cost[names[slot]] += imgs * len(rows)
                self._macs[2 * w + slot] += macs.sum() * imgs
            else:
                self.cost[names[slot]] += sum(imgs)
                self._macs[2 * w + slot] += (macs * torch.tensor(imgs, dtype=macs.dtype, device=macs.device)).sum()

    def work(self) -> dict:
        """``cost`` and the MAC-weighted image-passes (``<kind>_macs``: images x the MACs of the
        mask each went through; one host transfer)."""
        macs = self._macs.tolist()
        out = dict(self.cost)
        for w, kind in enumerate(_WORK):
            out[f"{kind}_macs"] = macs[2 * w]
            out[f"{kind}_macs_exhaustive" if kind == "test" else f"{kind}_macs_unshared"] = macs[2 * w + 1]
        return out

    def work_state(self) -> dict:
        return {"cost": dict(self.cost), "macs": self._macs.clone()}

    def load_work_state(self, state: dict | None) -> None:
        if state is not None:
            self.cost.update({k: int(v) for k, v in state["cost"].items()})
            self._macs = state["macs"].to(self.device, torch.float64, copy=True)

    def _take(self, values, idx, metrics, out) -> None:
        """Unit saliencies of the group's rows (``values``: the engine's MetricValues), each
        trajectory under its own metric."""
        rows = values.row_unit_saliency([metrics[k] for k in idx])
        out[torch.tensor(idx, device=out.device)] = rows.to(out.device)


def _count_of(accuracy: float, N: int) -> int:
    """The correct images behind a whole-test-set accuracy (%)."""
    return int(round(accuracy * N / 100.0))


def _chunk_ends(N: int) -> list[int]:
    """The sequential test's checks, in images read: the first chunk ``_TEST_CHUNK`` images at
    most, then half the images read so far, the last chunk at least as long as the first."""
    first = max(1, min(N, _TEST_CHUNK, max(16, -(-N // 40))))
    ends, b = [], 0
    while b < N:
        b += max(first, b // 2)
        if N - b < first:
            b = N
        ends.append(b)
    return ends


@functools.lru_cache(maxsize=4096)
def _hypergeometric_cuts(n: int, N: int, cstar: int, log_bound: float) -> tuple[int, int]:
    """``(above, below)``: after ``n`` of ``N`` test images read in a uniformly random order, the
    fewest right ones, ``above``, with P(X >= above) <= exp(-log_bound) when the whole set holds
    ``cstar - 1`` right images, and the most, ``below``, with P(X <= below) <= exp(-log_bound)
    when it holds ``cstar`` (X hypergeometric: n draws without replacement from N, of which so
    many are right). ``n + 1`` / ``-1`` where no count is that unlikely. Exact tails, summed in
    float64 from log-gamma (``tests/test_protocol.py`` checks them against rational arithmetic).
    ``1 <= cstar <= N`` and ``0 < n < N``."""
    def log_pmf(K):                     # x = 0..n; impossible counts get -inf
        x = torch.arange(n + 1, dtype=torch.float64)
        ok = (x <= K) & (n - x <= N - K)
        xs = torch.where(ok, x, torch.zeros(()))
        lg = torch.lgamma

        def log_choose(a, b):
            return lg(torch.as_tensor(a + 1.0, dtype=torch.float64)) - lg(b + 1.0) - lg(a - b + 1.0)
        out = log_choose(K, xs) + log_choose(N - K, n - xs) - log_choose(N, torch.tensor(float(n)))
        return torch.where(ok, out, torch.full((), -math.inf, dtype=torch.float64))

    log_alpha = -log_bound
    upper = torch.logcumsumexp(log_pmf(cstar - 1).flip(0), 0).flip(0)   # log P(X >= x), K = cstar - 1
    hit = (upper <= log_alpha).nonzero()
    above = int(hit[0]) if len(hit) else n + 1
    lower = torch.logcumsumexp(log_pmf(cstar), 0)                        # log P(X <= x), K = cstar
    hit = (lower <= log_alpha).nonzero()
    below = int(hit[-1]) if len(hit) else -1
    return above, below


def _decide(c: int, n: int, N: int, cstar: int, log_bound: float | None) -> bool | None:
    """Whether a mask with ``c`` correct among the first ``n`` of ``N`` test images is above the
    target (its whole-set count reaches ``cstar``): True, False, or None while undecided.

    Certain: ``c >= cstar`` (above whatever the rest gives) or ``c + N - n < cstar`` (below even
    if all the rest are right). With ``log_bound`` = log(checks / delta), also when the images
    read make the other side unlikely: under a uniformly random order, c is hypergeometric, so
    deciding "above" when c reaches ``_hypergeometric_cuts``'s first count (exact tail at
    ``cstar - 1`` right, the most a mask below the target has) is wrong with probability at most
    delta / checks at each check, delta over all of them; "below" the same at ``cstar``."""
    if c >= cstar:
        return True
    if c + (N - n) < cstar:
        return False
    if log_bound is None or n == 0:
        return None
    above, below = _hypergeometric_cuts(n, N, cstar, float(log_bound))
    if c >= above:
        return True
    if c <= below:
        return False
    return None


def _crossing(traj: Trajectory, target: float):
    """Interpolated (conv %, channels %, MACs %) where accuracy crosses ``target``, and the step.

    Steps decided early (``traj.early``) count on their side; the first step below and the
    step before it must have whole-test-set accuracies (``_settle`` completes them)."""
    prev = None
    for s in sorted(set(traj.accuracy) | set(traj.early)):
        if not _above(traj, s, target):
            if s not in traj.accuracy or (prev is not None and prev not in traj.accuracy):
                raise PrunetaxError(f"step {s} or the one before was tested on part of the test set only")
            a = traj.accuracy[s]
            if prev is None:
                return traj.rates[s], s
            a0, r0, r1 = traj.accuracy[prev], traj.rates[prev], traj.rates[s]
            t = (a0 - target) / (a0 - a) if a0 != a else 1.0
            return tuple(x0 + t * (x1 - x0) for x0, x1 in zip(r0, r1)), s
        prev = s
    return None, None


def _above(t: Trajectory, s: int, target: float) -> bool:
    """Whether step ``s`` (tested) is at or above the target: its accuracy, or its early decision."""
    return t.accuracy[s] >= target if s in t.accuracy else t.early[s]


def _record(t: Trajectory, s: int, got: tuple) -> None:
    """Keep the outcome ``(correct, images, above, accuracy)`` of step ``s``'s test pass."""
    correct, images, above, accuracy = got
    t.tested[s] = (int(correct), int(images))
    if accuracy is None:
        t.early[s] = bool(above)
    else:
        t.accuracy[s] = accuracy
        t.early.pop(s, None)


def _mask(pr: "_Pruner", t: Trajectory, steps: list[int]) -> torch.Tensor:
    """The keep masks of ``t`` after each of ``steps``, [len(steps), U]."""
    masks = torch.ones(len(steps), pr.U, dtype=torch.bool, device=pr.device)
    for row, s in enumerate(steps):
        masks[row, t.removed[: t.step_end[s]]] = False
    return masks


def _settle(pr: "_Pruner", trajs: list[Trajectory], target: float) -> None:
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
                if not _above(t, s, target):
                    need.update(steps[max(0, i - 1):i + 1])
                    break
            todo += [(t, s) for s in sorted(need) if s in t.early]
        if not todo:
            return
        masks = torch.cat([_mask(pr, t, [s]) for t, s in todo])
        got = pr.test(masks, None, sequential=True, start=[t.tested[s] for t, s in todo])
        for (t, s), g in zip(todo, got):
            if (g[3] >= target) != t.early[s]:
                pr.cost["test_decisions_reversed"] += 1
            _record(t, s, g)


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
        # retraining changes the network after each step: a step's accuracy could not be
        # completed later, so the retraining modes test every step on the whole test set
        self.sequential = self.p.sequential_test and self.p.mode == "none"
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
                "trajectories": [t.state_dict() for t in self.active], "work": self.pr.work_state()}

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
        self.pr.load_work_state(state.get("work"))                  # absent in older states

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
                                     keep[[k for _, k in need_sal]], x, y, self._keys([k for _, k in need_sal]))
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

    def _keys(self, ks: list[int]) -> list | None:
        """One key per trajectory of ``ks``, equal for equal keep masks (its removed units; the
        host knows them, so no device transfer), or None when masks are not shared."""
        return [frozenset(self.active[k].removed) for k in ks] if self.pr.share else None

    def _measure(self, P: torch.Tensor) -> None:
        """Rates after the step; test accuracy on the schedule (every ``stride`` steps, and for a
        trajectory with nothing left to remove); a trajectory below the target is refined inside
        its bracket and, like one with nothing left, leaves ``pending``. With the sequential
        test a mask is tested until its side of the target is decided, and what the scores read
        is completed on the whole test set (``_settle``)."""
        pr, active, pending, step = self.pr, self.active, self.pending, self.step_no
        rates, left = pr.rates(self.keep[P], with_left=True)
        for k, r in zip(pending, rates):
            active[k].rates.append(r)
        exhausted = {k for k, more in zip(pending, left) if not more}
        due = [k for k in pending if step % self.stride == 0 or k in exhausted]
        if due:
            got = pr.test(self.keep[due], self.target, self._keys(due), self.sequential)
            self.last_accuracies = [g[3] if g[3] is not None else 100.0 * g[0] / max(1, g[1]) for g in got]
            for k, g in zip(due, got):
                _record(active[k], step, g)
        leaving = []
        for k in list(pending):
            t = active[k]
            if (step in t.accuracy or step in t.early) and not _above(t, step, self.target):
                if self.stride > 1:
                    _refine(pr, t, step, self.stride, self.target, self.sequential)
                t.crossed, t.done = True, True
            elif k in exhausted:
                t.done = True
            else:
                continue
            pending.remove(k)
            leaving.append(t)
        if leaving and self.sequential:
            _settle(pr, leaving, self.target)

    def results(self) -> list[Trajectory]:
        """One trajectory per metric asked for; equivalent metrics share the run's trajectory."""
        by_name = {t.ran_as: t for t in self.active}
        for t in self.trajectories:
            src = by_name[t.ran_as]
            if src is not t:
                t.removed, t.step_end, t.rates = src.removed, src.step_end, src.rates
                t.accuracy, t.crossed, t.done = src.accuracy, src.crossed, True
                t.tested, t.early = src.tested, src.early
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
                 baseline_accuracy: float, progress=None, evaluator=None, share: bool = True):
        self.share = share
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
        self._completed_work: dict = {}             # and their work (_Pruner.work)
        self._start(0)

    @classmethod
    def of(cls, setup, progress=None, evaluator=None, share: bool = True) -> "CellPruning":
        """The pruning of a prepared cell (``prunetax.benchmarks.setup.prepare_cell``): its metrics
        and protocol, on its network, data, seed, device and baseline accuracy."""
        c = setup.cell
        return cls(setup.model, setup.structure, setup.masked, setup.data, c.metrics, c.protocol, c.seed,
                   setup.device, setup.baseline_accuracy, progress, evaluator, share)

    def _start(self, index: int) -> None:
        """Set up group ``index``'s loop (with retraining: on a fresh copy of the network)."""
        self.index = index
        if self.retraining:
            self.hook = Retraining(self.model, self.masked, self.data, self.p, self.seed, index,
                                   self.p.target(self.baseline))
            pr = _Pruner(self.hook.net.eval(), self.structure, self.hook.masked, self.data, self.p, self.seed,
                         self.device, self.evaluator, self.share)
        else:
            self.hook = None
            pr = _Pruner(self.model, self.structure, self.masked, self.data, self.p, self.seed, self.device,
                         self.evaluator, self.share)
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
            self._completed_work = _add(self._completed_work, self.pruning.pr.work())
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
        """The image-passes of every loop so far (``_Pruner.work``): run, and without sharing or
        early stops (``test_images_exhaustive``: every test on the whole test set)."""
        return _add(self._completed_work, self.pruning.pr.work())

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
        completed = [t for g in self.groups[:index] for t in resolve_metrics(g, self.structure)]
        if len(completed) != len(state["completed"]):
            raise PrunetaxError("the saved run finished other metrics")
        for t, s in zip(completed, state["completed"]):
            t.load_state_dict(s, self.device)
        self.completed, self._completed_state = completed, list(state["completed"])
        self._completed_work = dict(state.get("completed_work", {}))    # absent in older states
        self._start(index)
        if state["pruning"] is not None:
            self.pruning.load_state_dict(state["pruning"])
            if self.hook is not None:
                self.hook.load_state_dict(state["retraining"])


def prune(model, structure, masked, data, metrics_texts, protocol: Protocol, seed: int, device,
          baseline_accuracy: float, progress=None, evaluator=None, share: bool = True) -> list[Trajectory]:
    """Run every metric's trajectory to its crossing; returns the trajectories (one per metric).

    Mode ``none``: one :class:`Pruning` of all metrics at once. ``characterise`` / ``retrain``:
    one :class:`Pruning` per metric (in order), each on its own copy of the network with a
    :class:`Retraining` hook and the ``exact`` schedule.
    ``evaluator``: ``"masked"`` (K masks per batched pass; the default on GPU), ``"slim"`` (each
    mask's slimmed network; the default on CPU) or None. Both give the same accuracies.
    ``share``: trajectories with equal masks share their saliency and test passes (the same
    results; False runs one of each per trajectory).
    :func:`prune_cell` runs it on a :class:`~prunetax.benchmarks.setup.CellSetup`; both are
    :meth:`CellPruning.run`.
    """
    return CellPruning(model, structure, masked, data, metrics_texts, protocol, seed, device, baseline_accuracy,
                       progress, evaluator, share).run()


def prune_cell(setup, progress=None, evaluator=None, share: bool = True) -> list[Trajectory]:
    """:func:`prune` on a prepared cell (``prunetax.benchmarks.setup.prepare_cell``): its metrics
    and protocol, on its network, data, seed, device and baseline accuracy."""
    return CellPruning.of(setup, progress, evaluator, share).run()


def _add(a: dict, b: dict) -> dict:
    """Two work dicts (``_Pruner.work``) added key by key."""
    return {k: a.get(k, 0) + b.get(k, 0) for k in dict.fromkeys(list(a) + list(b))}


def _refine(pr: _Pruner, t: Trajectory, step: int, stride: int, target: float, sequential: bool = False) -> None:
    """Test every step inside (step - stride, step): on a CPU left to right up to the first one
    below the target, on a GPU the whole bracket in one batched pass."""
    lo = max(0, step - stride)
    inner = [s for s in range(lo + 1, step) if s not in t.accuracy and s not in t.early]
    if not inner:
        return
    masks = _mask(pr, t, inner)
    if not pr.batched_eval:   # one row at a time anyway: scan left to right, stop at the first crossing
        for row, s in enumerate(inner):
            _record(t, s, pr.test(masks[row:row + 1], target, sequential=sequential)[0])
            if not _above(t, s, target):
                return
        return
    for s, g in zip(inner, pr.test(masks, target, sequential=sequential)):   # GPU: one batched pass
        _record(t, s, g)


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
    ``progress``: True: the baseline's training bar, then a bar over the pruning steps
    (trajectories still running, the accuracies of the latest evaluation); ``"lines"`` (output to
    a file): the same facts as one plain line on stderr at most every ``PROGRESS_LINE_EVERY``
    seconds; False: nothing.

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
    from prunetax.benchmarks.setup import Env, prepare_cell

    start = time.perf_counter()
    setup = prepare_cell(cell, Env.of(env, device=device, cache_dir=cache_dir, data_root=data_root),
                         progress=progress is True)
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
    bar, lines = None, _ProgressLines(cell, start) if progress == "lines" else None
    if progress is True:
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
                if lines is not None:
                    lines.show(run, before)
    finally:
        if bar is not None:
            bar.close()
    wall = before + time.perf_counter() - start
    rows, traj_rows = cell_rows(setup, run, wall)
    return CellResult(cell, rows, traj_rows, wall)


def cell_rows(setup, run: CellPruning, wall: float) -> tuple[list[dict], list[dict]]:
    """The scores rows (one per metric) and trajectories rows of a finished ``run`` of the
    prepared cell ``setup`` (``prunetax.benchmarks.results``), ``wall`` seconds long."""
    from prunetax.benchmarks.results import score_row, trajectory_rows

    cell, baseline = setup.cell, setup.baseline_accuracy
    target = cell.protocol.target(baseline)
    work = run.work()
    rows, traj_rows = [], []
    for t in run.results():
        crossing, cstep = _crossing(t, target)
        if crossing is None:       # never fell below the target: report the final rate
            crossing, cstep = t.rates[-1], len(t.rates) - 1
        rows.append(score_row(cell, t, crossing, cstep, baseline, setup.device, wall, info=setup.info, work=work))
        traj_rows += trajectory_rows(cell, t)
    return rows, traj_rows


PROGRESS_LINE_EVERY = 60.0   # seconds between two plain progress lines of a cell


class _ProgressLines:
    """A cell's progress as plain lines (a log file, not a terminal): at most one a minute."""

    def __init__(self, cell: Cell, start: float):
        self.cell, self.start, self.last = cell, start, start

    def show(self, run: "CellPruning", before: float) -> None:
        now = time.perf_counter()
        if now - self.last < PROGRESS_LINE_EVERY:
            return
        self.last = now
        print(f"{self.cell.id}: step {run.pruning.step_no}, {_status(run, 'trajectories running')}, "
              f"{(before + now - self.start) / 60:.1f} min", file=sys.stderr, flush=True)


def _status(run: CellPruning, running: str = "running") -> str:
    """What a cell's progress shows: with retraining, which metric runs; the trajectories still
    running; the range of the accuracies of the latest evaluation."""
    pr = run.pruning
    accs = pr.last_accuracies
    metric = f"metric {run.index + 1}/{len(run.groups)}, " if run.retraining else ""
    return f"{metric}{len(pr.pending)}/{len(pr.active)} {running}, acc {min(accs):.1f}-{max(accs):.1f} %"


def _show(bar, run: CellPruning) -> None:
    """``bar`` at the current loop's step: its trajectories still running and the range of the
    accuracies of its latest evaluation (with retraining, which metric runs)."""
    pr = run.pruning
    if pr.step_no < bar.n:                 # the next metric's loop has started
        bar.reset()
    bar.update(pr.step_no - bar.n)
    bar.set_postfix_str(_status(run))
