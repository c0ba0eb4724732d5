"""The ``characterise`` / ``retrain`` modes: SGD on the pruned network after every step."""
from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

from prunetax.benchmarks.cell import Protocol

__all__ = ["Retraining"]


class Retraining:
    """The retraining modes, as :class:`Pruning`'s ``after_step`` strategy.

    SGD changes the weights, so the trajectory prunes its own copy of the network (``net``,
    masked by ``masked``; :meth:`network` is the copy as a :class:`Network`); after every pruning
    step, SGD steps (lr ``retrain_lr``, momentum 0.9, batch ``batch_size``) on the training split
    with the trajectory's mask applied: ``retrain`` runs ``retrain_steps``; ``characterise``
    stops once the training batch's accuracy is back at ``target`` (at most
    ``max(retrain_steps, 50)``). BatchNorm stays in eval mode. ``index``: the metric's place in
    the cell (it seeds the batch generator with the cell's seed).
    """

    def __init__(self, network, protocol: Protocol, index: int, target: float):
        from prunetax.metrics import MaskedModel

        self.net = copy.deepcopy(network.model)
        for prm in self.net.parameters():
            prm.requires_grad_(True)
        self.masked = MaskedModel(self.net, network.masked.structure)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=protocol.retrain_lr, momentum=0.9)
        self.gen = torch.Generator().manual_seed(network.seed * 7919 + index)
        self.data, self.p, self.target = network.data, protocol, target
        self._network = network

    def network(self):
        """The copy being retrained, as the :class:`Network` its :class:`Pruner` prunes."""
        return self._network.replace(model=self.net.eval(), masked=self.masked)

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
