"""Sites: the elements of every producer channel and consumer slice, their counts, masked weights.

One job: hold the K keep masks of an evaluation and what the base inputs' kernels
(``prunetax.metrics.kernels``, base input registry) read to turn the signals of one pass
(``prunetax.metrics.signals.Signals``) and the model's parameters into the element tensors
``(x, g, h)`` that the pointwise kernels read, for the K keep masks at once, and to count the
elements (docs/metrics.md, "Elements of a producer channel" and "Elements of a consumer slice"):
the masks per unit, the masked weights and per-image weight gradients laid out as producer
rows or consumer slices. A *site* is a layer read as a producer (its output channels) or as a
consumer (its input slices) under one base input.
"""
from __future__ import annotations

import torch

from prunetax.metrics.kernels import registered


def to_input_major(t: torch.Tensor, G: int) -> torch.Tensor:
    """[..., O, I/G, k] -> [..., I, (O/G)*k]: the slice each input channel feeds, per group."""
    *lead, O, Ig, k = t.shape
    t = t.reshape(*lead, G, O // G, Ig, k).transpose(-3, -2)      # [..., G, I/G, O/G, k]
    return t.reshape(*lead, G * Ig, (O // G) * k)


class Sites:
    """The K keep masks of one evaluation and everything read per site under them.

    ``active``: float64 [K, U+1], 1 where a unit is kept (the last column, for channels of no
    unit, is always 1).
    """

    def __init__(self, model, structure, keep: torch.Tensor):
        self.model, self.st = model, structure
        self.keep = keep                                                # bool [K, U]
        self.K, self.U = keep.shape
        self.active = torch.cat([keep, keep.new_ones(self.K, 1)], 1).to(torch.float64)   # [K, U+1]
        self.spatial: dict = {}    # (layer, consumer) -> activation elements per channel, noted from the signals
        self._weights_removed = None

    # -- masks ---------------------------------------------------------------------------------
    def unit_index(self, units: torch.Tensor) -> torch.Tensor:
        """``units`` as column indices into [K, U+1] (removed-layer id -1 -> the last column),
        from the structure's per-device cache."""
        return self.st.device_index(units, self.active.device)

    def act_of(self, units: torch.Tensor) -> torch.Tensor:
        return self.active[:, self.unit_index(units)]       # [K, C]

    def weights_removed(self) -> torch.Tensor:
        """Structure.weights_removed for the current masks, float64 [K, U+1] (last column 1)."""
        if self._weights_removed is None:
            wr = self.st.weights_removed(self.keep).to(torch.float64)
            self._weights_removed = torch.cat([wr, wr.new_ones(self.K, 1)], 1)
        return self._weights_removed

    # -- weights -------------------------------------------------------------------------------
    def masked_weight(self, name: str) -> torch.Tensor:
        """A layer's weights with removed inputs and outputs zeroed, [K, O, I/G, k]."""
        L = self.st.layers[name]
        W = self.model.get_submodule(name).weight.detach()
        G, O, I = L.groups, L.out_channels, L.in_channels
        W = W.reshape(O, I // G, -1)                       # [O, I/G, k]
        a_in, a_out = self.act_of(L.in_units).to(W.dtype), self.act_of(L.out_units).to(W.dtype)
        in_idx = (torch.arange(O, device=W.device) // (O // G))[:, None] * (I // G) + torch.arange(I // G, device=W.device)
        return W[None] * a_in[:, in_idx][..., None] * a_out[:, :, None, None]

    def weight_x(self, name: str, consumer: bool) -> torch.Tensor:
        """Masked weights [K, 1, C, E]: producer rows (C = out, plus the bias) or consumer slices (C = in)."""
        L = self.st.layers[name]
        m = self.model.get_submodule(name)
        G, O = L.groups, L.out_channels
        Wm = self.masked_weight(name)                      # [K, O, I/G, k]
        if not consumer:
            x = Wm.reshape(self.K, O, -1)
            if m.bias is not None:
                x = torch.cat([x, m.bias.detach()[None, :, None].expand(self.K, O, 1)], -1)
            return x[:, None]
        return to_input_major(Wm, G)[:, None]

    def weight_g(self, sig, B: int, name: str, which: int, consumer: bool) -> torch.Tensor | None:
        """Per-image weight gradients (``which`` 0) or LM curvature (1) laid out as ``weight_x``, [K, B, C, E]."""
        g, gb, h, hb = sig.weight_grad[name]
        t, tb = (g, gb) if which == 0 else (h, hb)
        if t is None:
            return None
        L = self.st.layers[name]
        t = t.reshape(self.K, B, L.out_channels, -1)
        if not consumer:
            if tb is not None:
                t = torch.cat([t, tb.reshape(self.K, B, L.out_channels, 1)], -1)
            return t
        k = t.shape[-1] // (L.in_channels // L.groups)
        t = t.reshape(self.K * B, L.out_channels, L.in_channels // L.groups, k)
        return to_input_major(t, L.groups).reshape(self.K, B, L.in_channels, -1)

    # -- elements and counts (the base input's registered kernel) --------------------------------
    def elements(self, sig, B: int, name: str, base: str, consumer: bool):
        """(x, g, h) of a site for a chunk of B images per trajectory, each broadcastable to [K, B, C, E]."""
        return registered("base_input", base).fn(self, sig, B, name, consumer)

    def counts(self, name: str, base: str, consumer: bool) -> torch.Tensor:
        """Elements per channel (producer) or per input slice (consumer), [K, C] float64 (bias not counted)."""
        return registered("base_input", base).counts(self, name, consumer)
