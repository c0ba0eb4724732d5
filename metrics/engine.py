"""Evaluate many metrics from one pass: pointwise -> reduction -> aggregation -> Domino -> scaling.

docs/metrics.md defines every quantity. Everything is vectorised over K trajectories (each with
its own keep mask) and over channels; metrics that share a (site, pointwise, aggregation) share
its pointwise tensor, and all metrics share one forward/backward pass.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from prunetax.metrics.kernels import NEEDS, STAT_OF, fast_pointwise, fast_reduction, kernel, pointwise_stats
from prunetax.metrics.signals import Needs, Signals, collect
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.expr import MetricExpr, parse_metric
from prunetax.taxonomy.spec import MetricSpec

_BN = ("bn_weight", "bn_bias")
# per-image weight gradients (and activation chunks) are processed this many bytes of one layer at
# a time per tensor: bounded memory, and temporaries that stay in cache (1-4 MiB measured best on CPU)
WEIGHT_CHUNK_BYTES = 2 * 2**20         # per temporary tensor on a CPU: sized for its caches
GPU_WEIGHT_CHUNK_BYTES = 256 * 2**20   # on a GPU: big enough that a chunk is a few large kernels


def as_metrics(specs) -> list[MetricSpec | MetricExpr]:
    out = []
    for s in ([specs] if isinstance(specs, (str, MetricSpec, MetricExpr)) else specs):
        out.append(parse_metric(s) if isinstance(s, str) else s)
    if not out:
        raise PrunetaxError("no metrics given")
    return out


def leaf_specs(metrics) -> list[MetricSpec]:
    seen: dict[MetricSpec, None] = {}
    for m in metrics:
        for s in (m.specs if isinstance(m, MetricExpr) else (m,)):
            seen.setdefault(s, None)
    return list(seen)


def plan(structure, specs: list[MetricSpec]) -> Needs:
    """Which signals the specs need on this network."""
    needs = Needs()
    producers = structure.producers
    conv_consumers = structure.conv_consumers
    for s in specs:
        kernel("pointwise", s.pointwise)  # raises for a component without a kernel
        nd = NEEDS[s.pointwise]
        needs.grad |= "g" in nd
        needs.lm |= "h" in nd
        if s.base_input == "activation":
            needs.act.update(producers)
            if s.structure == "domino_io":
                needs.act_in.update(conv_consumers)
        elif s.base_input == "weight":
            if nd:
                needs.weight.update(producers)
                if s.structure == "domino_io":
                    needs.weight.update(conv_consumers)
        elif s.base_input in _BN:
            missing = [p for p in producers if structure.layers[p].bn is None]
            if missing:
                raise PrunetaxError(f"metric {s} reads BatchNorm parameters but producer '{missing[0]}' has no "
                                    "BatchNorm of its own; use a weight or activation metric on this network")
            needs.bn.update(producers)
        else:
            raise PrunetaxError(f"no engine support for base input {s.base_input!r}")
    return needs


class Accumulator:
    """Saliency statistics summed over chunks of images, then finalised into S(l, c).

    Per-image reductions are linear in the images (a running sum of R(f_n)); batch aggregation
    keeps the running sum of f itself and reduces at the end. Structure and scaling are applied
    once, in ``channel_saliency``, after every chunk has been added.
    """

    def __init__(self, model, structure, metrics, keep: torch.Tensor):
        self.model, self.st = model, structure
        self.metrics = list(metrics)
        self.specs = leaf_specs(self.metrics)
        self.needs = plan(structure, self.specs)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.keep = keep.to(device=device, dtype=torch.bool)  # [K, U]
        self.K, self.U = self.keep.shape
        self.active = torch.cat([self.keep, self.keep.new_ones(self.K, 1)], 1).to(torch.float64)  # [K, U+1]
        self.sums: dict = {}
        self.spatial: dict = {}   # (layer, consumer) -> activation elements per channel
        self.n = 0
        self.sig: Signals | None = None
        self.B = 0
        self._sites = self._site_keys()
        self._fast = None
        self._index: dict = {}
        self.chunk_bytes = WEIGHT_CHUNK_BYTES if device.type == "cpu" else GPU_WEIGHT_CHUNK_BYTES

    def _site_keys(self) -> dict:
        """(name, base, pointwise, aggregation, consumer) -> reductions needed, for every spec."""
        conv_consumers = self.st.conv_consumers
        sites: dict[tuple, set] = {}
        for s in self.specs:
            names = [(p, False) for p in self.st.producers]
            if s.structure == "domino_io":
                names += [(c, True) for c in conv_consumers]
            for name, consumer in names:
                sites.setdefault((name, s.base_input, s.pointwise, s.aggregation, consumer), set()).add(s.reduction)
        return sites

    def add(self, sig: Signals, images_per_trajectory: int) -> None:
        """Add the signals of one chunk: K trajectories x ``images_per_trajectory`` images."""
        self.sig, self.B = sig, images_per_trajectory
        elements: dict = {}
        for (name, base, pw, agg, consumer), reductions in self._sites.items():
            if base == "activation":
                x = (self.sig.act_in if consumer else self.sig.act)[name][0]
                self.spatial[(name, consumer)] = x.shape[-1]
            fast = agg == "per_image" and fast_pointwise(pw) and all(fast_reduction(r) for r in reductions)
            if fast:
                continue   # below, shared with the other sites of the same elements
            if (name, base, consumer) not in elements:
                elements[(name, base, consumer)] = self.elements(name, base, consumer)
            x, g, h = elements[(name, base, consumer)]
            f = kernel("pointwise", pw)(x, g, h)              # [K, B or 1, C, E]
            if agg == "batch":
                total = f.sum(1) if f.shape[1] == self.B else f[:, 0] * self.B
                self._accumulate((name, base, pw, agg, consumer), total)
            else:
                for red in reductions:
                    r = kernel("reduction", red)(f).to(torch.float64)
                    total = r.sum(1) if r.shape[1] == self.B else r[:, 0] * self.B
                    self._accumulate((name, base, pw, agg, consumer, red), total)
        del elements
        for (name, base), roles in self._fast_groups().items():
            if base == "weight":
                stats = self._weight_stats(name, roles)
            else:
                stats = self._element_stats(name, base, roles)
            for consumer, want in roles.items():
                # every (pointwise, reduction) of the site in one stacked tensor: one cast, one
                # abs and one square for the reductions made from the per-image sum, one sum
                # over the images (a statistic with one row, e.g. of weights alone, counts B times)
                by_rows: dict = {}
                for pw, reductions in want.items():
                    for red in reductions:
                        stat = stats[consumer][(pw, STAT_OF[red])]
                        by_rows.setdefault(stat.shape[1] == self.B, []).append((pw, red, stat))
                for per_image, items in by_rows.items():
                    # abs_sum rows, then sqr_sum rows, each a contiguous slice made in place
                    items.sort(key=lambda it: {"abs_sum": 1, "sqr_sum": 2}.get(it[1], 0))
                    T = torch.stack([t for _, _, t in items]).to(torch.float64)     # [M, K, B or 1, C]
                    for op, name_ in (("abs_", "abs_sum"), ("square_", "sqr_sum")):
                        rows = [i for i, (_, red, _) in enumerate(items) if red == name_]
                        if rows:
                            getattr(T[rows[0]:rows[-1] + 1], op)()
                    totals = T.sum(2) if per_image else T[:, :, 0] * self.B
                    for i, (pw, red, _) in enumerate(items):
                        self._accumulate((name, base, pw, "per_image", consumer, red), totals[i])
        self.n += images_per_trajectory
        self.sig = None

    def _fast_groups(self) -> dict:
        """(name, base) -> {consumer: {pointwise: reductions}} of the sites on the shared path."""
        if self._fast is None:
            groups: dict = {}
            for (name, base, pw, agg, consumer), reductions in self._sites.items():
                if agg == "per_image" and fast_pointwise(pw) and all(fast_reduction(r) for r in reductions):
                    groups.setdefault((name, base), {}).setdefault(consumer, {})[pw] = set(reductions)
            self._fast = groups
        return self._fast

    @staticmethod
    def _stat_sets(roles: dict) -> dict:
        want: dict = {}
        for per_pw in roles.values():
            for pw, reductions in per_pw.items():
                want.setdefault(pw, set()).update(STAT_OF[r] for r in reductions)
        return want

    def _element_stats(self, name: str, base: str, roles: dict) -> dict:
        """consumer -> {(pointwise, statistic): [K, B or 1, C]} for activation and BatchNorm sites."""
        out = {}
        for consumer, per_pw in roles.items():
            x, g, h = self.elements(name, base, consumer)
            want = self._stat_sets({consumer: per_pw})
            res: dict = {}

            def put(st, b0=None, b1=None):
                for key, (r,) in st.items():
                    if r.shape[0] != self.K:
                        r = r.expand(self.K, *r.shape[1:])
                    if b0 is None:
                        res[key] = r
                    else:
                        if key not in res:
                            res[key] = r.new_empty(self.K, self.B, r.shape[-1])
                        res[key][:, b0:b1] = r
            # statistics of x alone when x is the same for every image (BatchNorm parameters)
            const = {pw: v for pw, v in want.items() if x.shape[1] == 1 and not (NEEDS[pw] & {"g", "h"})}
            if const:
                put(pointwise_stats(x, None, None, const, lambda t: (t.sum(-1),)))
            varying = {pw: v for pw, v in want.items() if pw not in const}
            if varying:
                # chunks of images (about ``chunk_bytes`` per tensor) keep the temporaries in cache
                ref = next((t for t in (x, g, h) if t is not None and t.shape[1] > 1), x)
                chunk = self.weight_chunk(ref[0, 0].numel() * ref.element_size())
                for b0 in range(0, self.B, chunk):
                    b1 = min(self.B, b0 + chunk)
                    part = [None if t is None else (t if t.shape[1] == 1 else t[:, b0:b1]) for t in (x, g, h)]
                    put(pointwise_stats(*part, varying, lambda t: (t.sum(-1),)), *((None, None) if chunk >= self.B
                                                                                    else (b0, b1)))
            out[consumer] = res
        return out

    def _weight_stats(self, name: str, roles: dict) -> dict:
        """Weight statistics of a layer's rows (producer) and input slices (consumer) from one pass
        over its per-image gradients, formed ``chunk`` images at a time; the bias is one more
        element of each producer row. consumer -> {(pointwise, statistic): [K, B or 1, C]}."""
        L = self.st.layers[name]
        m = self.model.get_submodule(name)
        G, O, I = L.groups, L.out_channels, L.in_channels
        Ig = I // G
        Wm = self.masked_weight(name)                                  # [K, O, I/G, k]
        kk = Wm.shape[-1]
        bias = m.bias.detach() if m.bias is not None else None
        want = self._stat_sets(roles)
        need_g = any("g" in NEEDS[pw] for pw in want)
        need_h = any("h" in NEEDS[pw] for pw in want)
        prod, cons = False in roles, True in roles
        want_b = self._stat_sets({False: roles[False]}) if prod and bias is not None else {}

        def reduce(t):                                                  # [..., O, I/G, k]
            lead = t.shape[:-3]
            out = ()
            if prod:   # one contiguous reduction over the row (a small inner dim k reduces slowly)
                out += (t.reshape(*lead, O, Ig * kk).sum(-1),)
            if cons:   # over the group's outputs first (an outer-dim sum), then k on O/G x less data
                out += (t.reshape(*lead, G, O // G, Ig, kk).sum(-3).sum(-1).reshape(*lead, I),)
            return out

        def one(t):
            return (t.sum(-1),)

        roles_order = [c for c in (False, True) if c in roles]
        const = {pw: sts for pw, sts in want.items() if not (NEEDS[pw] & {"g", "h"})}
        varying = {k: v for k, v in want.items() if k not in const}
        bufs: dict = {}

        def store(kidx, rows, stats, bias_stats):
            for key, rs in stats.items():
                for role, r in zip(roles_order, rs):
                    if role is False and bias_stats is not None and key in bias_stats:
                        r = r + bias_stats[key][0]
                    if (role, key) not in bufs:
                        B = self.B if rows is not None else 1
                        bufs[(role, key)] = r.new_empty(self.K, B, r.shape[-1])
                    if rows is None:
                        bufs[(role, key)][kidx, 0] = r
                    else:
                        bufs[(role, key)][kidx, rows] = r

        # every trajectory at once: weights [K, 1, O, I/G, k] against per-image gradients [K, n, ...]
        if const:
            st = pointwise_stats(Wm, None, None, const, reduce)
            bst = pointwise_stats(bias[:, None], None, None, {p: want_b[p] for p in const if p in want_b},
                                  one) if want_b else None
            store(slice(None), None, st, bst)
        if varying:
            chunk = self.weight_chunk(self.K * O * Ig * kk * Wm.element_size())
            grads = self.sig.weight_grad
            vb = {p: want_b[p] for p in varying if p in want_b}
            for b0 in range(0, self.B, chunk):
                b1 = min(self.B, b0 + chunk)
                n = b1 - b0
                g, gb, h, hb = grads.block(name, self.K, self.B, b0, b1, h=need_h)
                g = g.view(self.K, n, O, Ig, kk) if need_g else None
                h = h.view(self.K, n, O, Ig, kk) if h is not None else None
                st = pointwise_stats(Wm[:, None], g, h, varying, reduce)
                bst = None
                if vb:
                    bst = pointwise_stats(bias[:, None], gb.view(self.K, n, O, 1),
                                          None if hb is None else hb.view(self.K, n, O, 1), vb, one)
                store(slice(None), slice(b0, b1), st, bst)
        out: dict = {c: {} for c in roles_order}
        for (role, key), buf in bufs.items():
            out[role][key] = buf
        return out

    def weight_chunk(self, bytes_per_image: int) -> int:
        """Images per chunk of per-image weight gradients: about ``chunk_bytes`` per tensor."""
        return max(1, min(self.B, self.chunk_bytes // max(1, bytes_per_image)))

    def _accumulate(self, key, value) -> None:
        value = value.to(torch.float64) if key[3] != "batch" else value
        self.sums[key] = value if key not in self.sums else self.sums[key] + value

    def reduced(self, name: str, spec: MetricSpec, consumer: bool) -> torch.Tensor:
        """s(c): the aggregated, reduced saliency of a site, float64 [K, C]."""
        if self.n == 0:
            raise PrunetaxError("no images: give at least one saliency batch")
        base = (name, spec.base_input, spec.pointwise, spec.aggregation, consumer)
        if spec.aggregation == "batch":
            return kernel("reduction", spec.reduction)(self.sums[base] / self.n).to(torch.float64)
        return self.sums[base + (spec.reduction,)] / self.n

    def summed(self, name: str, spec: MetricSpec, consumer: bool) -> torch.Tensor:
        """``reduced`` times the image count for per-image aggregation (the running sum itself,
        so that many sites are divided by n in one operation), ``reduced`` for batch aggregation."""
        if spec.aggregation == "batch":
            return self.reduced(name, spec, consumer)
        if self.n == 0:
            raise PrunetaxError("no images: give at least one saliency batch")
        return self.sums[(name, spec.base_input, spec.pointwise, spec.aggregation, consumer, spec.reduction)]

    def per_image_divisor(self, specs: list) -> torch.Tensor:
        """[len(specs), 1, 1]: n for per-image specs, 1 for batch ones (turns ``summed`` into ``reduced``)."""
        return torch.tensor([1.0 if s.aggregation == "batch" else float(self.n) for s in specs],
                            dtype=torch.float64, device=self.active.device)[:, None, None]

    # -- active-channel masks and element counts ---------------------------------------------------
    def weights_removed(self) -> torch.Tensor:
        """Structure.weights_removed for the current masks, float64 [K, U+1] (last column 1)."""
        if "weights_removed" not in self.sums:
            wr = self.st.weights_removed(self.keep).to(torch.float64)
            self.sums["weights_removed"] = torch.cat([wr, wr.new_ones(self.K, 1)], 1)
        return self.sums["weights_removed"]

    def unit_index(self, units: torch.Tensor) -> torch.Tensor:
        """``units`` as column indices into [K, U+1] (removed-layer id -1 -> the last column),
        from the structure's per-device cache."""
        return self.st.device_index(units, self.active.device)

    def act_of(self, units: torch.Tensor) -> torch.Tensor:
        return self.active[:, self.unit_index(units)]       # [K, C]

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
        """Masked weights [K, 1, C, E]: producer rows (C = out) or consumer slices (C = in)."""
        L = self.st.layers[name]
        m = self.model.get_submodule(name)
        G, O = L.groups, L.out_channels
        Wm = self.masked_weight(name)                      # [K, O, I/G, k]
        if not consumer:
            x = Wm.reshape(self.K, O, -1)
            if m.bias is not None:
                x = torch.cat([x, m.bias.detach()[None, :, None].expand(self.K, O, 1)], -1)
            return x[:, None]
        return _to_input_major(Wm, G)[:, None]

    def weight_g(self, name: str, which: int, consumer: bool) -> torch.Tensor | None:
        g, gb, h, hb = self.sig.weight_grad[name]
        t, tb = (g, gb) if which == 0 else (h, hb)
        if t is None:
            return None
        L = self.st.layers[name]
        t = t.reshape(self.K, self.B, L.out_channels, -1)
        if not consumer:
            if tb is not None:
                t = torch.cat([t, tb.reshape(self.K, self.B, L.out_channels, 1)], -1)
            return t
        k = t.shape[-1] // (L.in_channels // L.groups)
        t = t.reshape(self.K * self.B, L.out_channels, L.in_channels // L.groups, k)
        return _to_input_major(t, L.groups).reshape(self.K, self.B, L.in_channels, -1)

    def counts(self, name: str, base: str, consumer: bool) -> torch.Tensor:
        """Elements per channel (producer) or per input slice (consumer), [K, C] float64."""
        L = self.st.layers[name]
        dev = self.active.device
        if base in _BN:
            return torch.ones(self.K, L.out_channels, dtype=torch.float64, device=dev)
        if base == "activation":
            C = L.in_channels if consumer else L.out_channels
            return torch.full((self.K, C), float(self.spatial[(name, consumer)]), dtype=torch.float64, device=dev)
        G = L.groups
        if consumer:
            per_group = self.act_of(L.out_units).view(self.K, G, -1).sum(-1)
            return per_group.repeat_interleave(L.in_channels // G, 1) * L.kernel
        per_group = self.act_of(L.in_units).view(self.K, G, -1).sum(-1)
        return per_group.repeat_interleave(L.out_channels // G, 1) * L.kernel

    # -- per-channel reduced saliency s ------------------------------------------------------------
    def elements(self, name: str, base: str, consumer: bool):
        """(x, g, h) for a site, each broadcastable to [K, B, C, E]."""
        if base == "activation":
            x, g, h = (self.sig.act_in if consumer else self.sig.act)[name]
            r = lambda t: None if t is None else t.reshape(self.K, self.B, *t.shape[1:])  # noqa: E731
            return r(x), r(g), r(h)
        if base == "weight":
            return (self.weight_x(name, consumer),
                    self.weight_g(name, 0, consumer) if name in self.sig.weight_grad else None,
                    self.weight_g(name, 1, consumer) if name in self.sig.weight_grad else None)
        bn = self.model.get_submodule(self.st.layers[name].bn)
        gg, gb, hg, hb = self.sig.bn[name]
        p, g, h = (bn.weight, gg, hg) if base == "bn_weight" else (bn.bias, gb, hb)
        if p is None:
            raise PrunetaxError(f"BatchNorm '{self.st.layers[name].bn}' has no affine {base[3:]}")
        r = lambda t: None if t is None else t.reshape(self.K, self.B, -1, 1)  # noqa: E731
        return p.detach().reshape(1, 1, -1, 1), r(g), r(h)


def _to_input_major(t: torch.Tensor, G: int) -> torch.Tensor:
    """[..., O, I/G, k] -> [..., I, (O/G)*k]: the slice each input channel feeds, per group."""
    *lead, O, Ig, k = t.shape
    t = t.reshape(*lead, G, O // G, Ig, k).transpose(-3, -2)      # [..., G, I/G, O/G, k]
    return t.reshape(*lead, G * Ig, (O // G) * k)


def channel_saliency(ctx: Accumulator, spec: MetricSpec) -> dict[str, torch.Tensor]:
    """S(l, c) for every producer l: float64 [K, C_l]; +inf for removed channels."""
    st, K, U = ctx.st, ctx.K, ctx.U
    producers = st.producers
    s = {p: ctx.reduced(p, spec, False) for p in producers}
    n = {p: ctx.counts(p, spec.base_input, False) for p in producers} if spec.scaling == "elements" else None
    if spec.structure == "channel":
        D, E = s, n
    else:
        dev = ctx.active.device
        tot = torch.zeros(K, U + 1, dtype=torch.float64, device=dev)
        cnt = torch.zeros(K, U + 1, dtype=torch.float64, device=dev) if n is not None else None
        for p in producers:
            u = st.device_index(st.layers[p].out_units, dev)
            tot.index_add_(1, u, s[p])
            if cnt is not None:
                cnt.index_add_(1, u, n[p])
        if spec.structure == "domino_io":
            for name, L in st.layers.items():
                if name not in st.conv_consumers:
                    continue
                u = st.device_index(L.in_units, dev)
                tot.index_add_(1, u, ctx.reduced(name, spec, True))
                if cnt is not None:
                    cnt.index_add_(1, u, ctx.counts(name, spec.base_input, True))
        tot[:, U] = 0
        D = {p: tot[:, st.device_index(st.layers[p].out_units, dev)] for p in producers}
        E = {p: cnt[:, st.device_index(st.layers[p].out_units, dev)] for p in producers} if cnt is not None else None
    out = {}
    wr = ctx.weights_removed() if spec.scaling == "weights_removed" else None
    for p in producers:
        L = st.layers[p]
        kept = ctx.act_of(L.out_units) > 0
        d = D[p]
        if spec.scaling == "none":
            div = torch.ones_like(d)
        elif spec.scaling == "elements":
            div = E[p]
        elif spec.scaling == "layer_l1":
            div = torch.where(kept, d.abs(), 0).sum(1, keepdim=True).expand_as(d)
        elif spec.scaling == "layer_l2":
            div = torch.where(kept, d * d, 0).sum(1, keepdim=True).sqrt().expand_as(d)
        elif spec.scaling == "weights_removed":
            div = wr[:, ctx.unit_index(L.out_units)]
        else:
            raise PrunetaxError(f"no engine support for scaling {spec.scaling!r}")
        div = torch.where(div == 0, torch.ones_like(div), div)
        v = d / div
        out[p] = torch.where(kept & ~torch.isnan(v), v, torch.full_like(v, float("inf")))
    return out


def unit_saliency(structure, channel_values: dict[str, torch.Tensor], K: int) -> torch.Tensor:
    """A unit is as weak as its weakest member: min over members, [K, U]; +inf where none."""
    U = structure.num_units
    dev = next(iter(channel_values.values())).device
    out = torch.full((K, U + 1), float("inf"), dtype=torch.float64, device=dev)
    for p, v in channel_values.items():
        u = structure.device_index(structure.layers[p].out_units, dev)
        out.scatter_reduce_(1, u.expand(K, -1), v, reduce="amin", include_self=True)
    return out[:, :U]


def row_unit_saliency(acc: Accumulator, values: dict, row_metrics: list) -> torch.Tensor:
    """Unit saliency [K, U] of trajectory row k under its own metric ``row_metrics[k]``.

    ``values`` is ``finalize(acc)``. The same as ``unit_saliency`` of each row under its metric,
    but one gather and one scatter for all rows, whatever the number of metrics and producers.
    """
    lay = _layout(acc)
    K, U, dev = acc.K, acc.U, acc.active.device
    if len(row_metrics) != K:
        raise PrunetaxError(f"row_metrics has {len(row_metrics)} entries for {K} trajectories")
    rows = torch.arange(K, device=dev)
    v, pos = acc._index.get("values", (None, {}))
    if all(m in pos for m in row_metrics):          # specs: rows of the finalize tensor [S, K, C]
        V = v[torch.tensor([pos[m] for m in row_metrics], device=dev), rows]
    else:
        metrics = list(dict.fromkeys(row_metrics))
        mi = {m: i for i, m in enumerate(metrics)}
        V = torch.stack([torch.cat([values[m][p] for p in lay["producers"]], 1) for m in metrics])
        V = V[torch.tensor([mi[m] for m in row_metrics], device=dev), rows]
    out = torch.full((K, U + 1), float("inf"), dtype=torch.float64, device=dev)
    out.scatter_reduce_(1, lay["u_all"].expand(K, -1), V, reduce="amin", include_self=True)
    return out[:, :U]


def _layout(acc: Accumulator) -> dict:
    """All producers' channels side by side: unit column, producer index, offsets, kept mask."""
    if "layout" not in acc._index:
        st = acc.st
        producers = st.producers
        sizes = [st.layers[p].out_channels for p in producers]
        dev = acc.active.device
        u_all = torch.cat([acc.unit_index(st.layers[p].out_units) for p in producers])
        p_all = torch.cat([torch.full((c,), i, dtype=torch.long, device=dev) for i, c in enumerate(sizes)])
        offsets = [0]
        for c in sizes:
            offsets.append(offsets[-1] + c)
        consumers = st.conv_consumers
        acc._index["layout"] = dict(producers=producers, sizes=sizes, offsets=offsets, u_all=u_all, p_all=p_all,
                                    kept=acc.active[:, u_all] > 0, consumers=consumers)
    return acc._index["layout"]


def channel_saliencies(acc: Accumulator, specs: list[MetricSpec]) -> dict:
    """``channel_saliency`` of many specs at once, vectorised over specs and producers: specs
    that share a statistic share its Domino sums, and every scaling is one batched operation.
    spec -> {producer: float64 [K, C]} (views into one [specs, K, channels] tensor)."""
    lay = _layout(acc)
    producers, offsets, u_all, p_all, kept = (lay[k] for k in ("producers", "offsets", "u_all", "p_all", "kept"))
    K, U = acc.K, acc.U
    dev = acc.active.device
    keys = list(dict.fromkeys((s.base_input, s.pointwise, s.aggregation, s.reduction) for s in specs))
    kidx = {k: i for i, k in enumerate(keys)}
    spec_of = {k: next(s for s in specs if (s.base_input, s.pointwise, s.aggregation, s.reduction) == k)
               for k in keys}
    S = torch.stack([torch.cat([acc.summed(p, spec_of[k], False) for p in producers], 1) for k in keys])  # [M,K,C]
    S = S / acc.per_image_divisor([spec_of[k] for k in keys])
    cands = {"channel": S}
    io_keys = [k for k in keys if any(s.structure == "domino_io" and
                                      (s.base_input, s.pointwise, s.aggregation, s.reduction) == k for s in specs)]
    if any(s.structure != "channel" for s in specs):
        tot = torch.zeros(len(keys), K, U + 1, dtype=torch.float64, device=dev)
        tot.index_add_(2, u_all, S)
        if io_keys:
            sel = torch.tensor([kidx[k] for k in io_keys], device=dev)
            tot_io = tot.index_select(0, sel)
            io_div = acc.per_image_divisor([spec_of[k] for k in io_keys])
            for name in lay["consumers"]:
                u = acc.unit_index(acc.st.layers[name].in_units)
                tot_io.index_add_(2, u, torch.stack([acc.summed(name, spec_of[k], True) for k in io_keys]) / io_div)
            tot_io[..., U] = 0
            cands["domino_io"] = tot_io[..., u_all]
        tot[..., U] = 0
        cands["domino_o"] = tot[..., u_all]
    io_pos = {k: i for i, k in enumerate(io_keys)}

    def row(s):
        k = (s.base_input, s.pointwise, s.aggregation, s.reduction)
        return io_pos[k] if s.structure == "domino_io" else kidx[k]

    D = torch.empty(len(specs), K, S.shape[-1], dtype=torch.float64, device=dev)
    for structure, cand in cands.items():
        idx = [i for i, s in enumerate(specs) if s.structure == structure]
        if idx:
            D[torch.tensor(idx, device=dev)] = cand[torch.tensor([row(specs[i]) for i in idx], device=dev)]
    unknown = {s.structure for s in specs} - set(cands)
    if unknown:
        raise PrunetaxError(f"no engine support for structure {sorted(unknown)[0]!r}")

    div = torch.ones_like(D)
    P = len(producers)
    for scaling in dict.fromkeys(s.scaling for s in specs):
        idx = torch.tensor([i for i, s in enumerate(specs) if s.scaling == scaling], device=dev)
        if scaling == "none":
            continue
        if scaling == "elements":
            groups: dict = {}
            for i in (i for i, s in enumerate(specs) if s.scaling == scaling):
                groups.setdefault((specs[i].base_input, specs[i].structure), []).append(i)
            for (base, structure), rows in groups.items():
                div[torch.tensor(rows, device=dev)] = _element_counts(acc, base, structure)
        elif scaling in ("layer_l1", "layer_l2"):
            d = D[idx]
            part = torch.where(kept, d.abs() if scaling == "layer_l1" else d * d, 0)
            seg = torch.zeros(len(idx), K, P, dtype=torch.float64, device=dev).index_add_(2, p_all, part)
            div[idx] = (seg if scaling == "layer_l1" else seg.sqrt())[..., p_all]
        elif scaling == "weights_removed":
            div[idx] = acc.weights_removed()[:, u_all]
        else:
            raise PrunetaxError(f"no engine support for scaling {scaling!r}")
    div = torch.where(div == 0, torch.ones_like(div), div)
    v = D / div
    v = torch.where(kept & ~torch.isnan(v), v, torch.full_like(v, float("inf")))
    pos = {s: i for i, s in enumerate(specs)}
    acc._index["values"] = (v, pos)                                    # for row_unit_saliency
    return LazyValues(pos, lambda s: {p: v[pos[s], :, offsets[j]:offsets[j + 1]] for j, p in enumerate(producers)})


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


def _element_counts(acc: Accumulator, base: str, structure: str) -> torch.Tensor:
    """The ``elements`` divisor of every producer channel side by side, [K, channels] (cached)."""
    key = ("counts", base, structure)
    if key not in acc._index:
        lay = _layout(acc)
        n = torch.cat([acc.counts(p, base, False) for p in lay["producers"]], 1)
        if structure != "channel":
            U = acc.U
            cnt = torch.zeros(acc.K, U + 1, dtype=torch.float64, device=n.device).index_add_(1, lay["u_all"], n)
            if structure == "domino_io":
                for name in lay["consumers"]:
                    cnt.index_add_(1, acc.unit_index(acc.st.layers[name].in_units), acc.counts(name, base, True))
            n = cnt[:, lay["u_all"]]
        acc._index[key] = n
    return acc._index[key]


def finalize(acc: Accumulator) -> dict:
    """metric -> {producer -> S(l, c), float64 [K, C]}, NaN and removed channels as +inf."""
    st = acc.st
    leaves = channel_saliencies(acc, acc.specs)
    out = {}
    for m in acc.metrics:
        if isinstance(m, MetricSpec):
            continue
        vals = {}
        for p in st.producers:
            v = m.evaluate({s: leaves[s][p] for s in m.specs})
            kept = acc.act_of(st.layers[p].out_units) > 0
            vals[p] = torch.where(kept & ~torch.isnan(v), v, torch.full_like(v, float("inf")))
        out[m] = vals
    return LazyValues(acc.metrics, lambda m: out[m] if m in out else leaves[m])


def nonfinite_count(values: dict[str, torch.Tensor], acc: Accumulator) -> torch.Tensor:
    """Kept channels whose saliency is not finite (NaN became +inf), per trajectory [K]."""
    names = tuple(values)
    if not names:
        return torch.zeros(acc.K, dtype=torch.long, device=acc.keep.device)
    key = ("kept", names)
    if key not in acc._index:
        acc._index[key] = torch.cat([acc.act_of(acc.st.layers[p].out_units) > 0 for p in names], 1)
    v = torch.cat(list(values.values()), 1)
    return (acc._index[key] & ~torch.isfinite(v)).sum(1)
