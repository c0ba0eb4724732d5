"""The data types of a structure analysis: ``Layer``, ``Unit``, ``Structure`` and ``StructureError``.

These describe a network once it has been analysed (see ``prunetax.metrics.structure.analyze``)
and count its weights under a ``keep`` mask. The module imports nothing of the tracing, so the
channel rules (``_fx_rules``), the graph walk (``_trace``) and the analysis (``structure``) can all
import it from above. See docs/structure.md.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["Layer", "Unit", "Structure", "StructureError"]


class StructureError(PrunetaxError):
    """The network has an operation whose channel mapping the analysis cannot place."""


@dataclass(frozen=True)
class Layer:
    """A Conv or Linear layer (prunable or not) and how its channels map to units."""
    name: str
    kind: str  # "conv" | "linear"
    out_channels: int
    in_channels: int  # linear: channels of its input before any flatten (in_features // kernel)
    groups: int
    kernel: int  # conv: kh*kw; linear: spatial size of one input channel (1 without flatten)
    out_spatial: int  # conv: H_out*W_out; linear: 1
    out_units: torch.Tensor = field(repr=False)  # long [out_channels], -1 = not prunable
    in_units: torch.Tensor = field(repr=False)  # long [in_channels], -1 = always present
    bn: str | None = None
    mask_point: str | None = None

    @property
    def is_producer(self) -> bool:
        return bool((self.out_units >= 0).any())

    @property
    def weights(self) -> int:
        return self.kernel * self.in_channels * self.out_channels // self.groups


@dataclass(frozen=True)
class Unit:
    """Channels removed together, and the consumer input slices removed with them."""
    id: int
    members: tuple[tuple[str, int], ...]
    consumers: tuple[tuple[str, int], ...]


class Structure:
    """Result of ``analyze``; see the module docstring and docs/structure.md."""

    def __init__(self, layers, units, params, input_shape, node_units, remask, pads, custom):
        self.layers: dict[str, Layer] = layers
        self.producers: list[str] = [n for n, L in layers.items() if L.is_producer]
        self.units: list[Unit] = units
        self.num_units: int = len(units)
        self.params: int = params
        self.input_shape: tuple = tuple(input_shape)
        self.node_units: dict[str, tuple[torch.Tensor, int]] = node_units  # fx node -> (units per channel, kernel)
        self.remask: list[str] = remask  # fx nodes after which the mask is re-applied
        self.pads: dict[str, tuple[int, int]] = pads  # fx node -> channel padding (front, back)
        self.custom = custom  # fx node -> registered LayerRule
        convs = [L for L in layers.values() if L.kind == "conv"]
        self.conv_channels: int = sum(L.out_channels for L in convs)
        self.conv_weights: int = sum(L.weights for L in convs)
        self.macs: int = sum(L.weights * L.out_spatial for L in layers.values())
        self._pairs = {n: _shared_pairs(L) for n, L in layers.items()}
        self._device_cache: dict = {}   # index tensors per device (shared with restricted views)
        self.conv_consumers: list[str] = [n for n, L in layers.items()
                                          if L.kind == "conv" and bool((L.in_units >= 0).any())]

    def __repr__(self):
        return (f"Structure({len(self.layers)} layers, {len(self.producers)} producers, {self.num_units} units, "
                f"conv_weights={self.conv_weights})")

    # -- vectorised counts ----------------------------------------------------------------------
    # Every count is a few whole-tensor ops over all layers at once (no per-layer loop): each
    # layer group (l, g) is a column of a [N, LG] table of active input / output channels, made
    # by one gather and one index_add from the [N, U+1] activity table. The index tensors live
    # on the device of ``keep`` (built once per device), so a pruning step on a GPU neither
    # copies indices to the device nor launches per-layer kernels. Counts are sums of small
    # integers in float64, exact whatever the summation order.
    def _active(self, keep: torch.Tensor):
        keep = torch.as_tensor(keep)
        if keep.shape[-1] != self.num_units:
            raise PrunetaxError(f"keep has {keep.shape[-1]} units in its last dimension; the structure has {self.num_units}")
        lead = keep.shape[:-1]
        a = keep.reshape(-1, self.num_units).to(torch.float64)
        return torch.cat([a, a.new_ones(a.shape[0], 1)], 1), lead

    def device_index(self, units: torch.Tensor, device) -> torch.Tensor:
        """``units`` (a layer's in/out unit ids, -1 = fixed) as columns of the [., U+1] activity
        table (-1 -> the last, always-active column), on ``device``; cached per tensor and device."""
        key = (id(units), str(device))
        hit = self._device_cache.get(key)
        if hit is None or hit[0] is not units:
            hit = (units, (units % (self.num_units + 1)).to(device))
            self._device_cache[key] = hit
        return hit[1]

    def _count_index(self, device) -> dict:
        """The concatenated per-channel indices of every layer, on ``device`` (cached)."""
        key = ("counts", str(device))
        if key not in self._device_cache:
            U1 = self.num_units + 1
            cin, gin, kin, cout, gout, kout = [], [], [], [], [], []
            conv_w, all_w, macs, conv_ch = [], [], [], []
            pj, pp, pu, pk = [], [], [], []
            row, in_off, out_off = 0, 0, 0
            for name, L in self.layers.items():
                G = L.groups
                ipg, opg = L.in_channels // G, L.out_channels // G
                cin.append(L.in_units % U1)
                gin.append(row + torch.arange(L.in_channels, device="cpu") // ipg)
                kin.append(torch.full((L.in_channels,), float(L.kernel), dtype=torch.float64, device="cpu"))
                cout.append(L.out_units % U1)
                gout.append(row + torch.arange(L.out_channels, device="cpu") // opg)
                kout.append(torch.full((L.out_channels,), float(L.kernel), dtype=torch.float64, device="cpu"))
                conv = 1.0 if L.kind == "conv" else 0.0
                conv_w += [conv * L.kernel] * G
                all_w += [float(L.kernel)] * G
                macs += [float(L.kernel * L.out_spatial)] * G
                conv_ch += [conv] * G
                pairs = self._pairs[name]
                if pairs is not None:
                    j, q, u = pairs
                    pj.append(in_off + j)
                    pp.append(out_off + q)
                    pu.append(u % U1)
                    pk.append(torch.full((len(u),), float(L.kernel), dtype=torch.float64, device="cpu"))
                row += G
                in_off += L.in_channels
                out_off += L.out_channels
            f64 = dict(dtype=torch.float64, device="cpu")
            cat = (lambda xs, **kw: torch.cat(xs) if xs else torch.zeros(0, **kw))
            idx = dict(cin=torch.cat(cin), gin=torch.cat(gin), kin=torch.cat(kin), cout=torch.cat(cout),
                       gout=torch.cat(gout), kout=torch.cat(kout),
                       coef=torch.tensor([conv_w, all_w, macs, conv_ch], **f64).T.contiguous(),   # [LG, 4]
                       pj=cat(pj, dtype=torch.long, device="cpu"), pp=cat(pp, dtype=torch.long, device="cpu"),
                       pu=cat(pu, dtype=torch.long, device="cpu"), pk=cat(pk, **f64))
            idx = {k: v.to(device) for k, v in idx.items()}
            idx["LG"] = row
            self._device_cache[key] = idx
        return self._device_cache[key]

    def _group_table(self, A: torch.Tensor):
        """Per-channel activity (inputs, outputs) and per-(layer, group) active counts [N, LG]."""
        ix = self._count_index(A.device)
        act_in, act_out = A.index_select(1, ix["cin"]), A.index_select(1, ix["cout"])
        a_in = A.new_zeros(len(A), ix["LG"]).index_add_(1, ix["gin"], act_in)
        a_out = A.new_zeros(len(A), ix["LG"]).index_add_(1, ix["gout"], act_out)
        return ix, act_in, act_out, a_in, a_out

    def counts(self, keep) -> torch.Tensor:
        """float64 [..., 4]: conv weights, conv+linear weights, MACs per image and conv output
        channels still present; one batched computation for all four."""
        A, lead = self._active(keep)
        ix, _, _, a_in, a_out = self._group_table(A)
        both = torch.cat([a_in * a_out, a_out], 0) @ ix["coef"]            # [2N, 4]
        N = len(A)
        out = torch.cat([both[:N, :3], both[N:, 3:]], 1)
        return out.reshape(*lead, 4)

    def conv_weights_active(self, keep) -> torch.Tensor:
        """Σ_conv k·active(in)·active(out) per group (the pruning rate's denominator), shape [...]."""
        return self.counts(keep)[..., 0].round().long()

    def weights_active(self, keep) -> torch.Tensor:
        """Conv and linear weights still present (no biases), shape [...]."""
        return self.counts(keep)[..., 1].round().long()

    def macs_active(self, keep) -> torch.Tensor:
        """Multiply-accumulates of conv and linear layers per image, shape [...]."""
        return self.counts(keep)[..., 2].round().long()

    def channels_active(self, keep) -> torch.Tensor:
        """Conv output channels still present, shape [...]."""
        return self.counts(keep)[..., 3].round().long()

    def weights_removed(self, keep) -> torch.Tensor:
        """For each unit, the conv+linear weights removed with it if it were removed now, [..., num_units].

        Per layer and group g, removing a unit that holds a_g active inputs and b_g active outputs
        removes k·(a_g·out_g + b_g·in_g − a_g·b_g) weights; units already removed give 0.
        """
        A, lead = self._active(keep)
        U = self.num_units
        ix, act_in, act_out, a_in, a_out = self._group_table(A)
        out = A.new_zeros(len(A), U + 1)
        out.index_add_(1, ix["cin"], ix["kin"] * act_in * a_out.index_select(1, ix["gin"]))
        out.index_add_(1, ix["cout"], ix["kout"] * act_out * a_in.index_select(1, ix["gout"]))
        if len(ix["pu"]):
            out.index_add_(1, ix["pu"], -ix["pk"] * act_in.index_select(1, ix["pj"]) * act_out.index_select(1, ix["pp"]))
        return out[:, :U].round().long().reshape(*lead, U)

    def restricted(self, kinds=("conv",)) -> "Structure":
        """A view whose scored producers are only layers of these kinds.

        The authors score and prune convolution channels only; with ``kinds=("conv",)`` the
        metric engine computes no saliency for linear producers (their units rank +inf) while
        every count (weights_removed, rates) still covers all layers.
        """
        view = copy.copy(self)
        view.producers = [p for p in self.producers if self.layers[p].kind in kinds]
        return view

    def to_dict(self) -> dict:
        """A JSON-ready summary (used by ``prunetax structure --format json``)."""
        return {
            "input_shape": list(self.input_shape),
            "producers": [{"name": n, "kind": self.layers[n].kind, "out_channels": self.layers[n].out_channels,
                           "unit_ids": self.layers[n].out_units.tolist()} for n in self.producers],
            "units": self.num_units,
            "conv_channels": self.conv_channels,
            "conv_weights": self.conv_weights,
            "params": self.params,
            "macs": self.macs,
        }


def _shared_pairs(L: Layer):
    """(input idx, output idx, unit) of weights whose input and output channel are in one unit."""
    common = torch.isin(L.in_units[L.in_units >= 0], L.out_units[L.out_units >= 0])
    if not bool(common.any()):
        return None
    G = L.groups
    iu, ou = L.in_units.view(G, -1), L.out_units.view(G, -1)
    eq = (iu[:, :, None] == ou[:, None, :]) & (iu[:, :, None] >= 0)
    g, j, p = eq.nonzero(as_tuple=True)
    return g * iu.shape[1] + j, g * ou.shape[1] + p, iu[g, j]
