"""Count, on any device, what makes a pruning step slow on a GPU: host syncs and kernel launches.

On a GPU the harness's cost per step is not only FLOPs: every ``.item()``, ``.tolist()``,
``bool(tensor)``, ``nonzero`` or boolean-mask index makes the host wait for the device (a sync),
and every aten op is at least one kernel launch (a few microseconds of CPU time each, however
small the tensor). Both can be counted exactly on a CPU, where they cost next to nothing, so the
step's overhead can be measured and reduced without a GPU.

``Audit`` is a context manager that counts, for the code inside it:

- ``syncs``: calls that need a device value on the host (Tensor.item, tolist, __bool__,
  __int__, __float__, __index__, numpy, cpu, nonzero, argwhere, masked_select, unique,
  torch.equal, allclose, one-argument where, tensor repeats of repeat_interleave, indexing
  with a boolean tensor), each with its call site in prunetax's own code;
- ``ops``: aten operators dispatched (forward and backward) that compute something, the
  kernel-launch count (views, reshapes of contiguous tensors and detach are counted apart, in
  ``views``: they launch no kernel);
- ``factories``: tensor factory calls (zeros, ones, full, arange, tensor, rand, randperm, ...)
  made from prunetax's own code without a ``device`` argument. In a CUDA run each one makes a
  CPU tensor: an error when it meets a CUDA tensor, or a host-to-device copy when moved.
  A factory meant for the host says ``device="cpu"`` and is not counted.

Used by ``prunetax.benchmarks.perf.step_overhead`` (per-step figures) and tests/test_device_audit.py.
"""
from __future__ import annotations

import os
import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = tuple(os.path.join(ROOT, p) + os.sep for p in ("benchmarks", "metrics", "taxonomy", "enumerate"))
_SELF = os.path.abspath(__file__)

_T = torch.Tensor
SYNC_METHODS = {_T.item, _T.tolist, _T.__bool__, _T.__int__, _T.__float__, _T.__index__, _T.numpy, _T.cpu,
                _T.nonzero, torch.nonzero, torch.argwhere, _T.masked_select, torch.masked_select,
                torch.unique, _T.unique, torch.unique_consecutive, torch.equal, torch.allclose, _T.allclose}
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor, torch.as_tensor,
             torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace, torch.logspace, torch.eye,
             torch.empty_strided}


def _is_bool_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _site(depth: int = 2, own_only: bool = False, roots: tuple = PACKAGES) -> str | None:
    """file:line of the nearest caller in prunetax's code (None if ``own_only`` and the direct
    caller is not prunetax's)."""
    f = sys._getframe(depth)
    first = True
    while f is not None:
        fn = f.f_code.co_filename
        if fn.startswith(roots) and os.path.abspath(fn) != _SELF:
            return f"{os.path.relpath(fn, ROOT)}:{f.f_lineno}"
        if own_only and first:
            return None
        first = False
        f = f.f_back
    return None if own_only else "<outside prunetax>"


class _Functions(TorchFunctionMode):
    def __init__(self, audit: "Audit"):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        a = self.audit
        if func in SYNC_METHODS:
            a.syncs[(_site(roots=a.roots), getattr(func, "__name__", str(func)))] += 1
        elif func is torch.where and len(args) + len(kwargs) == 1:
            a.syncs[(_site(roots=a.roots), "where(cond)")] += 1
        elif func in (_T.repeat_interleave, torch.repeat_interleave) and len(args) > 1 \
                and isinstance(args[1], torch.Tensor) and args[1].numel() > 1 and "output_size" not in kwargs:
            a.syncs[(_site(roots=a.roots), "repeat_interleave(tensor)")] += 1
        elif func in (_T.__getitem__, _T.__setitem__, _T.index_put_, _T.index_put) and len(args) > 1 \
                and _is_bool_index(args[1]):
            a.syncs[(_site(roots=a.roots), f"{func.__name__}[bool]")] += 1
        elif func in FACTORIES and "device" not in kwargs:
            if not (func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)):
                site = _site(own_only=True, roots=a.roots)
                if site is not None:
                    a.factories[(site, func.__name__)] += 1
        return func(*args, **kwargs)


_METADATA = {torch.ops.aten.sym_size.int, torch.ops.aten.sym_stride.int, torch.ops.aten.sym_numel.default,
             torch.ops.aten.sym_storage_offset.default, torch.ops.aten.is_same_size.default,
             torch.ops.aten.detach.default}


class _Ops(TorchDispatchMode):
    def __init__(self, audit: "Audit"):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if getattr(func, "is_view", False) or func in _METADATA:
            self.audit.views += 1          # aliases and metadata: no kernel is launched
        else:
            self.audit.ops += 1
            if self.audit.op_sites is not None:
                self.audit.op_sites[(_site(roots=self.audit.roots), "ops")] += 1
        return func(*args, **(kwargs or {}))


class Audit:
    """``with Audit() as a: ...``; then ``a.syncs``, ``a.factories``, ``a.op_sites`` (Counters
    keyed by (site, what)), ``a.ops`` and ``a.views`` (ints)."""

    def __init__(self, count_ops: bool = True, op_sites: bool = True, roots: tuple = PACKAGES):
        self.roots = tuple(roots)       # folders whose code counts as "own" (call sites, factories)
        self.syncs: Counter = Counter()
        self.op_sites: Counter | None = Counter() if op_sites else None
        self.factories: Counter = Counter()
        self.ops = 0
        self.views = 0
        self.count_ops = count_ops
        self._modes = []

    def __enter__(self):
        self._modes = [_Functions(self)] + ([_Ops(self)] if self.count_ops else [])
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)
        return False

    @property
    def sync_count(self) -> int:
        return sum(self.syncs.values())

    @property
    def factory_count(self) -> int:
        return sum(self.factories.values())

    def by_site(self, counter: Counter, per: float = 1.0, top: int = 12) -> list[str]:
        lines = []
        for (site, what), n in counter.most_common(top):
            lines.append(f"  {n / per:10.2f}  {what:<26} {site}")
        return lines
