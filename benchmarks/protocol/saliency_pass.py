"""The saliency passes of a protocol step: every pending trajectory's unit saliencies.

Trajectories whose metrics share base input, pointwise function and aggregation
(:func:`signal_key`) share one signal pass of the engine (``prunetax.metrics.evaluate_metrics``
/ ``MetricEvaluator``), K keep masks at once. With sharing on, trajectories with equal masks
share one row of that pass (:meth:`SaliencyPasses.shared`), computed as the unshared pass
computes it, to the bit on a CPU: BLAS's rules, as measured for MKL (docs/performance.md,
"Cheaper cells"), make a row of a matrix product of at least 12 rows in whole blocks of 4 come
out the same in any product; the last M % 4 rows (the block's tail, float64) depend on the tail
alone; float32 products of fewer than 12 rows differ. So a shared pass keeps every image pass at
least ``SAME_PRODUCT_ROWS`` rows long (or is the unshared pass), its row count congruent to the
unshared one modulo ``BLAS_BLOCK``, and the unshared pass's last trajectory on its own last row.
"""
from __future__ import annotations

import torch

from prunetax.metrics import MetricEvaluator, evaluate_metrics
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.spec import MetricSpec

__all__ = ["SaliencyPasses", "signal_key", "WEIGHT_GRAD_BUDGET", "SAME_PRODUCT_ROWS", "BLAS_BLOCK"]

WEIGHT_GRAD_BUDGET = 1 << 30          # bytes of per-image weight gradients per pass
SAME_PRODUCT_ROWS = 16
BLAS_BLOCK = 4


def signal_key(m) -> tuple:
    """Trajectories whose metrics share this key share one signal pass."""
    if isinstance(m, MetricSpec):
        return ("spec", m.base_input, m.pointwise, m.aggregation)
    return ("expr", str(m))


class SaliencyPasses:
    """The saliency passes of one network (``network``: a :class:`Network`) under ``protocol``;
    ``share``: rows with equal keys are computed once; ``work``: the run's counters."""

    def __init__(self, network, protocol, measurement, work):
        self.net, self.p, self.work, self.share = network, protocol, work, bool(measurement.share)
        self.device = network.device
        self.U = network.structure.num_units
        self._images = (None,)

    def images(self, step: int):
        """The step's eval images and labels (the same for every metric and the oracle), drawn
        once per step from (seed, step): ``saliency_batches x batch_size`` of them."""
        if self._images[0] != step:
            eval_x, eval_y = self.net.data.eval_x, self.net.data.eval_y
            n = min(self.p.saliency_batches * self.p.batch_size, len(eval_y))
            if n == 0:
                raise PrunetaxError("the eval split is empty: saliency metrics need held-out eval images")
            gen = torch.Generator().manual_seed(self.net.seed * 1_000_003 + step)
            idx = torch.randperm(len(eval_y), generator=gen, device="cpu")[:n].to(eval_y.device)
            self._images = (step, eval_x[idx], eval_y[idx])
        return self._images[1:]

    def unit_saliencies(self, metrics: list, keep: torch.Tensor, x, y, keys=None) -> torch.Tensor:
        """Unit saliency [K, U] of trajectory k under metric k, one signal pass per metric group.

        ``keys``: one hashable per row, equal for equal masks (None: every row its own). With
        sharing, the rows of a group's pass with equal keys are computed once."""
        K = len(metrics)
        out = torch.empty(K, self.U, dtype=torch.float64, device=self.device)
        groups: dict[tuple, list[int]] = {}
        for k, m in enumerate(metrics):
            groups.setdefault(signal_key(m), []).append(k)
        cap = self.p.max_trajectories or K            # trajectories per pass: bounds the memory
        chunks = [g[c:c + cap] for g in groups.values() for c in range(0, len(g), cap)]
        for idx in chunks:
            group = list(dict.fromkeys(metrics[k] for k in idx))
            if self.share and keys is not None and len(set(keys[k] for k in idx)) < len(idx):
                self.shared(group, idx, metrics, keep, (x, y), [keys[k] for k in idx], out)
            else:
                self.unshared(group, idx, metrics, keep, (x, y), out)
        return out

    def _evaluator(self, group, keep_rows) -> MetricEvaluator:
        return MetricEvaluator(self.net.masked, self.net.structure, group, keep_rows,
                               weight_grad_bytes=WEIGHT_GRAD_BUDGET)

    def _shared_rows(self, ev, idx, keys, n):
        """The rows of a shared pass (trajectory ids, the last one ``idx[-1]`` alone) and each
        trajectory's row, or None when sharing saves nothing (see the module's note)."""
        K = len(idx)
        per = ev.images_per_pass(n, rows=K)                                  # the unshared pass's split
        smallest = min(per, n % per or per)                                   # images of its last pass
        first: dict = {}
        slot = [first.setdefault(key, len(first)) for key in keys[:-1]]
        rows = [idx[slot.index(j)] for j in range(len(first))]
        need = max(len(rows) + 1, -(-SAME_PRODUCT_ROWS // smallest))
        R = need + (K - need) % BLAS_BLOCK
        if R >= K:
            return None
        rows += [rows[0]] * (R - 1 - len(rows)) + [idx[-1]]
        slot.append(R - 1)
        return rows, slot, per

    def shared(self, group, idx, metrics, keep, batch, keys, out) -> None:
        """The pass of chunk ``idx`` of a signal group with one row per distinct mask (``keys``);
        each row is computed as in :meth:`unshared`, which runs instead when sharing saves nothing."""
        dev = self.device
        x, y = batch
        first: dict = {}
        slot = [first.setdefault(key, len(first)) for key in keys]           # row of each trajectory
        rows = [idx[slot.index(j)] for j in range(len(first))]                # its first trajectory
        ev = self._evaluator(group, keep[torch.tensor(rows, device=dev)])
        if ev.needs_images:
            plan = self._shared_rows(ev, idx, keys, len(y))
            if plan is None:
                self.unshared(group, idx, metrics, keep, batch, out)
                return
            rows, slot, per = plan
            rows_keep = keep[torch.tensor(rows, device=dev)]
            ev = self._evaluator(group, rows_keep)
            for i in range(0, len(y), per):
                ev.update(x[i:i + per], y[i:i + per])
            self.work.count("saliency", rows_keep, len(y), unshared=keep[idx])
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

    def unshared(self, group, idx, metrics, keep, batch, out) -> None:
        """The pass of chunk ``idx`` of a signal group, one row per trajectory: the engine sets the
        masks, repeats the images per trajectory, splits them into passes that bound the
        per-image weight gradients, and skips the image pass for weight values."""
        x, y = batch
        rows = keep[idx]
        values = evaluate_metrics(self.net.masked, self.net.structure, group, lambda: [(x, y)], rows,
                                  weight_grad_bytes=WEIGHT_GRAD_BUDGET)
        sal = values.row_unit_saliency([metrics[k] for k in idx])
        out[torch.tensor(idx, device=out.device)] = sal.to(out.device)
        if values.images:
            self.work.count("saliency", rows, values.images)
