"""Component kernels: one registered, vectorised function per pointwise function and reduction.

Shapes: element tensors are ``[..., C, E]`` (channels, elements); a pointwise kernel maps the
value ``x``, its gradient ``g`` and LM curvature ``h`` (either may be None when not needed) to
``f`` of the same shape; a reduction maps ``f`` to ``[..., C]`` by reducing the last dim.
Adding a component is one registered function here plus its taxonomy entry (and a test).
"""
from __future__ import annotations

from typing import Callable

import torch

from prunetax.taxonomy import vocab
from prunetax.taxonomy.errors import SpecError

Pointwise = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]

POINTWISE: dict[str, Pointwise] = {}
NEEDS: dict[str, frozenset[str]] = {}   # which signals a pointwise function reads: "g", "h"
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def pointwise(name: str, needs: tuple[str, ...] = ()):
    """Register the kernel of a taxonomy pointwise function."""
    vocab.get("pointwise", name)  # it must be a registered component

    def deco(fn: Pointwise) -> Pointwise:
        POINTWISE[name] = fn
        NEEDS[name] = frozenset(needs)
        return fn
    return deco


def reduction(name: str):
    vocab.get("reduction", name)

    def deco(fn):
        REDUCTIONS[name] = fn
        return fn
    return deco


@pointwise("value")
def _value(x, g, h):
    return x


@pointwise("gradient", needs=("g",))
def _gradient(x, g, h):
    return g.expand(torch.broadcast_shapes(x.shape, g.shape))


@pointwise("taylor", needs=("g",))
def _taylor(x, g, h):
    return -x * g


@pointwise("hessian_lm", needs=("h",))
def _hessian_lm(x, g, h):
    return 0.5 * x * x * h


@pointwise("hessian_gn", needs=("g",))
def _hessian_gn(x, g, h):
    return 0.5 * (x * g) ** 2


@pointwise("taylor2_lm", needs=("g", "h"))
def _taylor2_lm(x, g, h):
    return -x * g + 0.5 * x * x * h


@pointwise("taylor2_gn", needs=("g",))
def _taylor2_gn(x, g, h):
    xg = x * g
    return -xg + 0.5 * xg * xg


@pointwise("indicator")
def _indicator(x, g, h):
    return (x > 0).to(x.dtype)


@reduction("sum")
def _sum(f):
    return f.sum(-1)


@reduction("l1")
def _l1(f):
    return f.abs().sum(-1)


@reduction("l2")
def _l2(f):
    return (f * f).sum(-1)


@reduction("abs_sum")
def _abs_sum(f):
    return f.sum(-1).abs()


@reduction("sqr_sum")
def _sqr_sum(f):
    return f.sum(-1) ** 2


# The kernels above as registered here: the engine's shared fast path (``pointwise_stats``) is
# used only while a component still maps to its built-in function (re-registering one switches
# that component back to the generic per-spec path).
BUILTIN_POINTWISE = dict(POINTWISE)
BUILTIN_REDUCTIONS = dict(REDUCTIONS)
STAT_OF = {"sum": "sum", "abs_sum": "sum", "sqr_sum": "sum", "l1": "l1", "l2": "l2"}  # reduction -> statistic


def fast_pointwise(name: str) -> bool:
    return name in BUILTIN_POINTWISE and POINTWISE.get(name) is BUILTIN_POINTWISE[name] and name != "indicator"


def fast_reduction(name: str) -> bool:
    return name in STAT_OF and REDUCTIONS.get(name) is BUILTIN_REDUCTIONS[name]


def pointwise_stats(x, g, h, want: dict, reduce) -> dict:
    """The statistics ``sum`` (Σf), ``l1`` (Σ|f|), ``l2`` (Σf²) of several built-in pointwise
    functions f of the same elements, sharing the work: ``x*g`` once for taylor, hessian_gn and
    taylor2_gn (``(x*g)²`` once for hessian_gn and taylor's l2), ``x²h/2`` once for hessian_lm
    and taylor2_lm; hessian_gn and hessian_lm are non-negative, so their l1 is their sum.

    ``want``: {pointwise: set of statistics}; ``reduce(t)`` maps an element tensor to a tuple of
    reduced tensors (one per role, e.g. producer rows and consumer slices). Returns
    {(pointwise, statistic): tuple}. Values equal the per-spec kernels up to float rounding.
    """
    tens: dict = {}
    memo: dict = {}

    def T(key, make):
        if key not in tens:
            tens[key] = make()
        return tens[key]

    def t():
        return T("t", lambda: x * g)

    def t2():
        return T("t2", lambda: t() * t())

    def q():
        return T("q", lambda: 0.5 * T("x2", lambda: x * x) * h)

    def R(key, make):
        if key not in memo:
            memo[key] = reduce(make())
        return memo[key]

    def stat(name, base, st):
        """statistic ``st`` of the element tensor ``base()`` (cached under ``name``)."""
        if st == "sum":
            return R((name, "sum"), base)
        if st == "l1":
            return R((name, "l1"), lambda: base().abs())
        if name == "t":
            return R(("t2", "sum"), t2)
        return R((name, "l2"), lambda: base().square())

    def mul(c, rs):
        return tuple(c * r for r in rs)

    out = {}
    for pw, stats in want.items():
        for st in stats:
            if pw == "value":
                r = stat("x", lambda: x, st)
            elif pw == "gradient":
                r = stat("g", lambda: g, st)
            elif pw == "taylor":
                r = mul(-1.0, stat("t", t, st)) if st == "sum" else stat("t", t, st)
            elif pw == "hessian_gn":
                r = mul(0.5, R(("t2", "sum"), t2)) if st != "l2" else mul(0.25, R(("t2", "l2"), lambda: t2().square()))
            elif pw == "hessian_lm":
                r = R(("q", "sum"), q) if st != "l2" else R(("q", "l2"), lambda: q().square())
            elif pw == "taylor2_gn":
                r = stat("f2gn", lambda: T("f2gn", lambda: 0.5 * t2() - t()), st)
            elif pw == "taylor2_lm":
                r = stat("f2lm", lambda: T("f2lm", lambda: q() - t()), st)
            else:
                raise KeyError(pw)
            out[(pw, st)] = r
    return out


def kernel(axis: str, name: str):
    table = {"pointwise": POINTWISE, "reduction": REDUCTIONS}[axis]
    if name not in table:
        raise SpecError(f"no {axis} kernel for {name!r}: register one with prunetax.metrics.kernels.{axis}(); "
                        f"known: {', '.join(table)}")
    return table[name]
