"""Issue 6: one full cell, fast -- measured against the hardware, a plain loop and Torch-Pruning.

    python -m prunetax.benchmarks.perf.gpu_cell --size tiny                 # seconds; what the test runs
    python -m prunetax.benchmarks.perf.gpu_cell --size small --device cpu   # lenet5, 12 metrics, 500 test images
    python -m prunetax.benchmarks.perf.gpu_cell --size full --device cuda --out gpu_cell.csv
                                                                   # resnet20 x paper-308 x full test set

Five targets in one call (``--skip 3,4`` leaves some out):
1. close to the limit: images the harness pushes through the network (counted by a forward
   pre-hook on the masked network's first module: saliency passes with autograd on, test passes
   without) against the raw throughput of the plain model at the same batch rows and precision
   (``model(x)`` under ``no_grad``; forward+backward to the input for saliency rows). ratio =
   (time the counted rows would take at the raw rates) / (harness wall time), i.e. harness
   forward-equivalent img/s / raw img/s.
2. wall time of the cell with the ``exact`` and the ``fast`` schedule.
3. against a plain loop (one metric at a time, every step evaluated: harness_vs_loop.plain_loop),
   run on a subset of the metrics and extrapolated per metric to all of them; crossings must agree.
4. against Torch-Pruning (benchmark-only dependency, imported lazily): its importance on the
   physically pruned model, the lowest channel removed globally, accuracy after every step.
5. precision: the fast cell in float32 vs bf16 autocast / channels-last (and TF32 on CUDA);
   a lever is only worth a default when every crossing stays within one step of float32.
Prints a table, then one line per target: ``target N: <what> ratio: X`` or ``target N: skipped: why``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch.nn import functional as F

# 9 paper metrics for the CPU run: weight values only, activations, activation gradients and
# Taylor, per-image weight gradients and Gauss-Newton curvature (the LM and most weight-gradient
# metrics cost minutes per cell on 2 CPU cores; the full size runs all 308).
SMALL_METRICS = (
    "weight-value-l1-none", "weight-value-l2-weights_removed", "weight-taylor-l1-none",
    "activation-value-l1-elements", "activation-value-l2-weights_removed",
    "activation-gradient-abs_sum-elements", "activation-taylor-abs_sum-elements",
    "activation-taylor-sqr_sum-none", "activation-hessian_gn-l2-layer_l1",
)
TINY_METRICS = ("weight-value-l1-none", "activation-value-l1-elements")

SIZES = {
    # model, metrics, test images (0 = all), training (epochs, limit), loop subset, saliency batches
    "tiny": dict(model="lenet5", metrics=",".join(TINY_METRICS), test_images=200, epochs=1, limit=1000,
                 loop_metrics=1, saliency_batches=1, precision_metrics=2, raw_seconds=0.3, tp=("l1", "l1+bias")),
    "small": dict(model="lenet5", metrics=",".join(SMALL_METRICS), test_images=500, epochs=1, limit=10000,
                  loop_metrics=2, saliency_batches=2, precision_metrics=4, raw_seconds=1.0,
                  tp=("l1", "l1+bias", "taylor+bias")),
    "full": dict(model="resnet20", metrics="paper", test_images=0, epochs=10, limit=None,
                 loop_metrics=4, saliency_batches=2, precision_metrics=0, raw_seconds=3.0,
                 tp=("l1", "l1+bias", "taylor", "taylor+bias")),
}
# Torch-Pruning's importances and the taxonomy spec each one computes (docs/gpu.md, target 4);
# "+bias": the same importance plus the root conv's bias term, which the taxonomy's weight input counts
TP_METRICS = {"l1": "weight-value-l1-none", "l1+bias": "weight-value-l1-none",
              "taylor": "weight-taylor-l1-none@batch", "taylor+bias": "weight-taylor-l1-none@batch"}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def resolve_metric_list(text: str) -> list[str]:
    """A preset name, a comma-separated list of ids, or a glob over the paper preset's ids."""
    from prunetax.enumerate import PRESETS, metric_space
    text = text.strip()
    if text in PRESETS:
        return [str(m) for m in metric_space(text)]
    if "," in text or not any(c in text for c in "*?["):
        return [m.strip() for m in text.split(",") if m.strip()]
    return [str(m) for m in metric_space("paper", text)]


# ---------------------------------------------------------------------------------------------
# target 1: row counting from outside the harness

class RowCounter:
    """Counts the rows of every pass through the masked network (pre-hook on its first module)."""

    def __init__(self, masked):
        gm = masked.graph_module
        module = gm
        for n in gm.graph.nodes:                    # the module that reads the image itself
            if n.op == "placeholder":
                users = [u for u in n.users if u.op == "call_module"]
                if users:
                    module = gm.get_submodule(users[0].target)
                break
        self.passes: list[tuple[int, bool]] = []    # (rows, autograd on)
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.passes.append((int(args[0].shape[0]), torch.is_grad_enabled()))

    def reset(self):
        self.passes = []

    def close(self):
        self._handle.remove()

    def rows(self, grad: bool) -> int:
        return sum(r for r, g in self.passes if g == grad)

    def typical(self, grad: bool) -> int:
        """The rows-weighted median pass size (the batch the raw rate is measured at)."""
        sizes = sorted(r for r, g in self.passes if g == grad)
        if not sizes:
            return 0
        half, acc = sum(sizes) / 2, 0
        for r in sizes:
            acc += r
            if acc >= half:
                return r
        return sizes[-1]


def raw_rate(model, x, y, grad: bool, dev, seconds: float, autocast=None) -> float:
    """Images/s of the plain model on batch ``x``: forward under no_grad, or forward + backward
    of the summed cross-entropy to the input (what an activation-gradient saliency pass must do)."""
    ctx = autocast or contextlib.nullcontext

    def once():
        with ctx():
            if grad:
                xi = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    F.cross_entropy(model(xi), y, reduction="sum").backward()
            else:
                with torch.no_grad():
                    model(x)
    once()
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while True:
        once()
        n += 1
        if n >= 3 and (n % 2 == 0):
            _sync(dev)
            if time.perf_counter() - t0 >= seconds:
                break
    _sync(dev)
    return n * len(x) / (time.perf_counter() - t0)


def _batch(data, rows: int, dev):
    reps = math.ceil(rows / len(data.test_y))
    x = data.test_x.repeat(reps, *([1] * (data.test_x.dim() - 1)))[:rows].to(dev)
    y = data.test_y.repeat(reps)[:rows].to(dev)
    return x, y


# ---------------------------------------------------------------------------------------------
# the cell the targets measure, and the table they fill

@dataclass
class Bench:
    """The prepared cell every target measures: ``net`` (a ``prunetax.benchmarks.protocol.Network``),
    ``proto`` (its ``Protocol``), ``metrics`` (their names, equivalent ones once), ``cfg`` (the
    size's settings with the command line's overrides), ``test_images`` (the protocol's test set's
    size), ``device_name`` (the device in words); ``last_trajs``: the latest harness run's trajectories."""
    net: Any
    proto: Any
    metrics: list
    cfg: dict
    test_images: int
    device_name: str
    last_trajs: list = field(default_factory=list)

    @property
    def dev(self) -> torch.device:
        return self.net.device

    @property
    def target(self) -> float:
        """The accuracy (%) crossings are read at (``Protocol.target``)."""
        return self.proto.target(self.net.baseline_accuracy)


@dataclass
class FastRun:
    """The instrumented fast cell that targets 1, 2, 3 and 5 read: its wall ``seconds``, each
    metric's ``(crossing rates, crossing step)``, its distinct ``trajectories`` and the ``counter``
    of its passes."""
    seconds: float
    crossings: dict
    trajectories: int
    counter: RowCounter


class Table:
    """The measurements, one row each ``(target, quantity, value, unit, note)``, printed as added."""

    HEADER = ("target", "quantity", "value", "unit", "note")

    def __init__(self):
        self.rows: list[tuple] = []

    def row(self, tg, q, v, unit="", note="") -> None:
        self.rows.append((tg, q, v, unit, note))
        print(f"  [{tg}] {q:<48} {_text(v):>12} {unit:<6} {note}", flush=True)

    def print(self) -> None:
        print(f"{'target':<7} {'quantity':<50} {'value':>12} {'unit':<6} note")
        for tg, q, v, unit, note in self.rows:
            print(f"{tg:<7} {q:<50} {_text(v):>12} {unit:<6} {note}")

    def write_csv(self, path, device: str, size: str) -> None:
        """The rows as CSV, each with the device and the size."""
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["device", "size", *self.HEADER])
            for r in self.rows:
                w.writerow([device, size, *r])


def _text(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _close(a, b) -> bool:
    """Whether two crossing steps are both known and within one step of each other."""
    return a is not None and b is not None and abs(a - b) <= 1


# ---------------------------------------------------------------------------------------------
# the harness, timed

def run_harness(bench: Bench, metrics, schedule: str, precision: str = "fp32", counter: RowCounter | None = None):
    """The harness on ``metrics``: (seconds, {name: (crossing rates, crossing step)}, distinct
    trajectories). ``precision``: ``fp32``, ``tf32``, ``bf16`` (autocast) or ``channels_last``."""
    from prunetax.benchmarks.protocol import CellPruning, crossing

    proto = dataclasses.replace(bench.proto, schedule=schedule)
    net = bench.net
    if precision == "channels_last":
        cl = {f: getattr(net.data, f).contiguous(memory_format=torch.channels_last) for f in ("eval_x", "test_x")}
        net = net.replace(data=dataclasses.replace(net.data, **cl))
    if counter is not None:
        counter.reset()
    with _precision(precision, net):
        _sync(bench.dev)
        t0 = time.perf_counter()
        trajs = CellPruning(net, metrics, proto).run()
        _sync(bench.dev)
        wall = time.perf_counter() - t0
    bench.last_trajs = trajs
    return wall, {t.name: crossing(t, bench.target) for t in trajs}, len({t.ran_as for t in trajs})


@contextlib.contextmanager
def _precision(precision: str, net):
    """The arithmetic of ``precision`` around a harness run: TF32 on or off (strict float32, the
    reference, on CUDA), bf16 autocast, or the model in channels-last (its parameters are shared
    with the masked copy; back to contiguous afterwards)."""
    dev = net.device
    with contextlib.ExitStack() as stack:
        if precision == "tf32":
            stack.enter_context(_tf32(True))
        elif dev.type == "cuda":
            stack.enter_context(_tf32(False))           # strict float32 as the reference
        if precision == "bf16":
            stack.enter_context(torch.autocast(dev.type, dtype=torch.bfloat16))
        if precision == "channels_last":
            net.model.to(memory_format=torch.channels_last)
            stack.callback(net.model.to, memory_format=torch.contiguous_format)
        yield


@contextlib.contextmanager
def _tf32(on: bool):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _warm_up(bench: Bench) -> None:
    """One saliency pass of every metric and one test pass, untimed (lazy initialisation,
    kernel selection, allocator growth), so the first timed run is not charged for them."""
    from prunetax.benchmarks.cell import REFERENCES
    from prunetax.benchmarks.protocol import Pruner, resolve_metrics

    st = bench.net.structure
    pr = Pruner(bench.net, bench.proto)
    runs = [t.run_metric for t in resolve_metrics(bench.metrics, st) if t.metric not in REFERENCES]
    keep = torch.ones(len(runs) or 1, st.num_units, dtype=torch.bool, device=bench.dev)
    if runs:
        x, y = pr.saliency.images(0)
        pr.saliency.unit_saliencies(runs, keep, x, y)
    pr.tests.accuracy(keep[:1])
    _sync(bench.dev)


# ---------------------------------------------------------------------------------------------
# target 4: Torch-Pruning's loop

def tp_loop(bench: Bench, kind: str):
    """Torch-Pruning's importance -> physical pruning -> evaluation, one channel per step.

    Each step: importance of every channel of every conv group on the current (physically
    pruned) model, the lowest one removed globally (a group of one channel is never emptied),
    test accuracy measured, stop below the target (``Protocol.target``). Returns (seconds,
    crossing, step, removal sequence as (root conv, original channel))."""
    import torch_pruning as tp

    from prunetax.benchmarks.protocol import Pruner, crossing
    from prunetax.benchmarks.training import evaluate

    net = copy.deepcopy(bench.net.model).eval()
    for p in net.parameters():
        p.requires_grad_(True)        # Torch-Pruning traces the graph through autograd
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    ignored = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    imp = _tp_importance(tp, kind)
    images = Pruner(bench.net, bench.proto).saliency.images      # the harness's saliency images of a step
    tx, ty = bench.proto.test_split(bench.net.data.test_x, bench.net.data.test_y)
    w0 = sum(m.weight.numel() for m in convs)
    names = {m: n for n, m in net.named_modules()}
    orig = {m: list(range(m.out_channels)) for m in convs}
    traj = SimpleNamespace(accuracy={0: bench.net.baseline_accuracy}, early={}, rates=[(0.0, 0.0, 0.0)])
    removed = []
    _sync(bench.dev)
    t0 = time.perf_counter()
    DG = tp.DependencyGraph().build_dependency(net, example_inputs=tx[:1])
    step = 0
    while True:
        step += 1
        if kind.startswith("taylor"):
            x, y = images(step)
            net.zero_grad(set_to_none=True)
            with torch.enable_grad():
                F.cross_entropy(net(x), y).backward()
        best = _tp_lowest(DG, imp, ignored)
        if best is None:
            break
        _, root, j = best
        removed.append((names[root], orig[root].pop(j)))
        DG.get_pruning_group(root, tp.prune_conv_out_channels, idxs=[j]).prune()
        w = sum(m.weight.numel() for m in convs)
        traj.rates.append((100 * (1 - w / w0), float("nan"), float("nan")))
        traj.accuracy[step] = evaluate(net, tx, ty)
        if traj.accuracy[step] < bench.target:
            break
    _sync(bench.dev)
    wall = time.perf_counter() - t0
    rates, cstep = crossing(traj, bench.target)
    return wall, rates, cstep, removed


def _tp_lowest(DG, imp, ignored):
    """``(score, root conv, channel)`` of the lowest-scored channel over every conv group with
    more than one channel, or None when there is none."""
    best = None
    for group in DG.get_all_groups(ignored_layers=ignored, root_module_types=[torch.nn.Conv2d]):
        root = group[0].dep.target.module
        if root.out_channels <= 1:
            continue
        scores = imp(group)
        if scores is None:
            continue
        j = int(torch.argmin(scores))
        s = float(scores[j])
        if best is None or s < best[0]:
            best = (s, root, j)
    return best


def _tp_importance(tp, kind: str):
    """Torch-Pruning's L1 / Taylor importance configured to read the root conv's filter only
    (group_reduction "first": not the consumers' input columns nor the BatchNorm) with raw values
    compared across layers (normalizer None = the taxonomy's scaling "none"). ``+bias`` also adds
    the root conv's bias term, as the taxonomy's ``weight`` input does (its own ``bias=True``
    puts the bias in the group as a second entry that "first" drops, so the sum is done here)."""
    base = tp.importance.MagnitudeImportance if kind.startswith("l1") else tp.importance.TaylorImportance
    kw = {"p": 1} if kind.startswith("l1") else {}
    if not kind.endswith("+bias"):
        return base(group_reduction="first", normalizer=None, **kw)

    class RootWithBias(base):
        def __call__(self, group):
            root = group[0].dep.target.module
            self._n = 2 if getattr(root, "bias", None) is not None else 1
            return super().__call__(group)

        def _reduce(self, group_imp, group_idxs):      # entries 0 (and 1): the root's weight (and bias)
            return sum(group_imp[:self._n]).float()
    return RootWithBias(group_reduction="first", normalizer=None, bias=True, **kw)


def harness_sequence(structure, t, steps: int):
    """The trajectory's first ``steps`` removals as (producer conv, channel)."""
    where = {}
    for p in structure.producers:
        for c, u in enumerate(structure.layers[p].out_units.tolist()):
            if u >= 0:
                where.setdefault(u, (p, c))
    return [where.get(u, ("?", u)) for u in t.removed[:steps]]


# ---------------------------------------------------------------------------------------------
# the five targets: each adds its rows to the table and returns its verdict line

def target1(bench: Bench, table: Table, fast: FastRun) -> str:
    """Close to the limit: the raw-rate time of the rows the fast cell pushed / its wall time."""
    counter, data, dev = fast.counter, bench.net.data, bench.dev
    sal_rows, test_rows = counter.rows(True), counter.rows(False)
    limit_s = 0.0
    for grad, rows in ((True, sal_rows), (False, test_rows)):
        if rows == 0:
            continue
        b = counter.typical(grad)
        x, y = _batch(data, b, dev)
        r = raw_rate(bench.net.model, x, y, grad, dev, bench.cfg["raw_seconds"])
        limit_s += rows / r
        table.row(1, f"raw {'fwd+bwd' if grad else 'forward'} img/s at batch {b}", r, "img/s", "plain model, float32")
    passes = counter.passes
    table.row(1, "harness saliency rows (fwd+bwd passes)", sal_rows, "img", f"{sum(1 for _, g in passes if g)} passes")
    table.row(1, "harness test rows (forward passes)", test_rows, "img", f"{sum(1 for _, g in passes if not g)} passes")
    table.row(1, "harness rows/s (all rows / wall)", (sal_rows + test_rows) / fast.seconds, "img/s")
    table.row(1, "time those rows take at the raw rates", limit_s, "s")
    return (f"close to the limit (raw-rate time of the harness's rows / harness wall, fast) "
            f"ratio: {limit_s / fast.seconds:.3f}")


def target2(bench: Bench, table: Table, fast: FastRun) -> str:
    """Wall time of the cell with the exact schedule against the fast one."""
    metrics = bench.metrics
    exact_s, exact, _ = run_harness(bench, metrics, "exact")
    table.row(2, "exact schedule: wall time", exact_s, "s", "test accuracy after every step")
    agree = sum(1 for m in metrics if _close(fast.crossings[m][1], exact[m][1]))
    table.row(2, "fast vs exact: crossings within one step", f"{agree}/{len(metrics)}")
    return (f"wall time exact {exact_s:.1f} s, fast {fast.seconds:.1f} s ({bench.cfg['model']}, {len(metrics)} "
            f"metrics, {bench.test_images} test images); exact/fast ratio: {exact_s / fast.seconds:.2f}")


def target3(bench: Bench, table: Table, fast: FastRun) -> str:
    """Against a plain loop on a subset of the metrics, extrapolated per metric to all of them."""
    try:
        from prunetax.benchmarks.perf.harness_vs_loop import plain_loop
    except ImportError as e:
        return f"skipped: prunetax.benchmarks.perf.harness_vs_loop not importable ({e})"
    metrics, K = bench.metrics, fast.trajectories
    n = max(1, min(bench.cfg["loop_metrics"], len(metrics)))
    sub = [metrics[round(i * (len(metrics) - 1) / max(1, n - 1))] for i in range(n)] if n > 1 else metrics[:1]
    sub = list(dict.fromkeys(sub))
    exact = dataclasses.replace(bench.proto, schedule="exact")
    t0 = time.perf_counter()
    same = 0
    for m in sub:
        t1 = time.perf_counter()
        _, sl = plain_loop(bench.net, m, exact)
        same += _close(sl, fast.crossings[m][1])
        table.row(3, f"loop {m}", time.perf_counter() - t1, "s",
                  f"crossing step loop {sl} / harness {fast.crossings[m][1]}")
    per = (time.perf_counter() - t0) / len(sub)
    est = per * K
    table.row(3, "plain loop, per metric (mean of the subset)", per, "s", f"{len(sub)} metrics run")
    table.row(3, f"plain loop, all {K} metrics (EXTRAPOLATED)", est, "s", "per-metric mean x metrics")
    table.row(3, "crossings agree within one step", f"{same}/{len(sub)}")
    return (f"plain loop / harness fast, loop EXTRAPOLATED from {len(sub)} of {K} metrics "
            f"({same}/{len(sub)} crossings agree) ratio: {est / fast.seconds:.2f}")


def target4(bench: Bench, table: Table, fast: FastRun) -> str:
    """Against Torch-Pruning's loop, for each of the size's importances."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        print("torch-pruning not installed: target 4 skipped", flush=True)
        return "skipped: torch-pruning not installed"
    parts, harness = [], {}
    tp_total = h_total = 0.0
    for kind in bench.cfg["tp"]:
        spec = TP_METRICS[kind]
        try:
            tp_s, tp_cross, tp_step, tp_seq = tp_loop(bench, kind)
        except Exception as e:          # Torch-Pruning's tracer can fail on a network: report it
            table.row(4, f"torch-pruning {kind}", float("nan"), "s", f"failed: {type(e).__name__}: {str(e)[:80]}")
            continue
        if spec not in harness:
            h_s, h, _ = run_harness(bench, [spec], "exact")
            harness[spec] = (h_s, h[spec], bench.last_trajs[0])
        h_s, (h_cross, h_step), traj = harness[spec]
        h_total += h_s                  # per TP run, so the ratio compares like with like
        seq = harness_sequence(bench.net.structure, traj, len(tp_seq))
        prefix = next((i for i, (a, b) in enumerate(zip(seq, tp_seq)) if a != b), min(len(seq), len(tp_seq)))
        rate_tp = tp_cross[0] if tp_cross else float("nan")
        rate_h = h_cross[0] if h_cross else float("nan")
        match = _close(tp_step, h_step) and (abs(rate_tp - rate_h) <= 1.0)
        table.row(4, f"torch-pruning {kind}: wall, every step evaluated", tp_s, "s",
                  f"crossing step {tp_step}, conv weights removed {rate_tp:.2f}%")
        table.row(4, f"harness {spec} (exact): wall", h_s, "s",
                  f"crossing step {h_step}, conv weights removed {rate_h:.2f}%")
        table.row(4, f"{kind}: same removals before the first difference", f"{prefix}/{len(tp_seq)}", "",
                  "match (crossing steps within 1, rates within 1 point): " + ("yes" if match else "NO"))
        tp_total += tp_s
        parts.append(f"{kind} {rate_tp:.2f}% vs {rate_h:.2f}% {'match' if match else 'NO match'}")
    if not parts:
        return "skipped: torch-pruning failed on this network"
    return (f"Torch-Pruning loop / harness exact (same specs, every step evaluated; crossing TP vs harness: "
            f"{', '.join(parts)}) ratio: {tp_total / h_total:.2f}")


def target5(bench: Bench, table: Table, fast: FastRun) -> str:
    """Precision: the fast cell in float32 against each lever; a lever is worth a default only when
    every crossing stays within one step of float32 and it is at least 10 % faster."""
    metrics = bench.metrics
    n = bench.cfg["precision_metrics"] or len(metrics)
    pm = metrics[:n]
    ref_s, ref = (fast.seconds, fast.crossings) if n >= len(metrics) else run_harness(bench, pm, "fast")[:2]
    table.row(5, "float32 fast cell", ref_s, "s", f"{len(pm)} metrics")
    levers = (["tf32"] if bench.dev.type == "cuda" else []) + ["bf16", "channels_last"]
    results = []
    for lever in levers:
        try:
            s, res, _ = run_harness(bench, pm, "fast", precision=lever)
        except Exception as e:     # a lever that breaks the harness is reported, not fatal
            table.row(5, f"{lever}", float("nan"), "s", f"failed: {type(e).__name__}: {str(e)[:80]}")
            results.append((lever, None, None))
            continue
        diffs = [abs(res[m][1] - ref[m][1]) for m in pm if res[m][1] is not None and ref[m][1] is not None]
        within = sum(1 for m in pm if _close(res[m][1], ref[m][1]))
        worth = within == len(pm) and ref_s / s >= 1.10    # 10 %: above timing noise
        table.row(5, f"{lever}: wall time", s, "s",
                  f"crossings within 1 step: {within}/{len(pm)}, max diff {max(diffs) if diffs else 'n/a'}; "
                  f"speed-up {ref_s / s:.2f}x; {'worth a default' if worth else 'keep float32'}")
        results.append((lever, ref_s / s, within == len(pm)))
    ok = [f"{lv} x{sp:.2f} ({'within 1 step' if w else 'NOT within 1 step'})" for lv, sp, w in results if sp]
    best = max((sp for _, sp, w in results if sp and w), default=1.0)
    return (f"precision levers vs float32: {'; '.join(ok) or 'none ran'}; "
            f"defaults unchanged; best safe speed-up ratio: {best:.2f}")


TARGETS = {1: target1, 2: target2, 3: target3, 4: target4, 5: target5}


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    """The command line; ``cfg``: the size's settings with its overrides; ``skip``: the targets left out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--dataset", default="mnist", help="mnist (embedded), fashion_mnist; cifar10 needs files")
    ap.add_argument("--model", default=None, help="override the size's network")
    ap.add_argument("--metrics", default=None, help="preset, comma-separated ids, or a glob over the paper ids")
    ap.add_argument("--test-images", type=int, default=None, help="0 = the full test set")
    ap.add_argument("--epochs", type=int, default=None, help="baseline training epochs (cached)")
    ap.add_argument("--loop-metrics", type=int, default=None, help="metrics the plain loop runs (target 3)")
    ap.add_argument("--precision-metrics", type=int, default=None,
                    help="metrics of the precision runs (target 5); 0 = all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--skip", default="", help="targets to skip, e.g. 3,4")
    ap.add_argument("--out", default=None, help="write the table as CSV too")
    args = ap.parse_args(argv)
    args.cfg = dict(SIZES[args.size])
    for k in ("model", "metrics", "test_images", "epochs", "loop_metrics", "precision_metrics"):
        if getattr(args, k) is not None:
            args.cfg[k] = getattr(args, k)
    args.skip = {int(s) for s in args.skip.replace(" ", "").split(",") if s}
    return args


def prepare(args) -> Bench:
    """The cell of the size (its baseline trained or read from the cache), with a line on the
    machine before and one on the cell after."""
    from prunetax.benchmarks.cell import Cell, Protocol
    from prunetax.benchmarks.protocol import Network, resolve_metrics
    from prunetax.benchmarks.setup import Env, prepare_cell

    cfg = args.cfg
    env = Env.from_args(args)
    dev = env.torch_device
    name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else platform.processor() or platform.machine() or "cpu")
    print(f"# gpu_cell --size {args.size}: device {dev} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, python {platform.python_version()}", flush=True)
    t_setup = time.perf_counter()
    proto = Protocol(test_images=cfg["test_images"], saliency_batches=cfg["saliency_batches"])
    setup = prepare_cell(Cell(cfg["model"], args.dataset, args.seed, (), proto, cfg["epochs"], cfg["limit"]), env)
    st, baseline, T = setup.structure, setup.baseline_accuracy, len(setup.test_y)
    metrics = [t.name for t in resolve_metrics(resolve_metric_list(cfg["metrics"]), st)]
    print(f"# {cfg['model']} / {args.dataset} seed {args.seed} (trained {setup.recipe.epochs} epoch(s)"
          f"{', ' + str(cfg['limit']) + ' images' if cfg['limit'] else ''}, "
          f"{'cached' if setup.info.get('cached') else 'trained now'}), baseline {baseline:.2f}% on {T} test images, "
          f"{len(metrics)} metrics, {proto.saliency_batches}x{proto.batch_size} saliency images/step, "
          f"{st.num_units} units; setup {time.perf_counter() - t_setup:.1f} s", flush=True)
    return Bench(Network.of(setup), proto, metrics, cfg, T, f"{dev} ({name})")


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = prepare(args)
    table = Table()
    # the fast cell (targets 1, 2, 3, 5 read it), instrumented
    _warm_up(bench)
    counter = RowCounter(bench.net.masked)
    fast = FastRun(*run_harness(bench, bench.metrics, "fast", counter=counter), counter)
    table.row(2, "fast schedule: wall time", fast.seconds, "s",
              f"{len(bench.metrics)} metrics ({fast.trajectories} distinct trajectories)")
    verdict = {k: "skipped: --skip" if k in args.skip else target(bench, table, fast) for k, target in TARGETS.items()}
    counter.close()
    print()
    table.print()
    if args.out:
        table.write_csv(args.out, bench.device_name, args.size)
    print()
    for k in range(1, 6):
        print(f"target {k}: {verdict[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
