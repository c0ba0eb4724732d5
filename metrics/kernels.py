"""Component kernels: one registered function per component of every axis.

A metric's value is ``scaling(structure(aggregation(reduction(pointwise(x)))))`` (docs/metrics.md),
with ``x`` the elements of its base input; each of those six axes (the base input and the five
functions) has a registry here, and the engine (``prunetax.metrics.engine``) looks every
component up by its id, never by an ``if name == ...`` chain. Adding a component is one
``prunetax.taxonomy.register_component`` entry, one function registered here with the matching
decorator, and its test (tests/test_kernels.py):

- ``@register_base_input(id, signals, counts, layer_stats=None)``: ``(x, g, h) = fn(sites, sig, B,
  layer, consumer)``, the elements of one site (``layer`` read as a producer, its output
  channels, or with ``consumer`` as a consumer, its input slices) and their gradients and LM
  curvature for a chunk of ``B`` images per trajectory, each broadcastable to ``[K, B, C, E]``
  (``sites``: ``prunetax.metrics.engine.sites.Sites``, the keep masks and the model; ``sig``:
  ``prunetax.metrics.signals.Signals``, what the pass collected). ``signals(structure, spec, reads,
  consumers)`` says what the pass must collect for a spec: {``Needs`` field (``act``, ``act_in``,
  ``weight``, ``bn``): layer names}, given the signals its pointwise reads besides x (``reads``,
  a subset of {"g", "h"}) and whether its structure reads consumer slices (``consumers``); it
  raises ``PrunetaxError`` when the network lacks what the input reads; an empty dict means no
  image pass. ``counts(sites, layer, consumer)`` gives the elements per channel, float64 [K, C]
  (for the ``elements`` scaling). ``layer_stats(acc, sig, B, layer, roles)`` (optional) forms the
  fast-path statistics of a layer's sites itself (``weight`` streams its per-image gradients):
  for ``roles`` {consumer: {(pointwise, aggregation): reductions}} it returns {consumer:
  {(pointwise, statistic): [K, B or 1, C]}}; without it the engine forms them from ``fn``'s
  elements (``prunetax.metrics.engine.stream.Accumulator.element_stats``).
- ``@register_pointwise(id, needs=(), stats=None)``: ``f = fn(x, g, h)`` per element, shapes
  ``[..., C, E]`` (channels, elements); ``g``, ``h`` are None unless ``needs`` names them.
  ``stats`` (optional) is the pointwise's *statistics recipe* for the engine's shared fast path:
  ``stats(w, st)`` returns the statistic ``st`` (``sum`` Σf, ``l1`` Σ|f|, ``l2`` Σf²) of f formed
  from a :class:`SharedStats` workspace ``w``, which shares intermediates (``x*g``, ``x²h/2``)
  between the pointwise functions of the same elements. Without a recipe the component runs on
  the generic path (its kernel, then the reduction kernel), with the same meaning.
- ``@register_reduction(id, stat=None, finish=None)``: ``R = fn(f)`` reduces the last dim. ``stat``
  and ``finish`` (optional) say how the fast path forms it from a per-image statistic: the
  statistic ``stat`` of f, then ``finish`` applied in place to it in float64 (e.g. ``abs_``).
- ``@register_aggregation(id, reduce_first)``: over the images of the saliency batches. With
  ``reduce_first`` the running total is ``Σ_n R(f_n)`` (float64), else ``Σ_n f_n``; ``fn(total,
  reduce, n)`` turns the total of ``n`` images into the aggregated, reduced saliency ``s``.
  ``reduce_first`` aggregations get the total of many sites stacked in one tensor (``reduce`` is
  then None). Only ``reduce_first`` aggregations take the fast path.
- ``@register_structure(id, consumers=False)``: ``D = fn(own, consumer, ctx)`` sums a per-channel
  quantity over the channels a removal takes along (``own``: ``[..., C]``, every scored producer's
  channels side by side; ``consumer(name)``: the same quantity of consumer layer ``name``'s input
  slices, available when ``consumers=True``; ``ctx``: unit sums, see
  ``prunetax.metrics.engine.finalize.Layout``). It is applied to the saliencies and, for the
  ``elements`` scaling, to the element counts.
- ``@register_scaling(id)``: ``d = fn(D, specs, ctx)``: the divisor (broadcastable to ``D``,
  ``[M, K, C]``) of the Domino sums ``D`` of the ``M`` specs ``specs`` that use this scaling; ``ctx``
  gives the kept channels, per-layer sums, element counts and weights removed (see
  ``prunetax.metrics.engine.finalize.Layout``). A divisor of 0 is replaced by 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from prunetax.taxonomy import vocab
from prunetax.taxonomy.errors import PrunetaxError, SpecError

KERNEL_AXES = ("base_input", "pointwise", "reduction", "aggregation", "structure", "scaling")
STATISTICS = ("sum", "l1", "l2")       # what a SharedStats workspace forms: Σf, Σ|f|, Σf²


@dataclass(frozen=True)
class Kernel:
    """A registered component function and what the engine needs to know about it."""
    axis: str
    id: str
    fn: Callable
    needs: frozenset = frozenset()      # pointwise: signals read besides x ("g", "h")
    stats: Callable | None = None       # pointwise: statistics recipe for the shared fast path
    stat: str | None = None             # reduction: the per-image statistic it is formed from
    finish: Callable | None = None      # reduction: in-place float64 op on that statistic
    reduce_first: bool = True           # aggregation: running total of R(f_n) (else of f_n)
    consumers: bool = False             # structure: reads the consumer layers' input slices
    signals: Callable | None = None     # base input: what the pass collects for a spec
    counts: Callable | None = None      # base input: elements per channel of a site
    layer_stats: Callable | None = None  # base input: its own fast-path statistics of a layer's sites


_KERNELS: dict[str, dict[str, Kernel]] = {axis: {} for axis in KERNEL_AXES}


def _register(axis: str, name: str, **info):
    comp = vocab.get(axis, name)          # it must be a registered taxonomy component
    if comp.id in _KERNELS[axis]:
        raise SpecError(f"{axis} {comp.id!r} already has a kernel; unregister_kernel({axis!r}, {comp.id!r}) first")

    def deco(fn):
        _KERNELS[axis][comp.id] = Kernel(axis, comp.id, fn, **info)
        return fn
    return deco


def register_base_input(name: str, signals: Callable, counts: Callable, layer_stats: Callable | None = None):
    """Register the kernel ``fn(sites, sig, B, layer, consumer) -> (x, g, h)`` of taxonomy base
    input ``name`` (a decorator), with ``signals`` and ``counts`` (and optionally
    ``layer_stats``): module docstring."""
    if not (callable(signals) and callable(counts)) or (layer_stats is not None and not callable(layer_stats)):
        raise SpecError(f"base input {name!r}: signals and counts (and layer_stats, if given) must be functions")
    return _register("base_input", name, signals=signals, counts=counts, layer_stats=layer_stats)


def register_pointwise(name: str, needs: tuple[str, ...] = (), stats: Callable | None = None):
    """Register the kernel ``fn(x, g, h) -> f`` of taxonomy pointwise ``name`` (a decorator).

    ``needs``: the signals it reads besides ``x``: ``"g"`` (the image's own gradient), ``"h"``
    (LM curvature). ``stats(w, st)``: optional statistics recipe (module docstring)."""
    bad = set(needs) - {"g", "h"}
    if bad:
        raise SpecError(f"pointwise {name!r} needs {sorted(bad)}: only 'g' and 'h' exist")
    return _register("pointwise", name, needs=frozenset(needs), stats=stats)


def register_reduction(name: str, stat: str | None = None, finish: Callable | None = None):
    """Register the kernel ``fn(f) -> R`` (reducing the last dim) of taxonomy reduction ``name``.

    ``stat``/``finish``: optional fast-path recipe, ``R = finish(statistic stat of f)``."""
    if stat is not None and stat not in STATISTICS:
        raise SpecError(f"reduction {name!r}: stat must be one of {', '.join(STATISTICS)}")
    if finish is not None and stat is None:
        raise SpecError(f"reduction {name!r}: finish needs stat")
    return _register("reduction", name, stat=stat, finish=finish)


def register_aggregation(name: str, reduce_first: bool):
    """Register ``fn(total, reduce, n) -> s`` of taxonomy aggregation ``name`` (module docstring)."""
    return _register("aggregation", name, reduce_first=bool(reduce_first))


def register_structure(name: str, consumers: bool = False):
    """Register ``fn(own, consumer, ctx) -> D`` of taxonomy structure ``name`` (module docstring)."""
    return _register("structure", name, consumers=bool(consumers))


def register_scaling(name: str):
    """Register ``fn(D, specs, ctx) -> divisor`` of taxonomy scaling ``name`` (module docstring)."""
    return _register("scaling", name)


def unregister_kernel(axis: str, name: str) -> None:
    """Remove a registered kernel (a plug-in's or a test's); unknown names are ignored."""
    if axis not in _KERNELS:
        raise SpecError(f"unknown kernel axis {axis!r}; choose one of {', '.join(KERNEL_AXES)}")
    _KERNELS[axis].pop(name, None)


def registered(axis: str, name: str) -> Kernel:
    """The registered kernel of component ``name`` on ``axis`` (raises SpecError naming the known ones)."""
    table = _KERNELS[axis]
    if name not in table:
        raise SpecError(f"no {axis} kernel for {name!r}: register one with prunetax.metrics.register_{axis}(); "
                        f"known: {', '.join(table)}")
    return table[name]


def kernel(axis: str, name: str) -> Callable:
    """The registered function of component ``name`` on ``axis``."""
    return registered(axis, name).fn


def registered_ids(axis: str) -> tuple[str, ...]:
    return tuple(_KERNELS[axis])


# -- the shared fast path ---------------------------------------------------------------------------
class SharedStats:
    """The elements ``x, g, h`` of one site and everything formed from them, each formed once.

    A statistics recipe asks for element tensors (``tensor``) and their statistics (``stat``);
    both are cached by key, so pointwise functions of the same elements share ``x*g`` (``xg``),
    ``(x*g)²`` (``xg2``) and ``x²h/2`` (``half_x2h``) and any statistic two recipes both need.
    ``reduce(t)`` maps an element tensor to a tuple of reduced tensors (one per role, e.g.
    producer rows and consumer slices); ``stat`` returns such a tuple.
    """

    def __init__(self, x, g, h, reduce):
        self.x, self.g, self.h, self.reduce = x, g, h, reduce
        self._tensors: dict = {}
        self._reduced: dict = {}

    def tensor(self, key, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The element tensor ``make()``, cached under ``key``."""
        if key not in self._tensors:
            self._tensors[key] = make()
        return self._tensors[key]

    def stat(self, key, make: Callable[[], torch.Tensor], st: str) -> tuple:
        """Statistic ``st`` (sum Σt, l1 Σ|t|, l2 Σt²) of the element tensor ``t = make()``
        (cached under ``(key, st)``; ``make`` is called only if the statistic is not cached)."""
        if (key, st) not in self._reduced:
            if st == "sum":
                t = make()
            elif st == "l1":
                t = make().abs()
            elif st == "l2":
                t = make().square()
            else:
                raise SpecError(f"unknown statistic {st!r}; choose one of {', '.join(STATISTICS)}")
            self._reduced[(key, st)] = self.reduce(t)
        return self._reduced[(key, st)]

    @staticmethod
    def scale(c: float, rs: tuple) -> tuple:
        return tuple(c * r for r in rs)

    # intermediates shared by the built-in recipes
    def xg(self) -> torch.Tensor:
        return self.tensor("t", lambda: self.x * self.g)

    def xg2(self) -> torch.Tensor:
        return self.tensor("t2", lambda: self.xg() * self.xg())

    def half_x2h(self) -> torch.Tensor:
        return self.tensor("q", lambda: 0.5 * self.tensor("x2", lambda: self.x * self.x) * self.h)


def fast_path(pointwise: str, aggregation: str, reductions) -> bool:
    """Whether a site takes the shared fast path: the pointwise and every reduction have a
    statistics recipe and the aggregation reduces each image first."""
    return (registered("aggregation", aggregation).reduce_first and registered("pointwise", pointwise).stats is not None
            and all(registered("reduction", r).stat is not None for r in reductions))


def pointwise_stats(x, g, h, want: dict, reduce) -> dict:
    """The statistics of several pointwise functions f of the same elements, sharing the work.

    ``want``: {pointwise: set of statistics}, each pointwise with a statistics recipe;
    ``reduce(t)`` maps an element tensor to a tuple of reduced tensors (one per role). Returns
    {(pointwise, statistic): tuple}. Values equal the per-spec kernels up to float rounding.
    """
    w = SharedStats(x, g, h, reduce)
    out = {}
    for pw, stats in want.items():
        recipe = registered("pointwise", pw).stats
        for st in stats:
            out[(pw, st)] = recipe(w, st)
    return out


# -- pointwise functions (per element, per image) ----------------------------------------------------
def _value_stats(w, st):
    return w.stat("x", lambda: w.x, st)


@register_pointwise("value", stats=_value_stats)
def _value(x, g, h):
    return x


def _gradient_stats(w, st):
    return w.stat("g", lambda: w.g, st)


@register_pointwise("gradient", needs=("g",), stats=_gradient_stats)
def _gradient(x, g, h):
    return g.expand(torch.broadcast_shapes(x.shape, g.shape))


def _taylor_stats(w, st):
    if st == "sum":
        return w.scale(-1.0, w.stat("t", w.xg, "sum"))
    if st == "l2":                                   # Σ(-xg)² = Σ(xg)², shared with hessian_gn
        return w.stat("t2", w.xg2, "sum")
    return w.stat("t", w.xg, st)


@register_pointwise("taylor", needs=("g",), stats=_taylor_stats)
def _taylor(x, g, h):
    return -x * g


def _hessian_lm_stats(w, st):                        # non-negative: l1 = sum
    return w.stat("q", w.half_x2h, "l2" if st == "l2" else "sum")


@register_pointwise("hessian_lm", needs=("h",), stats=_hessian_lm_stats)
def _hessian_lm(x, g, h):
    return 0.5 * x * x * h


def _hessian_gn_stats(w, st):                        # non-negative: l1 = sum
    if st == "l2":
        return w.scale(0.25, w.stat("t2", w.xg2, "l2"))
    return w.scale(0.5, w.stat("t2", w.xg2, "sum"))


@register_pointwise("hessian_gn", needs=("g",), stats=_hessian_gn_stats)
def _hessian_gn(x, g, h):
    return 0.5 * (x * g) ** 2


def _taylor2_lm_stats(w, st):
    return w.stat("f2lm", lambda: w.tensor("f2lm", lambda: w.half_x2h() - w.xg()), st)


@register_pointwise("taylor2_lm", needs=("g", "h"), stats=_taylor2_lm_stats)
def _taylor2_lm(x, g, h):
    return -x * g + 0.5 * x * x * h


def _taylor2_gn_stats(w, st):
    return w.stat("f2gn", lambda: w.tensor("f2gn", lambda: 0.5 * w.xg2() - w.xg()), st)


@register_pointwise("taylor2_gn", needs=("g",), stats=_taylor2_gn_stats)
def _taylor2_gn(x, g, h):
    xg = x * g
    return -xg + 0.5 * xg * xg


@register_pointwise("indicator")                    # no recipe: the generic path
def _indicator(x, g, h):
    return (x > 0).to(x.dtype)


# -- reductions (over a channel's elements, per image) ------------------------------------------------
@register_reduction("sum", stat="sum")
def _sum(f):
    return f.sum(-1)


@register_reduction("l1", stat="l1")
def _l1(f):
    return f.abs().sum(-1)


@register_reduction("l2", stat="l2")
def _l2(f):
    return (f * f).sum(-1)


@register_reduction("abs_sum", stat="sum", finish=torch.Tensor.abs_)
def _abs_sum(f):
    return f.sum(-1).abs()


@register_reduction("sqr_sum", stat="sum", finish=torch.Tensor.square_)
def _sqr_sum(f):
    return f.sum(-1) ** 2


# -- aggregations (over the images) -------------------------------------------------------------------
@register_aggregation("per_image", reduce_first=True)
def _per_image(total, reduce, n):
    """s = (1/N) Σ_n R(f_n): ``total`` is Σ_n R(f_n) (float64)."""
    return total / n


@register_aggregation("batch", reduce_first=False)
def _batch(total, reduce, n):
    """s = R((1/N) Σ_n f_n): ``total`` is Σ_n f_n, element by element."""
    return reduce(total / n).to(torch.float64)


# -- structures (which channels' saliencies are summed) --------------------------------------------
@register_structure("channel")
def _channel(own, consumer, ctx):
    """D(l, c) = s_l(c)."""
    return own


@register_structure("domino_o")
def _domino_o(own, consumer, ctx):
    """D(l, c) = Σ over the members of c's unit."""
    return ctx.to_channels(ctx.unit_sums(own))


@register_structure("domino_io", consumers=True)
def _domino_io(own, consumer, ctx):
    """domino_o plus the input slices of the unit in every conv consumer."""
    tot = ctx.unit_sums(own)
    for name in ctx.consumers:
        ctx.add_consumer(tot, name, consumer(name))
    return ctx.to_channels(tot)


# -- scalings (the divisor of D) ----------------------------------------------------------------------
@register_scaling("none")
def _none(D, specs, ctx):
    return torch.ones_like(D)


@register_scaling("elements")
def _elements(D, specs, ctx):
    """The elements summed into D: the structure applied to the element counts."""
    return ctx.element_counts(specs)


@register_scaling("layer_l1")
def _layer_l1(D, specs, ctx):
    """Σ_{c'} |D(l, c')| over the kept channels of the layer."""
    return ctx.layer_sum(torch.where(ctx.kept, D.abs(), 0))


@register_scaling("layer_l2")
def _layer_l2(D, specs, ctx):
    """sqrt(Σ_{c'} D(l, c')²) over the kept channels of the layer."""
    return ctx.layer_sum(torch.where(ctx.kept, D * D, 0)).sqrt()


@register_scaling("weights_removed")
def _weights_removed(D, specs, ctx):
    """Structure.weights_removed(keep) of the channel's unit."""
    return ctx.weights_removed()


# -- base inputs (the elements of a site) ---------------------------------------------------------------
def _activation_signals(structure, spec, reads, consumers):
    """The producers' mask-point activations and, for consumer slices, the conv consumers' inputs."""
    out = {"act": structure.producers}
    if consumers:
        out["act_in"] = structure.conv_consumers
    return out


def _activation_counts(sites, layer, consumer):
    """The spatial size of the activation (noted when the site's elements were formed)."""
    L = sites.st.layers[layer]
    C = L.in_channels if consumer else L.out_channels
    return torch.full((sites.K, C), float(sites.spatial[(layer, consumer)]), dtype=torch.float64,
                      device=sites.active.device)


@register_base_input("activation", signals=_activation_signals, counts=_activation_counts)
def _activation(sites, sig, B, layer, consumer):
    """The mask-point tensor of a producer, or the tensor entering a consumer, per image."""
    x, g, h = (sig.act_in if consumer else sig.act)[layer]
    sites.spatial[(layer, consumer)] = x.shape[-1]
    r = lambda t: None if t is None else t.reshape(sites.K, B, *t.shape[1:])  # noqa: E731
    return r(x), r(g), r(h)


def _weight_signals(structure, spec, reads, consumers):
    """Per-image weight gradients, when the pointwise reads g or h (weight values read no pass)."""
    if not reads:
        return {}
    return {"weight": [*structure.producers, *(structure.conv_consumers if consumers else [])]}


def _weight_counts(sites, layer, consumer):
    """Active inputs of the channel's group (consumer: active outputs of the slice's group) x kernel."""
    L = sites.st.layers[layer]
    G = L.groups
    if consumer:
        per_group = sites.act_of(L.out_units).view(sites.K, G, -1).sum(-1)
        return per_group.repeat_interleave(L.in_channels // G, 1) * L.kernel
    per_group = sites.act_of(L.in_units).view(sites.K, G, -1).sum(-1)
    return per_group.repeat_interleave(L.out_channels // G, 1) * L.kernel


def _weight_layer_stats(acc, sig, B: int, layer: str, roles: dict) -> dict:
    """Weight statistics of a layer's rows (producer) and input slices (consumer) from one pass
    over its per-image gradients, formed ``chunk`` images at a time; the bias is one more
    element of each producer row. consumer -> {(pointwise, statistic): [K, B or 1, C]}."""
    K = acc.K
    L = acc.sites.st.layers[layer]
    m = acc.sites.model.get_submodule(layer)
    G, O, I = L.groups, L.out_channels, L.in_channels
    Ig = I // G
    Wm = acc.sites.masked_weight(layer)                            # [K, O, I/G, k]
    kk = Wm.shape[-1]
    bias = m.bias.detach() if m.bias is not None else None
    want = acc.stat_sets(roles)
    need_g = any("g" in registered("pointwise", pw).needs for pw in want)
    need_h = any("h" in registered("pointwise", pw).needs for pw in want)
    prod, cons = False in roles, True in roles
    want_b = acc.stat_sets({False: roles[False]}) if prod and bias is not None else {}

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
    const = {pw: sts for pw, sts in want.items() if not (registered("pointwise", pw).needs & {"g", "h"})}
    varying = {k: v for k, v in want.items() if k not in const}
    bufs: dict = {}

    def store(rows, stats, bias_stats):
        for key, rs in stats.items():
            for role, r in zip(roles_order, rs):
                if role is False and bias_stats is not None and key in bias_stats:
                    r = r + bias_stats[key][0]
                if (role, key) not in bufs:
                    bufs[(role, key)] = r.new_empty(K, B if rows is not None else 1, r.shape[-1])
                if rows is None:
                    bufs[(role, key)][:, 0] = r
                else:
                    bufs[(role, key)][:, rows] = r

    # every trajectory at once: weights [K, 1, O, I/G, k] against per-image gradients [K, n, ...]
    if const:
        st = pointwise_stats(Wm, None, None, const, reduce)
        bst = pointwise_stats(bias[:, None], None, None, {p: want_b[p] for p in const if p in want_b},
                              one) if want_b else None
        store(None, st, bst)
    if varying:
        chunk = acc.weight_chunk(K * O * Ig * kk * Wm.element_size(), B)
        vb = {p: want_b[p] for p in varying if p in want_b}
        for b0 in range(0, B, chunk):
            b1 = min(B, b0 + chunk)
            n = b1 - b0
            g, gb, h, hb = sig.weight_grad.block(layer, K, B, b0, b1, h=need_h)
            g = g.view(K, n, O, Ig, kk) if need_g else None
            h = h.view(K, n, O, Ig, kk) if h is not None else None
            st = pointwise_stats(Wm[:, None], g, h, varying, reduce)
            bst = None
            if vb:
                bst = pointwise_stats(bias[:, None], gb.view(K, n, O, 1),
                                      None if hb is None else hb.view(K, n, O, 1), vb, one)
            store(slice(b0, b1), st, bst)
    out: dict = {c: {} for c in roles_order}
    for (role, key), buf in bufs.items():
        out[role][key] = buf
    return out


@register_base_input("weight", signals=_weight_signals, counts=_weight_counts, layer_stats=_weight_layer_stats)
def _weight(sites, sig, B, layer, consumer):
    """The masked weights (producer rows with the bias, or consumer slices) and, when the pass
    formed them, their per-image gradients and LM curvature."""
    grads = layer in sig.weight_grad
    return (sites.weight_x(layer, consumer),
            sites.weight_g(sig, B, layer, 0, consumer) if grads else None,
            sites.weight_g(sig, B, layer, 1, consumer) if grads else None)


def _bn_signals(structure, spec, reads, consumers):
    """The per-image gradients of every producer's own BatchNorm (it must have one), when the
    pointwise reads g or h (the parameters' values read no pass)."""
    missing = [p for p in structure.producers if structure.layers[p].bn is None]
    if missing:
        raise PrunetaxError(f"metric {spec} reads BatchNorm parameters but producer '{missing[0]}' has no "
                            "BatchNorm of its own; use a weight or activation metric on this network")
    return {"bn": structure.producers} if reads else {}


def _bn_counts(sites, layer, consumer):
    """One element per channel."""
    return torch.ones(sites.K, sites.st.layers[layer].out_channels, dtype=torch.float64, device=sites.active.device)


def bn_elements(sites, sig, B: int, layer: str, param: str):
    """(x, g, h) of the producer's own BatchNorm parameter ``param`` ("weight" γ or "bias" β):
    x [1, 1, C, 1], the same for every image and trajectory; g, h [K, B, C, 1], None where the
    pass did not form them (no pass collected this BatchNorm's gradients)."""
    bn = sites.model.get_submodule(sites.st.layers[layer].bn)
    gg, gb, hg, hb = sig.bn.get(layer, (None, None, None, None))
    p, g, h = (bn.weight, gg, hg) if param == "weight" else (bn.bias, gb, hb)
    if p is None:
        raise PrunetaxError(f"BatchNorm '{sites.st.layers[layer].bn}' has no affine {param}")
    r = lambda t: None if t is None else t.reshape(sites.K, B, -1, 1)  # noqa: E731
    return p.detach().reshape(1, 1, -1, 1), r(g), r(h)


@register_base_input("bn_weight", signals=_bn_signals, counts=_bn_counts)
def _bn_weight(sites, sig, B, layer, consumer):
    """The scale γ of the producer's own BatchNorm."""
    return bn_elements(sites, sig, B, layer, "weight")


@register_base_input("bn_bias", signals=_bn_signals, counts=_bn_counts)
def _bn_bias(sites, sig, B, layer, consumer):
    """The shift β of the producer's own BatchNorm."""
    return bn_elements(sites, sig, B, layer, "bias")
