"""Component kernels: one registered, vectorised function per pointwise function and reduction.

Shapes: element tensors are ``[..., C, E]`` (channels, elements); a pointwise kernel maps the
value ``x``, its gradient ``g`` and LM curvature ``h`` (either may be None when not needed) to
``f`` of the same shape; a reduction maps ``f`` to ``[..., C]`` by reducing the last dim.
Adding a component is one registered function here plus its taxonomy entry (and a test).
"""
from __future__ import annotations

from typing import Callable

import torch

from taxonomy import vocab
from taxonomy.errors import SpecError

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


def kernel(axis: str, name: str):
    table = {"pointwise": POINTWISE, "reduction": REDUCTIONS}[axis]
    if name not in table:
        raise SpecError(f"no {axis} kernel for {name!r}: register one with metrics.kernels.{axis}(); "
                        f"known: {', '.join(table)}")
    return table[name]
