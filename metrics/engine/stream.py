"""Streaming statistics: running sums over chunks of images, one site at a time or shared.

One job: ``Accumulator.add`` takes the signals of one chunk (K trajectories x B images) and adds
each site's contribution to its running total, as its aggregation defines it (a reduce-first
aggregation sums the per-image reductions in float64, the others sum f itself); ``aggregated``
turns the totals into the aggregated, reduced saliency ``s`` of many sites at once. Sites whose
components all have statistics recipes (``prunetax.metrics.kernels.fast_path``) share one pass
over their elements (``pointwise_stats``), formed a bounded chunk of images at a time, by the
base input's own ``layer_stats`` where it has one (``weight``: from its per-image gradients);
the others run their pointwise and reduction kernels.
"""
from __future__ import annotations

import torch

from prunetax.metrics.engine.plan import fast_groups, site_keys
from prunetax.metrics.kernels import kernel, pointwise_stats, registered
from prunetax.taxonomy.errors import PrunetaxError

# per-image weight gradients (and activation chunks) are processed this many bytes of one layer at
# a time per tensor: bounded memory, and temporaries that stay in cache (1-4 MiB measured best on CPU)
WEIGHT_CHUNK_BYTES = 2 * 2**20         # per temporary tensor on a CPU: sized for its caches
GPU_WEIGHT_CHUNK_BYTES = 256 * 2**20   # on a GPU: big enough that a chunk is a few large kernels


def default_chunk_bytes(device) -> int:
    """Bytes per temporary tensor of a chunk of images on ``device`` (read when an Accumulator is made)."""
    return WEIGHT_CHUNK_BYTES if torch.device(device).type == "cpu" else GPU_WEIGHT_CHUNK_BYTES


def image_sum(t: torch.Tensor, B: int) -> torch.Tensor:
    """Sum over the images (dim 1) of a [K, B or 1, ...] tensor; a single row (the same for every
    image, e.g. of weights alone) counts B times."""
    return t.sum(1) if t.shape[1] == B else t[:, 0] * B


def _needs(pw: str) -> frozenset:
    return registered("pointwise", pw).needs


def _stat(red: str) -> str:
    return registered("reduction", red).stat


class Accumulator:
    """Running totals of every site of ``specs`` over the images added so far.

    ``sums[(layer, base, pointwise, aggregation, consumer, reduction)]``: Σ_n R(f_n) (float64)
    for a reduce-first aggregation; ``sums[(layer, base, pointwise, aggregation, consumer)]``:
    Σ_n f_n (the model's dtype, [K, C, E]) for the others.
    """

    def __init__(self, sites, specs, chunk_bytes: int | None = None):
        self.sites = sites                                # prunetax.metrics.engine.sites.Sites
        self.K = sites.K
        self.sums: dict = {}
        self.n = 0                                        # images per trajectory added so far
        self._sites = site_keys(sites.st, specs)
        self._fast = fast_groups(self._sites)
        self._fast_sites = {(name, base, pw, agg, consumer)
                            for (name, base), roles in self._fast.items()
                            for consumer, want in roles.items() for (pw, agg) in want}
        self.chunk_bytes = chunk_bytes or default_chunk_bytes(sites.active.device)

    def _accumulate(self, key, value) -> None:
        self.sums[key] = value if key not in self.sums else self.sums[key] + value

    def add(self, sig, images_per_trajectory: int) -> None:
        """Add the signals of one chunk: K trajectories x ``images_per_trajectory`` images."""
        B = images_per_trajectory
        elements: dict = {}
        for site, reductions in self._sites.items():
            if site in self._fast_sites:
                continue   # below, shared with the other sites of the same elements
            name, base, pw, agg, consumer = site
            if (name, base, consumer) not in elements:
                elements[(name, base, consumer)] = self.sites.elements(sig, B, name, base, consumer)
            x, g, h = elements[(name, base, consumer)]
            f = kernel("pointwise", pw)(x, g, h)              # [K, B or 1, C, E]
            if not registered("aggregation", agg).reduce_first:
                self._accumulate(site, image_sum(f, B))
            else:
                for red in reductions:
                    r = kernel("reduction", red)(f).to(torch.float64)
                    self._accumulate(site + (red,), image_sum(r, B))
        del elements
        for (name, base), roles in self._fast.items():
            layer_stats = registered("base_input", base).layer_stats
            if layer_stats is not None:                   # the base input forms them itself
                stats = layer_stats(self, sig, B, name, roles)
            else:
                stats = self.element_stats(sig, B, name, base, roles)
            for consumer, want in roles.items():
                self._add_stats(name, base, consumer, want, stats[consumer], B)
        self.n += images_per_trajectory

    def _add_stats(self, name, base, consumer, want: dict, stats: dict, B: int) -> None:
        """Every (pointwise, aggregation, reduction) of a fast site from its statistics, in one
        stacked tensor: one cast, one in-place ``finish`` per kind (e.g. abs_, square_) on a
        contiguous slice, one sum over the images (a statistic with one row, e.g. of weights
        alone, counts B times)."""
        by_rows: dict = {}
        for (pw, agg), reductions in want.items():
            for red in reductions:
                stat = stats[(pw, _stat(red))]
                by_rows.setdefault(stat.shape[1] == B, []).append((pw, agg, red, stat))
        for per_image, items in by_rows.items():
            finish = [registered("reduction", red).finish for _, _, red, _ in items]
            rank = {fn: i + 1 for i, fn in enumerate(dict.fromkeys(f for f in finish if f is not None))}
            order = sorted(range(len(items)), key=lambda i: rank.get(finish[i], 0))   # each finish contiguous
            items, finish = [items[i] for i in order], [finish[i] for i in order]
            T = torch.stack([t for *_, t in items]).to(torch.float64)     # [M, K, B or 1, C]
            for fn in rank:
                rows = [i for i, f in enumerate(finish) if f is fn]
                fn(T[rows[0]:rows[-1] + 1])
            totals = T.sum(2) if per_image else T[:, :, 0] * B
            for i, (pw, agg, red, _) in enumerate(items):
                self._accumulate((name, base, pw, agg, consumer, red), totals[i])

    @staticmethod
    def stat_sets(roles: dict) -> dict:
        """{pointwise: statistics} that the reductions of ``roles`` ({consumer: {(pw, agg): reductions}}) need."""
        want: dict = {}
        for per_pw in roles.values():
            for (pw, _agg), reductions in per_pw.items():
                want.setdefault(pw, set()).update(_stat(r) for r in reductions)
        return want

    def element_stats(self, sig, B: int, name: str, base: str, roles: dict) -> dict:
        """consumer -> {(pointwise, statistic): [K, B or 1, C]} of a layer's fast sites, from the
        elements ``(x, g, h)`` of its base input (``Sites.elements``), a chunk of images at a time."""
        K = self.K
        out = {}
        for consumer, per_pw in roles.items():
            x, g, h = self.sites.elements(sig, B, name, base, consumer)
            want = self.stat_sets({consumer: per_pw})
            res: dict = {}

            def put(st, b0=None, b1=None):
                for key, (r,) in st.items():
                    if r.shape[0] != K:
                        r = r.expand(K, *r.shape[1:])
                    if b0 is None:
                        res[key] = r
                    else:
                        if key not in res:
                            res[key] = r.new_empty(K, B, r.shape[-1])
                        res[key][:, b0:b1] = r
            # statistics of x alone when x is the same for every image (BatchNorm parameters)
            const = {pw: v for pw, v in want.items() if x.shape[1] == 1 and not (_needs(pw) & {"g", "h"})}
            if const:
                put(pointwise_stats(x, None, None, const, lambda t: (t.sum(-1),)))
            varying = {pw: v for pw, v in want.items() if pw not in const}
            if varying:
                # chunks of images (about ``chunk_bytes`` per tensor) keep the temporaries in cache
                ref = next((t for t in (x, g, h) if t is not None and t.shape[1] > 1), x)
                chunk = self.weight_chunk(ref[0, 0].numel() * ref.element_size(), B)
                for b0 in range(0, B, chunk):
                    b1 = min(B, b0 + chunk)
                    part = [None if t is None else (t if t.shape[1] == 1 else t[:, b0:b1]) for t in (x, g, h)]
                    put(pointwise_stats(*part, varying, lambda t: (t.sum(-1),)), *((None, None) if chunk >= B
                                                                                    else (b0, b1)))
            out[consumer] = res
        return out

    def weight_chunk(self, bytes_per_image: int, B: int) -> int:
        """Images per chunk of per-image statistics: about ``chunk_bytes`` per tensor."""
        return max(1, min(B, self.chunk_bytes // max(1, bytes_per_image)))

    # -- the aggregated saliency s -------------------------------------------------------------
    def aggregated(self, names: list[str], consumer: bool, keys: list[tuple]) -> torch.Tensor:
        """s of the sites ``names`` (as producers or consumers) side by side, one row per stat key
        ``(base, pointwise, aggregation, reduction)``: float64 [len(keys), K, channels].

        A reduce-first aggregation finishes all its rows in one operation (``fn(total, None, n)``
        on the stacked totals); the others finish each site with its reduction kernel."""
        if self.n == 0:
            raise PrunetaxError("no images: give at least one saliency batch")
        cat = (lambda ts: ts[0]) if len(names) == 1 else (lambda ts: torch.cat(ts, -1))  # noqa: E731
        by_agg: dict = {}
        for i, key in enumerate(keys):
            by_agg.setdefault(key[2], []).append(i)
        parts, order = [], []
        for agg, rows in by_agg.items():
            A = registered("aggregation", agg)
            if A.reduce_first:
                T = torch.stack([cat([self.sums[(name, b, pw, agg, consumer, red)] for name in names])
                                 for b, pw, _, red in (keys[i] for i in rows)])
                parts.append(A.fn(T, None, self.n))
            else:
                parts.append(torch.stack([cat([A.fn(self.sums[(name, b, pw, agg, consumer)], kernel("reduction", red),
                                                    self.n) for name in names])
                                          for b, pw, _, red in (keys[i] for i in rows)]))
            order += rows
        if len(parts) == 1:
            return parts[0]
        S = torch.cat(parts)
        inverse = [0] * len(order)
        for pos, i in enumerate(order):
            inverse[i] = pos
        return S[torch.tensor(inverse, device=S.device)]
