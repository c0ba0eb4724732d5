"""Cost of computing every metric from one pass, relative to one plain forward+backward (issue 4).

    python -m prunetax.benchmarks.perf.saliency_cost                      # resnet20, batch 256, domino (924)
    python -m prunetax.benchmarks.perf.saliency_cost --batch 64 --repeats 3   # the quick, CI-sized run

Prints the median time of one forward+backward of the plain model (summed cross-entropy,
``loss.backward()``), the median time of ``prunetax.metrics.saliencies(model, structure, [(x, y)], specs)``
(MaskedModel built inside the call, as a user calling it once would), a breakdown of where the
metrics time goes (medians over the repeats, measured by wrapping the engine's stages), and LAST
``ratio: X`` = metrics time / forward+backward time. Random weights, eval mode, random BN stats.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _randomize_bn(model: torch.nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


class _Stages:
    """Wraps engine functions to time them; ``with stages.timing():`` installs the wrappers."""

    # (label, module, attribute); times are exclusive: a stage called inside another is
    # subtracted from it (per-image weight grads are formed inside Accumulator.add, in chunks).
    # Public names only: a stage whose function the engine does not have is reported as not measured.
    POINTS = [
        ("setup (MaskedModel trace)", "prunetax.metrics.saliency", "MaskedModel"),
        ("signals collection (fwd+bwd with taps)", "prunetax.metrics.engine", "collect"),
        ("LM curvature (primal + squared twin)", "prunetax.metrics.signals", "curvature_signals"),
        ("per-image weight grads (unfold+einsum)", "prunetax.metrics.signals", "weight_grads"),
        ("BN grads", "prunetax.metrics.signals", "bn_grads"),
        ("pointwise/reduction kernels (Accumulator.add)", "prunetax.metrics.engine.stream", "Accumulator.add"),
        ("Domino + scaling (finalize)", "prunetax.metrics.engine", "finalize"),
        ("nonfinite count", "prunetax.metrics.engine.finalize", "MetricValues.nonfinite_counts"),
    ]

    def __init__(self, device):
        self.device = device
        self.times: dict[str, list[float]] = defaultdict(list)
        self.missing: dict[str, str] = {}      # label -> the function not found
        self._current: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []

    def _wrap(self, label, fn):
        def timed(*a, **kw):
            _sync(self.device)
            t0 = time.perf_counter()
            self._stack.append(label)
            try:
                out = fn(*a, **kw)
                _sync(self.device)
            finally:
                self._stack.pop()
            dt = time.perf_counter() - t0
            self._current[label] += dt
            if self._stack:
                self._current[self._stack[-1]] -= dt
            return out
        return timed

    @contextlib.contextmanager
    def timing(self):
        import importlib

        saved = []
        for label, modname, attr in self.POINTS:
            mod = importlib.import_module(modname)
            owner, name = (getattr(mod, attr.split(".")[0]), attr.split(".")[1]) if "." in attr else (mod, attr)
            if not hasattr(owner, name):
                self.missing[label] = f"{modname}.{attr}"
                continue
            orig = getattr(owner, name)
            saved.append((owner, name, orig))
            setattr(owner, name, self._wrap(label, orig))
        self._current = defaultdict(float)
        try:
            yield
        finally:
            for owner, name, orig in reversed(saved):
                setattr(owner, name, orig)
            for label, _, _ in self.POINTS:
                self.times[label].append(self._current.get(label, 0.0))


def print_breakdown(stages: _Stages, metrics_s: float, fwd_bwd_s: float) -> None:
    """Each stage's median exclusive time, its share of the metrics time and its multiple of one
    forward+backward, then the rest (the Python around the stages)."""
    m, f = metrics_s, fwd_bwd_s
    print("breakdown (median ms of exclusive time, share of metrics time):")
    accounted = 0.0
    for label, _, _ in _Stages.POINTS:
        if label in stages.missing:
            print(f"  {label:<48} not measured: no {stages.missing[label]}")
            continue
        t = statistics.median(stages.times[label])
        accounted += t
        print(f"  {label:<48} {t * 1e3:9.1f} ms  {100 * t / m:5.1f}%  ({t / f:5.2f}x fwd+bwd)")
    print(f"  {'other (Python glue, to_arrow not included)':<48} {(m - accounted) * 1e3:9.1f} ms  "
          f"{100 * (m - accounted) / m:5.1f}%")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--metrics", default="domino", metavar="PRESET")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)

    from prunetax.benchmarks.models import create_model
    from prunetax.enumerate import metric_space
    from prunetax.metrics import analyze, saliencies

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model(args.model, 3, 10, 32)
    _randomize_bn(model, gen)
    model = model.to(device).eval()
    x = torch.randn(args.batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    structure = analyze(model, x[:1])
    specs = metric_space(args.metrics)
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    print(f"model {args.model}, batch {args.batch}, {len(specs)} metrics ({args.metrics}), device {device} "
          f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}), "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {args.repeats} repeats (median)")

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        loss.backward()

    def metrics_pass():
        return saliencies(model, structure, [(x, y)], specs)

    stages = _Stages(device)
    # warm up both (allocator, kernels, lazy imports)
    fwd_bwd()
    metrics_pass()
    _sync(device)
    fb, mt = [], []
    for _ in range(args.repeats):           # interleaved, so that load changes hit both alike
        _sync(device)
        t0 = time.perf_counter()
        fwd_bwd()
        _sync(device)
        fb.append(time.perf_counter() - t0)
        with stages.timing():
            _sync(device)
            t0 = time.perf_counter()
            metrics_pass()
            _sync(device)
            mt.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    f, m = statistics.median(fb), statistics.median(mt)
    print(f"forward+backward: {f * 1e3:.1f} ms (min {min(fb) * 1e3:.1f}, max {max(fb) * 1e3:.1f})")
    print(f"metrics ({len(specs)} from one pass): {m * 1e3:.1f} ms (min {min(mt) * 1e3:.1f}, max {max(mt) * 1e3:.1f})")
    print_breakdown(stages, m, f)
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    print(f"ratio: {m / f:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
