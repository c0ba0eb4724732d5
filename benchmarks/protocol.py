"""The pruning protocol: K metrics prune one trained network at once, one unit per step.

Every trajectory carries its own keep mask (a row of a ``[K, units]`` tensor). At each step the
saliency images (``saliency_batches x batch_size`` eval images, reshuffled) go through the
masked network once for all trajectories of a signal group, each trajectory's metric picks the
argmin unit among the removable ones, and the test accuracy is measured on the schedule:
``exact`` after every step; ``fast`` every ``eval_every`` steps, then every step inside the
bracket where accuracy fell below the target. Without retraining the removal sequence does not
depend on accuracy, so ``fast`` re-evaluates the bracket's masks in one batched pass.
See docs/protocol.md.
"""
from __future__ import annotations

import math
import time

import torch
from torch.nn import functional as F

from prunetax.benchmarks.cell import REFERENCES, Cell, CellResult, Protocol
from prunetax.metrics.engine import Accumulator, finalize, row_unit_saliency
from prunetax.metrics.signals import Signals, collect
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.expr import MetricExpr, parse_metric
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
        self.test_x, self.test_y = data.test_x, data.test_y
        if protocol.test_images:
            self.test_x, self.test_y = self.test_x[: protocol.test_images], self.test_y[: protocol.test_images]
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
        self.max_layer_weights = max(L.out_channels * L.in_channels * L.kernel // L.groups
                                     for L in structure.layers.values())

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
            uniq = list(dict.fromkeys(metrics[k] for k in idx))
            acc = Accumulator(self.masked.graph_module, self.st, uniq, keep[idx])
            self.masked.set_keep(acc.keep)
            G, N = len(idx), len(y)
            nd = acc.needs
            if not (nd.act or nd.act_in or nd.weight or nd.bn or nd.grad or nd.lm):
                acc.add(Signals(), 1)              # weight values alone: no pass over images
                self._take(acc, values=finalize(acc), idx=idx, metrics=metrics, out=out)
                continue
            chunk = N
            if acc.needs.weight:
                chunk = max(1, min(N, _WEIGHT_GRAD_BUDGET // (G * self.max_layer_weights * 4 * 6)))
            for i in range(0, N, chunk):
                xb, yb = x[i:i + chunk], y[i:i + chunk]
                rep = (G, *([1] * (xb.dim() - 1)))
                acc.add(collect(self.masked, xb.repeat(rep), yb.repeat(G), acc.needs), len(yb))
            self._take(acc, values=finalize(acc), idx=idx, metrics=metrics, out=out)
        return out

    def _take(self, acc, values, idx, metrics, out) -> None:
        """Unit saliencies of the group's rows, each trajectory under its own metric."""
        rows = row_unit_saliency(acc, values, [metrics[k] for k in idx])
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


def prune(model, structure, masked, data, metrics_texts, protocol: Protocol, seed: int, device,
          baseline_accuracy: float, progress=None, retrain=None, evaluator=None) -> list[Trajectory]:
    """Run every metric's trajectory to its crossing; returns the trajectories.

    ``retrain(keep_row)`` (used by the characterise/retrain modes) runs after every step.
    ``evaluator``: ``"masked"`` (K masks per batched pass; the default on GPU), ``"slim"`` (each
    mask's slimmed network; the default on CPU) or None. Both give the same accuracies.
    """
    if retrain is None and protocol.mode != "none":
        return _prune_retraining(model, structure, masked, data, metrics_texts, protocol, seed, device,
                                 baseline_accuracy, progress)
    pr = _Pruner(model, structure, masked, data, protocol, seed, device, evaluator)
    trajs = resolve_metrics(metrics_texts, structure)
    drop = protocol.threshold * (baseline_accuracy / 100.0 if protocol.relative else 1.0)
    target = baseline_accuracy - drop
    runs = {}                                   # ran_as -> the trajectory that actually runs
    for t in trajs:
        runs.setdefault(t.ran_as, t)
    active = list(runs.values())
    K = len(active)
    keep = torch.ones(K, pr.U, dtype=torch.bool, device=device)
    stride = protocol.eval_every or max(1, math.isqrt(int(pr.scored.sum()) // protocol.units_per_step))
    if protocol.schedule == "exact":
        stride = 1
    gen = torch.Generator().manual_seed(seed)
    for t in active:
        t.accuracy[0] = baseline_accuracy
    step = 0
    pending = [k for k in range(K)]
    while pending:
        step += 1
        P = torch.tensor(pending, device=device)
        rem = pr.removable(keep[P])
        choose = torch.full((len(pending), pr.U), float("inf"), dtype=torch.float64, device=device)
        metric_rows = [(i, k) for i, k in enumerate(pending) if active[k].metric not in REFERENCES]
        need_sal = [(i, k) for i, k in metric_rows if not (protocol.one_shot and active[k].order is not None)]
        if need_sal:
            x, y = pr.saliency_images(step)
            sal = pr.unit_saliencies([active[k].run_metric for _, k in need_sal],
                                     keep[[k for _, k in need_sal]], x, y)
            if protocol.one_shot:                 # rank once: position in the baseline's order
                for j, (i, k) in enumerate(need_sal):
                    order = torch.argsort(sal[j], stable=True)
                    active[k].order = torch.empty_like(sal[j]).scatter_(
                        0, order, torch.arange(pr.U, dtype=sal.dtype, device=device))
            else:
                choose[torch.tensor([i for i, _ in need_sal], device=device)] = sal
        for i, k in enumerate(pending):
            t = active[k]
            if t.metric == "random":
                choose[i] = torch.rand(pr.U, generator=gen, dtype=torch.float64, device="cpu").to(device)
            elif t.metric == "oracle":
                choose[i] = _oracle_scores(pr, keep[k], rem[i], step, gen)
            elif protocol.one_shot:
                choose[i] = t.order
        choose = torch.where(rem, choose, torch.full_like(choose, float("inf")))
        # every pending trajectory removes its units_per_step lowest-scored removable units, all
        # trajectories at once; the chosen ids reach the host in one transfer per step
        rows = torch.arange(len(pending), device=device)
        picks = []
        for j in range(protocol.units_per_step):
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
            active[k].removed.extend(v for v in picked[i] if v >= 0)
            active[k].step_end.append(len(active[k].removed))
        if retrain is not None:
            for k in pending:
                retrain(keep[k])
        rates, left = pr.rates(keep[P], with_left=True)
        for k, r in zip(pending, rates):
            active[k].rates.append(r)
        # schedule
        exhausted = {k for k, more in zip(pending, left) if not more}
        due = [k for k in pending if step % stride == 0 or k in exhausted]
        if due:
            for k, a in zip(due, pr.accuracy(keep[due])):
                active[k].accuracy[step] = a
        for k in list(pending):
            t = active[k]
            if step in t.accuracy and t.accuracy[step] < target:
                if stride > 1:
                    _refine(pr, t, step, stride, target)
                t.crossed, t.done = True, True
                pending.remove(k)
            elif k in exhausted:
                t.done = True
                pending.remove(k)
        if progress is not None:
            progress(step, len(pending), K)
    by_name = {t.ran_as: t for t in active}
    for t in trajs:                               # equivalent metrics share the run's trajectory
        src = by_name[t.ran_as]
        if src is not t:
            t.removed, t.step_end, t.rates = src.removed, src.step_end, src.rates
            t.accuracy, t.crossed, t.done = src.accuracy, src.crossed, True
    return trajs


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


def run_cell(cell: Cell, device="auto", cache_dir=None, data_root=None, progress: bool = False) -> CellResult:
    """Train or fetch the cell's baseline, prune it with every metric, score the crossings."""
    from prunetax.benchmarks.data import load_dataset
    from prunetax.benchmarks.training import evaluate, recipe_for, resolve_device, train_baseline
    from prunetax.metrics import MaskedModel, analyze

    start = time.perf_counter()
    p = cell.protocol
    dev = resolve_device(device)
    overrides = {"limit": cell.train_limit} if cell.train_limit else {}
    recipe = recipe_for(cell.network, cell.dataset, cell.epochs, **overrides)
    data = load_dataset(cell.dataset, root=data_root, eval_size=recipe.eval_size, seed=recipe.split_seed, device=dev,
                        pad_to=recipe.pad_to)
    model, info = train_baseline(cell.network, data, cell.seed, epochs=cell.epochs, device=dev,
                                 cache_dir=cache_dir, progress=progress, limit=cell.train_limit)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    full = analyze(model, data.test_x[:1])
    masked = MaskedModel(model, full)
    structure = full if p.prune_linear else full.restricted(("conv",))
    test_x, test_y = data.test_x, data.test_y
    if p.test_images:
        test_x, test_y = test_x[: p.test_images], test_y[: p.test_images]
    baseline = evaluate(model, test_x, test_y)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(desc=f"{cell.network}/{cell.dataset}/s{cell.seed}", unit="step", leave=False)

    def tick(step, pending, K):
        bar.update(1)
        bar.set_postfix_str(f"{K - pending}/{K} metrics crossed")
    trajs = prune(model, structure, masked, data, cell.metrics, p, cell.seed, dev, baseline,
                  tick if bar is not None else None)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - start
    drop = p.threshold * (baseline / 100.0 if p.relative else 1.0)
    rows, traj_rows = [], []
    for t in trajs:
        crossing, cstep = _crossing(t, baseline - drop)
        if crossing is None:       # never fell below the target: report the final rate
            crossing, cstep = t.rates[-1], len(t.rates) - 1
        rows.append(_row(cell, t, crossing, cstep, baseline, p, dev, wall))
        for s in range(1, len(t.rates)):
            units = t.removed[t.step_end[s - 1]:t.step_end[s]]
            traj_rows.append({
                "cell_id": cell.id, "metric_id": t.name, "network": cell.network, "dataset": cell.dataset,
                "seed": cell.seed, "step": s, "unit": units[0] if units else -1,  # first unit of the step
                "conv_weights_removed_pct": t.rates[s][0], "channels_removed_pct": t.rates[s][1],
                "macs_removed_pct": t.rates[s][2], "accuracy": t.accuracy.get(s)})
    return CellResult(cell, rows, traj_rows, wall)


def _row(cell, t: Trajectory, crossing, step, baseline, p: Protocol, dev, wall) -> dict:
    import json

    import prunetax.benchmarks as benchmarks

    comps = dict.fromkeys(("base_input", "pointwise", "reduction", "scaling", "structure", "aggregation"))
    if isinstance(t.metric, MetricSpec):
        kind = "spec"
        comps = dict(zip(comps, t.metric.components()))
    elif isinstance(t.metric, MetricExpr):
        kind = "expression"
    else:
        kind = "reference"
    if kind != "reference" and "-" not in t.name and "*" not in t.name:
        kind = "named"
        if isinstance(t.metric, MetricSpec):
            comps = dict(zip(comps, t.metric.components()))
    last = max(t.accuracy) if t.accuracy else 0
    return {"cell_id": cell.id, "metric_id": t.name, "kind": kind, **comps,
            "network": cell.network, "dataset": cell.dataset, "seed": cell.seed,
            "threshold": p.threshold, "threshold_mode": "relative" if p.relative else "absolute",
            "baseline_accuracy": baseline, "conv_weights_removed_pct": crossing[0],
            "channels_removed_pct": crossing[1], "macs_removed_pct": crossing[2], "steps": step,
            "crossed": t.crossed, "final_accuracy": t.accuracy.get(last), "ran_as": t.ran_as,
            "schedule": p.schedule, "mode": p.mode, "protocol": json.dumps(p.to_dict(), sort_keys=True),
            "prunetax_version": benchmarks.__version__, "torch_version": torch.__version__,
            "device": str(dev), "wall_seconds": wall}


def _prune_retraining(model, structure, masked, data, metrics_texts, protocol, seed, device, baseline, progress):
    """characterise / retrain: SGD after every step changes the weights, so each trajectory
    runs alone on its own copy of the network, with the exact schedule."""
    import copy
    import dataclasses

    from prunetax.metrics import MaskedModel

    if not hasattr(data, "train_x"):
        raise PrunetaxError(f"mode {protocol.mode!r} needs the training split")
    p = dataclasses.replace(protocol, schedule="exact")
    out = []
    for i, text in enumerate(metrics_texts):
        net = copy.deepcopy(model)
        for prm in net.parameters():
            prm.requires_grad_(True)
        mm = MaskedModel(net, masked.structure)
        opt = torch.optim.SGD(net.parameters(), lr=p.retrain_lr, momentum=0.9)
        gen = torch.Generator().manual_seed(seed * 7919 + i)
        target = baseline - p.threshold * (baseline / 100.0 if p.relative else 1.0)

        def retrain(keep_row, mm=mm, opt=opt, gen=gen, target=target):
            mm.set_keep(keep_row[None])
            steps = p.retrain_steps if p.mode == "retrain" else max(p.retrain_steps, 50)
            for _ in range(steps):
                idx = torch.randint(len(data.train_y), (p.batch_size,), generator=gen, device="cpu").to(data.train_y.device)
                with torch.enable_grad():
                    logits = mm(data.train_x[idx])
                    loss = F.cross_entropy(logits, data.train_y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                # characterise: stop once the training batch is back above the accuracy target
                if p.mode == "characterise" and 100.0 * (logits.argmax(1) == data.train_y[idx]).float().mean() >= target:
                    break
        out += prune(net.eval(), structure, mm, data, [text], p, seed, device, baseline, progress, retrain=retrain)
    return out
