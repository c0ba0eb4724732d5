"""Test passes: the accuracy of K keep masks, on the whole test set or sequentially.

:class:`TestEvaluator` measures each mask row on the protocol's test images, in one of two ways
that give the same counts: batched passes of the masked network, K masks at once (a GPU's
default), or each mask's physically slimmed network, which costs only the MACs that remain (a
CPU's default; ``slim`` equals masking, tests/test_masking.py). With the sequential test it
reads the test images in a fixed random order, a chunk at a time, until each mask's side of the
target is decided (``prunetax.benchmarks.protocol.sequential``). Masks with equal keys are
tested once when sharing is on. Every image-pass is counted in the run's :class:`Work`.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from prunetax.benchmarks.protocol.sequential import (TEST_ORDER_SEED, chunk_ends, count_of, decide,
                                                      fewest_correct, log_bound)

__all__ = ["TestEvaluator"]


class TestEvaluator:
    """The test passes of one network (``network``: a :class:`Network`) under ``protocol``.

    ``batched``: K masks per batched pass of the masked network (else each row's slimmed
    network); ``share``: rows with equal keys are tested once; ``work``: the run's counters."""

    __test__ = False            # not a pytest class

    def __init__(self, network, protocol, measurement, work):
        self.net, self.work, self.share = network, work, bool(measurement.share)
        self.device = network.device
        evaluator = measurement.evaluator or ("slim" if self.device.type == "cpu" else "masked")
        self.batched = evaluator == "masked"
        self.delta = protocol.sequential_delta
        self.test_x, self.test_y = protocol.test_split(network.data.test_x, network.data.test_y)
        self.rows = network.rows_per_pass()
        self._seq = None                                   # the sequential order, made on first use

    @torch.no_grad()
    def accuracy(self, keep: torch.Tensor) -> list[float]:
        """Test accuracy (%) of each mask row of ``keep`` [K, U] on the whole test set (not counted)."""
        if not self.batched:
            from prunetax.benchmarks.sgd import evaluate
            from prunetax.metrics import slim

            return [evaluate(slim(self.net.model, self.net.masked.structure, row.cpu()), self.test_x, self.test_y)
                    for row in keep]
        return (100.0 * self.masked_counts(keep, self.test_x, self.test_y) / len(self.test_y)).tolist()

    def test(self, keep: torch.Tensor, target: float | None, keys=None, sequential: bool = False,
             start=None) -> list[tuple]:
        """Test each mask row of ``keep``: a list of ``(correct, images, above, accuracy)``.

        ``sequential`` False: every row on the whole test set (:meth:`accuracy`). True: on the
        test images in the sequential order, a chunk at a time, until its side of ``target`` is
        decided (``above``: accuracy >= target; ``accuracy`` None when fewer than all images were
        read); ``target`` None reads them all. ``start``: one ``(correct, images)`` per row to go
        on from (a row stopped early). ``keys``: one hashable per row, equal for equal masks:
        with sharing each distinct row is tested once."""
        K = len(keep)
        first: dict = {}
        slot = list(range(K)) if keys is None or not self.share else [first.setdefault(k, len(first)) for k in keys]
        R = max(slot) + 1 if slot else 0
        rows = [slot.index(j) for j in range(R)]
        sub = keep if R == K else keep[torch.tensor(rows, device=keep.device)]
        N = len(self.test_y)
        if not sequential:
            accs = self.accuracy(sub)
            self.work.count("test", sub, N, unshared=keep)
            got = [(count_of(a, N), N, None if target is None else a >= target, a) for a in accs]
        else:
            got = self._sequential(sub, target, None if start is None else [start[i] for i in rows])
            before = [0] * R if start is None else [start[i][1] for i in rows]
            self.work.count("test", sub, [g[1] - b for g, b in zip(got, before)], unshared=keep,
                            unshared_images=0 if start is not None else N)
        return [got[j] for j in slot]

    def _order(self):
        """The sequential test's set-up: the test images in a fixed random order (drawn from the
        seed), the chunks' ends and log(chunks / delta)."""
        if self._seq is None:
            N = len(self.test_y)
            gen = torch.Generator().manual_seed(TEST_ORDER_SEED + self.net.seed)
            order = torch.randperm(N, generator=gen, device="cpu").to(self.test_y.device)
            ends = chunk_ends(N)
            self._seq = SimpleNamespace(x=self.test_x[order], y=self.test_y[order], ends=ends, cstar={},
                                        log_bound=log_bound(len(ends), self.delta))
        return self._seq

    def _cstar(self, target: float) -> int:
        """The fewest correct images whose accuracy (as :meth:`accuracy` computes it from the
        count) is at least ``target``; N + 1 if none."""
        seq, N = self._order(), len(self.test_y)
        if target not in seq.cstar:
            if self.batched:              # float32 on the device, as the batched pass computes it
                vals = 100.0 * torch.arange(N + 1, dtype=torch.get_default_dtype(), device=self.device) / N
                seq.cstar[target] = int((vals < target).sum().item())
            else:
                seq.cstar[target] = fewest_correct(target, N)
        return seq.cstar[target]

    @torch.no_grad()
    def _sequential(self, keep: torch.Tensor, target: float | None, start=None) -> list[tuple]:
        """:meth:`test` of distinct rows, sequentially (see docs/protocol.md, "Sequential test")."""
        seq, N, K = self._order(), len(self.test_y), len(keep)
        c = [0] * K if start is None else [int(s[0]) for s in start]
        n = [0] * K if start is None else [int(s[1]) for s in start]
        cstar = None if target is None else self._cstar(target)
        side = [None if cstar is None else decide(c[j], n[j], N, cstar, seq.log_bound) for j in range(K)]
        nets: dict[int, torch.nn.Module] = {}
        lo = 0
        for hi in seq.ends:
            live = [j for j in range(K) if side[j] is None and n[j] == lo]
            if live:
                if self.batched:
                    got = self.masked_counts(keep[torch.tensor(live, device=keep.device)], seq.x[lo:hi],
                                             seq.y[lo:hi]).tolist()
                else:
                    got = [self._slim_count(nets, keep, j, lo, hi) for j in live]
                for j, cnt in zip(live, got):
                    c[j] += int(cnt)
                    n[j] = hi
                    if cstar is not None:
                        side[j] = decide(c[j], n[j], N, cstar, seq.log_bound)
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
            nets[j] = slim(self.net.model, self.net.masked.structure, keep[j].cpu()).eval()
        seq, correct = self._order(), 0
        nb = -(-(hi - lo) // 1000)
        cuts = [lo + (i * (hi - lo)) // nb for i in range(nb + 1)]
        for a, b in zip(cuts, cuts[1:]):
            correct += int((nets[j](seq.x[a:b]).argmax(1) == seq.y[a:b]).sum().item())
        return correct

    def masked_counts(self, keep: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Correct predictions [K] (float, on the device) of the masked network under each row of
        ``keep`` on images ``x`` with labels ``y``, K masks per batched pass."""
        masked = self.net.masked
        T = len(y)
        out = [torch.zeros(0, device=self.device)]
        per_pass = max(1, self.rows // T)
        for k0 in range(0, len(keep), per_pass):
            ks = keep[k0:k0 + per_pass]
            K = len(ks)
            correct = torch.zeros(K, device=self.device)
            step = max(1, self.rows // K)
            masked.set_keep(ks)
            for i in range(0, T, step):
                xb, yb = x[i:i + step], y[i:i + step]
                pred = masked(xb.repeat(K, *([1] * (xb.dim() - 1)))).argmax(1).view(K, -1)
                correct += (pred == yb[None]).sum(1)
            out.append(correct)
        return torch.cat(out)

    def _accuracy_of(self, counts: list[int]) -> list[float]:
        """Accuracies (%) of whole-test-set counts, computed as :meth:`accuracy` computes them."""
        N = len(self.test_y)
        if not counts:
            return []
        if self.batched:
            return (100.0 * torch.tensor(counts, dtype=torch.get_default_dtype(), device=self.device) / N).tolist()
        return [100.0 * c / N for c in counts]
