"""The network a cell prunes, as one value: the trained model, its structure, its masked copy,
the data, the seed and the baseline's accuracy."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Network", "ROWS_PER_PASS"]

ROWS_PER_PASS = 8192                 # images per batched forward on CPU (x4 on GPU)


@dataclass(frozen=True, eq=False)
class Network:
    """What the protocol prunes. ``model``: the trained network (eval mode); ``structure``: the
    units scored and pruned (conv producers, or all with ``prune_linear``); ``masked``: a
    ``MaskedModel`` of ``model`` (its ``structure`` is the whole network's); ``data``: the splits
    (eval images for saliencies, test images, the training split for retraining); ``seed``: the
    cell's seed (saliency images, random, the oracle, the test order); ``baseline_accuracy``: the
    baseline's test accuracy (%) on the protocol's test images."""
    model: torch.nn.Module
    structure: Any
    masked: Any
    data: Any
    seed: int
    baseline_accuracy: float

    @classmethod
    def of(cls, setup) -> "Network":
        """The network of a prepared cell (``prunetax.benchmarks.setup.prepare_cell``)."""
        return cls(setup.model, setup.structure, setup.masked, setup.data, setup.cell.seed, setup.baseline_accuracy)

    @property
    def device(self) -> torch.device:
        """Where the masked network computes (its parameters' device)."""
        param = next(self.masked.graph_module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def replace(self, **changes) -> "Network":
        """A copy with ``changes`` (for example a retraining copy's model and masked model)."""
        return dataclasses.replace(self, **changes)

    def rows_per_pass(self) -> int:
        """Images per batched forward: ``ROWS_PER_PASS`` on a CPU, four times that on a GPU."""
        return ROWS_PER_PASS * (4 if self.device.type == "cuda" else 1)
