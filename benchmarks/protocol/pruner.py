"""The per-network machinery of the protocol: which units may go, the rates, and the passes.

A :class:`Pruner` holds, for one network under one protocol, the counts (each unit's members per
producer, the units scored, the initial conv weights, channels and MACs), the removability rule,
and the three kinds of pass a step runs: saliency passes (``saliency``:
:class:`SaliencyPasses`), test passes (``tests``: :class:`TestEvaluator`) and the oracle's loss
passes (:meth:`Pruner.losses`), all counted in one :class:`Work` (``work``).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from prunetax.benchmarks.cell import Measurement, Protocol
from prunetax.benchmarks.protocol.evaluation import TestEvaluator
from prunetax.benchmarks.protocol.saliency_pass import SaliencyPasses
from prunetax.benchmarks.protocol.work import Work

__all__ = ["Pruner"]


class Pruner:
    """One network (``network``: a :class:`Network`) pruned under ``protocol``; ``measurement``
    says how its passes run (sharing, the test evaluator), never what they give."""

    def __init__(self, network, protocol: Protocol, measurement: Measurement | None = None):
        measurement = measurement or Measurement()
        structure = network.structure
        self.net, self.st, self.p = network, structure, protocol
        self.device, self.seed, self.share = network.device, network.seed, measurement.share
        self.U = structure.num_units
        self.work = Work(structure, self.device)
        self.tests = TestEvaluator(network, protocol, measurement, self.work)
        self.saliency = SaliencyPasses(network, protocol, measurement, self.work)
        self.rows = network.rows_per_pass()
        device, U = self.device, self.U
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

    @torch.no_grad()
    def losses(self, keep: torch.Tensor, x, y) -> torch.Tensor:
        """Mean eval-batch loss of each mask row (the oracle's criterion), [K]."""
        masked, out = self.net.masked, []
        per_pass = max(1, self.rows // len(y))
        for k0 in range(0, len(keep), per_pass):
            ks = keep[k0:k0 + per_pass]
            masked.set_keep(ks)
            logits = masked(x.repeat(len(ks), *([1] * (x.dim() - 1))))
            loss = F.cross_entropy(logits, y.repeat(len(ks)), reduction="none").view(len(ks), -1).mean(1)
            out.append(loss)
        self.work.count("oracle", keep, len(y))
        return torch.cat(out)

    def oracle_scores(self, keep_row, rem_row, step: int, gen) -> torch.Tensor:
        """Myopic oracle: among candidate units (at most ``oracle_candidates``, drawn with
        ``gen``), the removal with the lowest eval-batch loss scores lowest; the rest +inf."""
        cand = torch.nonzero(rem_row).flatten()
        n = self.p.oracle_candidates or 32
        if len(cand) > n:
            cand = cand[torch.randperm(len(cand), generator=gen, device="cpu")[:n].to(cand.device)]
        masks = keep_row[None].repeat(len(cand), 1)
        masks[torch.arange(len(cand), device=cand.device), cand] = False
        x, y = self.saliency.images(step)
        loss = self.losses(masks, x, y)
        scores = torch.full((self.U,), float("inf"), dtype=torch.float64, device=self.device)
        scores[cand] = loss.to(torch.float64)
        return scores
