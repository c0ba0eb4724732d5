"""``prunetax.metrics.saliencies``: every requested metric on one network from one pass over the batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from prunetax.metrics.engine import evaluate_metrics, unit_saliency
from prunetax.metrics.masking import MaskedModel
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.expr import parse_metric


@dataclass
class SaliencyResult:
    """Per-channel saliencies of many metrics on one network (one trajectory)."""
    structure: object
    values: dict            # metric -> {producer -> float64 [C]}
    nonfinite: dict         # metric id -> number of kept channels whose saliency was NaN/Inf

    @property
    def metrics(self) -> list[str]:
        return [m.id for m in self.values]

    def _key(self, metric):
        m = parse_metric(metric) if isinstance(metric, str) else metric
        if m not in self.values:
            raise PrunetaxError(f"metric {m} was not computed; computed: {', '.join(self.metrics[:5])}...")
        return m

    def channel_values(self, metric) -> dict[str, torch.Tensor]:
        """S(l, c) per producer, float64 [C]; +inf for removed channels."""
        return {p: v[0].cpu() for p, v in self.values[self._key(metric)].items()}

    def unit_saliency(self, metric) -> torch.Tensor:
        """Unit saliency (min over members), float64 [num_units]; +inf for removed units."""
        vals = self.values[self._key(metric)]
        return unit_saliency(self.structure, vals, 1)[0].cpu()

    def to_arrow(self):
        """Columns metric_id, layer, channel, unit, value (float64): one row per metric x channel."""
        import pyarrow as pa

        cols = {"metric_id": [], "layer": [], "channel": [], "unit": [], "value": []}
        for m, per_layer in self.values.items():
            for p, v in per_layer.items():
                C = v.shape[1]
                cols["metric_id"] += [m.id] * C
                cols["layer"] += [p] * C
                cols["channel"] += list(range(C))
                cols["unit"] += self.structure.layers[p].out_units.tolist()
                cols["value"] += v[0].cpu().tolist()
        return pa.table({"metric_id": pa.array(cols["metric_id"], pa.string()),
                         "layer": pa.array(cols["layer"], pa.string()),
                         "channel": pa.array(cols["channel"], pa.int32()),
                         "unit": pa.array(cols["unit"], pa.int32()),
                         "value": pa.array(cols["value"], pa.float64())})


def saliencies(model: torch.nn.Module, structure, batches: Iterable, specs, keep=None,
               masked: MaskedModel | None = None) -> SaliencyResult:
    """Compute ``specs`` (ids, MetricSpec or MetricExpr objects, or a preset's list) on ``model``.

    ``batches``: iterable of ``(images, labels)``; statistics are accumulated over all of them
    before Domino and scaling. ``keep``: optional bool ``[num_units]`` (True = unit kept). The
    model is put in eval mode. Returns a SaliencyResult (``to_arrow()``, ``unit_saliency(m)``).
    """
    model.eval()
    masked = masked or MaskedModel(model, structure)
    U = structure.num_units
    keep = None if keep is None else torch.as_tensor(keep, dtype=torch.bool).reshape(1, U)
    result = evaluate_metrics(masked, structure, specs, batches, keep)
    counts = result.nonfinite_counts()
    flat = torch.stack(list(counts.values()))[:, 0].tolist() if counts else []   # one transfer for all
    nonfinite = {m.id: int(c) for m, c in zip(counts, flat)}
    return SaliencyResult(structure, result.values, nonfinite)
