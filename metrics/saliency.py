"""``prunetax.metrics.saliencies``: every requested metric on one network from one pass over the batches."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from prunetax.metrics.engine import evaluate_metrics, unit_saliency
from prunetax.metrics.masking import MaskedModel
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.expr import parse_metric


@dataclass
class SaliencyResult:
    """Per-channel saliencies of many metrics on one network (one trajectory).

    ``values`` is keyed by the parsed metric objects; ``names`` maps each of them to the name it
    was asked for (``gfbs``, ``filter_l1``, an authors' name, an expression as typed), which
    ``to_arrow`` writes beside the canonical id.
    """
    structure: object
    values: dict            # metric -> {producer -> float64 [C]}
    nonfinite: dict         # metric id -> number of kept channels whose saliency was NaN/Inf
    names: dict = field(default_factory=dict)   # metric -> the name asked for (default: its id)

    @property
    def metrics(self) -> list[str]:
        """The canonical ids, in the order asked."""
        return [m.id for m in self.values]

    def name(self, metric) -> str:
        """The name ``metric`` (a key of ``values``) was asked for; its canonical id when none."""
        return self.names.get(metric, metric.id)

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
        """One row per metric x channel. Columns: ``metric`` (the name asked for: ``gfbs``,
        ``filter_l1``, an id as typed), ``metric_id`` (its canonical id, or the canonical text of
        an expression), ``layer``, ``channel``, ``unit`` (int32), ``value`` (float64)."""
        import pyarrow as pa

        cols = {"metric": [], "metric_id": [], "layer": [], "channel": [], "unit": [], "value": []}
        for m, per_layer in self.values.items():
            name = self.name(m)
            for p, v in per_layer.items():
                C = v.shape[1]
                cols["metric"] += [name] * C
                cols["metric_id"] += [m.id] * C
                cols["layer"] += [p] * C
                cols["channel"] += list(range(C))
                cols["unit"] += self.structure.layers[p].out_units.tolist()
                cols["value"] += v[0].cpu().tolist()
        return pa.table({"metric": pa.array(cols["metric"], pa.string()),
                         "metric_id": pa.array(cols["metric_id"], pa.string()),
                         "layer": pa.array(cols["layer"], pa.string()),
                         "channel": pa.array(cols["channel"], pa.int32()),
                         "unit": pa.array(cols["unit"], pa.int32()),
                         "value": pa.array(cols["value"], pa.float64())})


def _asked(specs) -> tuple[list, dict]:
    """``(metric objects, {metric: name asked})`` of ``saliencies``' ``specs``: a string keeps
    its text (stripped) as the name; a NamedMetric its name; a spec or expression object its id.
    A metric asked twice under two names keeps the first."""
    from prunetax.taxonomy.expr import MetricExpr, NamedMetric
    from prunetax.taxonomy.spec import MetricSpec

    items = [specs] if isinstance(specs, (str, MetricSpec, MetricExpr, NamedMetric)) else list(specs)
    metrics, names = [], {}
    for item in items:
        if isinstance(item, NamedMetric):
            m, name = item.metric, item.name
        elif isinstance(item, str):
            m, name = parse_metric(item), item.strip()
        else:
            m, name = item, getattr(item, "id", str(item))
        metrics.append(m)
        names.setdefault(m, name)
    return metrics, names


def saliencies(model: torch.nn.Module, structure, batches: Iterable, specs, keep=None,
               masked: MaskedModel | None = None) -> SaliencyResult:
    """Compute ``specs`` (ids, authors' names, named metrics, expressions, MetricSpec, MetricExpr or
    NamedMetric objects, or a preset's list) on ``model``. Each metric keeps the name it was asked
    for (``result.name(m)``, the ``metric`` column of ``to_arrow``) beside its canonical id.

    ``batches``: iterable of ``(images, labels)``; statistics are accumulated over all of them
    before Domino and scaling. ``keep``: optional bool ``[num_units]`` (True = unit kept). The
    model is put in eval mode. Returns a SaliencyResult (``to_arrow()``, ``unit_saliency(m)``).
    """
    model.eval()
    masked = masked or MaskedModel(model, structure)
    U = structure.num_units
    keep = None if keep is None else torch.as_tensor(keep, dtype=torch.bool).reshape(1, U)
    specs, names = _asked(specs)
    if not specs:
        raise PrunetaxError("no metrics given")
    result = evaluate_metrics(masked, structure, specs, batches, keep)
    counts = result.nonfinite_counts()
    flat = torch.stack(list(counts.values()))[:, 0].tolist() if counts else []   # one transfer for all
    nonfinite = {m.id: int(c) for m, c in zip(counts, flat)}
    return SaliencyResult(structure, result.values, nonfinite, names)
