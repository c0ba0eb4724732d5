"""Finalising: Domino sums, scaling and unit saliencies, from the aggregated saliencies s.

One job, done once after every image has been added: for every spec, its structure's sum D
(``prunetax.metrics.kernels`` structure registry) and its scaling's divisor (scaling registry)
give ``S(l, c) = D / d`` (docs/metrics.md, "Structure" and "Scaling"), vectorised over specs and
producers; expressions combine their specs channel by channel; a unit's saliency is its weakest
member's (``MetricValues``). NaN and removed channels become +inf.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from prunetax.metrics.engine.plan import stat_key
from prunetax.metrics.kernels import kernel
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.spec import MetricSpec


class Layout:
    """Every scored producer's channels side by side (``[..., C]``, C their total), and the sums
    over units and layers that structure and scaling kernels take (their ``ctx``).

    Attributes: ``producers``, ``offsets`` (producer j is ``[offsets[j], offsets[j+1])``),
    ``u_all`` (each channel's column in ``[..., U+1]``), ``p_all`` (its producer's index),
    ``kept`` (bool [K, C]), ``consumers`` (the conv consumer layers, for ``domino_io``-like structures).
    """

    def __init__(self, sites):
        self.sites = sites
        st = sites.st
        self.K, self.U = sites.K, sites.U
        self.device = sites.active.device
        self.producers = list(st.producers)
        sizes = [st.layers[p].out_channels for p in self.producers]
        self.u_all = torch.cat([sites.unit_index(st.layers[p].out_units) for p in self.producers])
        self.p_all = torch.cat([torch.full((c,), i, dtype=torch.long, device=self.device)
                                for i, c in enumerate(sizes)])
        self.offsets = [0]
        for c in sizes:
            self.offsets.append(self.offsets[-1] + c)
        self.kept = sites.active[:, self.u_all] > 0
        self.consumers = st.conv_consumers
        self._counts: dict = {}

    # -- for structure kernels -----------------------------------------------------------------
    def unit_sums(self, own: torch.Tensor) -> torch.Tensor:
        """``own`` [..., C] summed over each unit's member channels: [..., U+1] (last: no unit)."""
        tot = torch.zeros(*own.shape[:-1], self.U + 1, dtype=own.dtype, device=self.device)
        return tot.index_add_(-1, self.u_all, own)

    def add_consumer(self, tot: torch.Tensor, name: str, values: torch.Tensor) -> torch.Tensor:
        """Add consumer ``name``'s input-slice values [..., C_in] to their units' sums ``tot`` (in place)."""
        return tot.index_add_(-1, self.sites.unit_index(self.sites.st.layers[name].in_units), values)

    def to_channels(self, tot: torch.Tensor) -> torch.Tensor:
        """Unit sums [..., U+1] back to every channel of its unit [..., C] (0 for channels of no unit)."""
        tot[..., self.U] = 0
        return tot[..., self.u_all]

    # -- for scaling kernels -------------------------------------------------------------------
    def layer_sum(self, part: torch.Tensor) -> torch.Tensor:
        """``part`` [..., C] summed over each producer's channels, given back to each channel."""
        seg = torch.zeros(*part.shape[:-1], len(self.producers), dtype=part.dtype, device=self.device)
        return seg.index_add_(-1, self.p_all, part)[..., self.p_all]

    def weights_removed(self) -> torch.Tensor:
        """``Structure.weights_removed(keep)`` of each channel's unit, float64 [K, C]."""
        return self.sites.weights_removed()[:, self.u_all]

    def element_counts(self, specs: list[MetricSpec]) -> torch.Tensor:
        """The elements summed into each spec's D: its structure applied to the element counts of
        its base input, [K, C] (one kind of spec) or [len(specs), K, C]."""
        groups: dict = {}
        for i, s in enumerate(specs):
            groups.setdefault((s.base_input, s.structure), []).append(i)
        if len(groups) == 1:
            return self._element_counts(*next(iter(groups)))
        out = torch.empty(len(specs), self.K, self.offsets[-1], dtype=torch.float64, device=self.device)
        for (base, structure), rows in groups.items():
            out[torch.tensor(rows, device=self.device)] = self._element_counts(base, structure)
        return out

    def _element_counts(self, base: str, structure: str) -> torch.Tensor:
        key = (base, structure)
        if key not in self._counts:
            sites = self.sites
            own = torch.cat([sites.counts(p, base, False) for p in self.producers], 1)
            self._counts[key] = kernel("structure", structure)(own, lambda name: sites.counts(name, base, True), self)
        return self._counts[key]


def channel_saliencies(acc, lay: Layout, specs: list[MetricSpec]) -> torch.Tensor:
    """S(l, c) of many specs at once, float64 [len(specs), K, C] (C: every producer side by side),
    +inf for removed channels and NaN. Specs that share a stat key share their s; each structure
    and each scaling is one batched kernel call over the specs that use it."""
    K, C, dev = lay.K, lay.offsets[-1], lay.device
    keys = list(dict.fromkeys(stat_key(s) for s in specs))
    kidx = {k: i for i, k in enumerate(keys)}
    S = acc.aggregated(lay.producers, False, keys)                    # [M, K, C]

    D = None
    for structure in dict.fromkeys(s.structure for s in specs):
        idx = [i for i, s in enumerate(specs) if s.structure == structure]
        skeys = list(dict.fromkeys(stat_key(specs[i]) for i in idx))
        own = S if skeys == keys else S[torch.tensor([kidx[k] for k in skeys], device=dev)]
        cand = kernel("structure", structure)(own, lambda name, skeys=skeys: acc.aggregated([name], True, skeys), lay)
        pos = {k: i for i, k in enumerate(skeys)}
        rows = [pos[stat_key(specs[i])] for i in idx]
        if len(idx) == len(specs) and rows == idx:          # one structure, one spec per stat key
            D = cand
            break
        if D is None:
            D = torch.empty(len(specs), K, C, dtype=torch.float64, device=dev)
        D[torch.tensor(idx, device=dev)] = cand[torch.tensor(rows, device=dev)]

    scalings = list(dict.fromkeys(s.scaling for s in specs))
    if len(scalings) == 1:                                  # its divisor as it comes (it may broadcast)
        div = kernel("scaling", scalings[0])(D, specs, lay)
    else:
        div = torch.ones_like(D)
        for scaling in scalings:
            rows = [i for i, s in enumerate(specs) if s.scaling == scaling]
            idx = torch.tensor(rows, device=dev)
            div[idx] = kernel("scaling", scaling)(D[idx], [specs[i] for i in rows], lay)
    div = torch.where(div == 0, torch.ones_like(div), div)
    v = D / div
    return torch.where(lay.kept & ~torch.isnan(v), v, torch.full_like(v, float("inf")))


def finalize(acc, sites, metrics: list, specs: list[MetricSpec], *, images: int = 0) -> "MetricValues":
    """Every metric's S(l, c) as a MetricValues (NaN and removed channels +inf); ``images``: the
    images per trajectory read through image passes."""
    lay = Layout(sites)
    v = channel_saliencies(acc, lay, specs)
    return MetricValues(sites.st, lay, metrics, v, {s: i for i, s in enumerate(specs)}, images=images)


def unit_saliency(structure, channel_values: dict[str, torch.Tensor], K: int) -> torch.Tensor:
    """A unit is as weak as its weakest member: min over members, [K, U]; +inf where none."""
    U = structure.num_units
    dev = next(iter(channel_values.values())).device
    out = torch.full((K, U + 1), float("inf"), dtype=torch.float64, device=dev)
    for p, v in channel_values.items():
        u = structure.device_index(structure.layers[p].out_units, dev)
        out.scatter_reduce_(1, u.expand(K, -1), v, reduce="amin", include_self=True)
    return out[:, :U]


class MetricValues:
    """What ``evaluate_metrics`` returns: every metric's channel saliencies on K keep masks.

    - ``values``: metric -> {producer -> S(l, c), float64 [K, C_l]} (a read-only mapping whose
      per-producer views are made on first access);
    - ``unit_saliency(metric)``: [K, U], every row under that metric;
    - ``row_unit_saliency(row_metrics)``: [K, U], row k under its own metric ``row_metrics[k]``;
    - ``nonfinite_counts()``: metric -> long [K], kept channels whose saliency was NaN/Inf;
    - ``K``: the trajectories (keep masks); ``metrics``: the metrics, once each, in order;
    - ``images``: the work of the evaluation, images per trajectory read through image passes
      (each through the network once per trajectory, under its keep mask); 0 when the metrics
      read weight values alone and no image pass ran.
    """

    def __init__(self, structure, layout: Layout, metrics: list, spec_values: torch.Tensor, spec_pos: dict, *,
                 images: int = 0):
        self.structure, self.layout = structure, layout
        self.metrics = list(dict.fromkeys(metrics))
        self.K = layout.K
        self.images = images
        self._v, self._pos = spec_values, spec_pos                   # [specs, K, C], spec -> row
        lay = layout
        off = lay.offsets
        self._exprs: dict = {}
        for m in self.metrics:
            if isinstance(m, MetricSpec):
                continue
            vals = {}
            for j, p in enumerate(lay.producers):
                v = m.evaluate({s: spec_values[spec_pos[s], :, off[j]:off[j + 1]] for s in m.specs})
                kept = lay.kept[:, off[j]:off[j + 1]]
                vals[p] = torch.where(kept & ~torch.isnan(v), v, torch.full_like(v, float("inf")))
            self._exprs[m] = vals
        self.values = LazyValues(self.metrics, self._channel_values)

    def _channel_values(self, m) -> dict:
        if m in self._exprs:
            return self._exprs[m]
        i, off = self._pos[m], self.layout.offsets
        return {p: self._v[i, :, off[j]:off[j + 1]] for j, p in enumerate(self.layout.producers)}

    def __getitem__(self, metric) -> dict:
        return self.values[metric]

    def __contains__(self, metric) -> bool:
        return metric in self.values

    def unit_saliency(self, metric) -> torch.Tensor:
        """[K, U]: each unit's weakest member under ``metric``; +inf for removed units."""
        return unit_saliency(self.structure, self.values[metric], self.K)

    def row_unit_saliency(self, row_metrics: list) -> torch.Tensor:
        """Unit saliency [K, U] of trajectory row k under its own metric ``row_metrics[k]``.

        The same as ``unit_saliency`` of each row under its metric, but one gather and one
        scatter for all rows, whatever the number of metrics and producers."""
        lay, K = self.layout, self.K
        if len(row_metrics) != K:
            raise PrunetaxError(f"row_metrics has {len(row_metrics)} entries for {K} trajectories")
        dev = lay.device
        rows = torch.arange(K, device=dev)
        if all(m in self._pos for m in row_metrics):          # specs: rows of the [S, K, C] tensor
            V = self._v[torch.tensor([self._pos[m] for m in row_metrics], device=dev), rows]
        else:
            metrics = list(dict.fromkeys(row_metrics))
            mi = {m: i for i, m in enumerate(metrics)}
            V = torch.stack([torch.cat([self.values[m][p] for p in lay.producers], 1) for m in metrics])
            V = V[torch.tensor([mi[m] for m in row_metrics], device=dev), rows]
        out = torch.full((K, lay.U + 1), float("inf"), dtype=torch.float64, device=dev)
        out.scatter_reduce_(1, lay.u_all.expand(K, -1), V, reduce="amin", include_self=True)
        return out[:, :lay.U]

    def nonfinite_counts(self) -> dict:
        """metric -> long [K]: kept channels whose saliency is not finite (NaN became +inf)."""
        kept = self.layout.kept
        specs = [m for m in self.metrics if m in self._pos]
        out = {}
        if specs:
            rows = torch.tensor([self._pos[m] for m in specs], device=self.layout.device)
            counts = (kept & ~torch.isfinite(self._v[rows])).sum(-1)            # [specs, K]
            out.update(zip(specs, counts))
        for m, vals in self._exprs.items():
            out[m] = (kept & ~torch.isfinite(torch.cat(list(vals.values()), 1))).sum(1)
        return {m: out[m] for m in self.metrics}


class LazyValues(Mapping):
    """A read-only mapping whose values are made on first access (and kept): the per-producer
    views of hundreds of specs cost host time that the harness, reading the whole tensor, skips."""

    def __init__(self, keys, make):
        self._keys = list(dict.fromkeys(keys))
        self._set, self._make, self._done = set(self._keys), make, {}

    def __getitem__(self, key):
        if key not in self._done:
            if key not in self._set:
                raise KeyError(key)
            self._done[key] = self._make(key)
        return self._done[key]

    def __contains__(self, key):
        return key in self._set

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)
