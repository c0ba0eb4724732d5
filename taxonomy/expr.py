"""Metric expressions (sums, products, scalar multiples of specs) and named literature metrics.

An expression is a sum of terms; a term is a coefficient times a product of specs. Its
canonical text is ``coef * spec * spec + spec ...`` (coefficient 1 omitted), e.g. GFBS:
``bn_weight-value-l1-layer_l2 * bn_weight-gradient-l1-layer_l2@batch + 0.05 * bn_bias-value-sum-layer_l2``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from prunetax.taxonomy.errors import SpecError
from prunetax.taxonomy.spec import MetricSpec


@dataclass(frozen=True)
class Term:
    coef: float
    factors: tuple[MetricSpec, ...]

    def __str__(self) -> str:
        parts = [str(f) for f in self.factors]
        if self.coef != 1.0 or not parts:
            parts.insert(0, _fmt(self.coef))
        return " * ".join(parts)


def _fmt(x: float) -> str:
    return repr(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class MetricExpr:
    """A composite metric. ``spec_a * spec_b + 0.05 * spec_c`` builds one from specs."""

    terms: tuple[Term, ...]

    def __str__(self) -> str:
        return " + ".join(str(t) for t in self.terms)

    @property
    def id(self) -> str:
        return str(self)

    @property
    def specs(self) -> tuple[MetricSpec, ...]:
        """The distinct leaf specs, in order of appearance."""
        seen: dict[MetricSpec, None] = {}
        for t in self.terms:
            for f in t.factors:
                seen.setdefault(f, None)
        return tuple(seen)

    def evaluate(self, values: dict) -> object:
        """Combine per-spec values (numbers or tensors, keyed by spec) into the expression's value."""
        total = None
        for t in self.terms:
            v = t.coef
            for f in t.factors:
                v = v * values[f]
            total = v if total is None else total + v
        return total

    def __add__(self, other):
        return MetricExpr(self.terms + as_expr(other).terms)

    __radd__ = __add__

    def __mul__(self, other):
        if isinstance(other, (int, float)):
            return MetricExpr(tuple(Term(t.coef * other, t.factors) for t in self.terms))
        other = as_expr(other)
        return MetricExpr(tuple(Term(a.coef * b.coef, a.factors + b.factors)
                                for a in self.terms for b in other.terms))

    __rmul__ = __mul__


def as_expr(x) -> MetricExpr:
    if isinstance(x, MetricExpr):
        return x
    if isinstance(x, MetricSpec):
        return MetricExpr((Term(1.0, (x,)),))
    if isinstance(x, (int, float)):
        return MetricExpr((Term(float(x), ()),))
    raise SpecError(f"cannot build a metric expression from {type(x).__name__}")


# spec arithmetic builds expressions
MetricSpec.__add__ = lambda self, other: as_expr(self) + other  # type: ignore[attr-defined]
MetricSpec.__radd__ = lambda self, other: as_expr(other) + self  # type: ignore[attr-defined]
MetricSpec.__mul__ = lambda self, other: as_expr(self) * other  # type: ignore[attr-defined]
MetricSpec.__rmul__ = lambda self, other: as_expr(other) * self  # type: ignore[attr-defined]


@dataclass(frozen=True)
class NamedMetric:
    name: str
    definition: str          # a spec id or an expression text
    citation: str
    note: str = ""

    @property
    def metric(self) -> MetricSpec | MetricExpr:
        return parse_metric(self.definition)


NAMED: dict[str, NamedMetric] = {}


def register_named(name: str, definition: str, citation: str, note: str = "") -> NamedMetric:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise SpecError(f"named metric {name!r} must be lower-case letters, digits and '_'")
    named = NamedMetric(name, definition, citation, note)
    named.metric  # validate now
    NAMED[name] = named
    return named


_NUMBER = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_metric(text: str) -> MetricSpec | MetricExpr:
    """Parse a spec id, an authors' name, a named metric or an expression of them."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError("empty metric; give a metric id, a named metric or an expression")
    text = text.strip()
    if "+" not in text and "*" not in text:
        return _parse_factor(text)
    terms = []
    for term_text in text.split("+"):
        coef, factors = 1.0, []
        for factor_text in term_text.split("*"):
            factor_text = factor_text.strip()
            if _NUMBER.match(factor_text):
                coef *= float(factor_text)
                if not math.isfinite(coef):
                    raise SpecError(f"coefficient {factor_text!r} is not finite in {text!r}")
                continue
            factor = as_expr(_parse_factor(factor_text, context=text))
            if len(factor.terms) != 1:  # a named expression used as a factor: distribute
                raise SpecError(f"named expression {factor_text!r} cannot be a factor in {text!r}; "
                                "write its terms out")
            coef *= factor.terms[0].coef
            factors.extend(factor.terms[0].factors)
        terms.append(Term(coef, tuple(factors)))
    return MetricExpr(tuple(terms))


def _parse_factor(text: str, context: str | None = None) -> MetricSpec | MetricExpr:
    if not text:
        raise SpecError(f"empty term in metric expression {context!r}")
    if "-" not in text:
        if text in NAMED:
            return NAMED[text].metric
        raise SpecError(f"unknown named metric {text!r}; choose one of {', '.join(NAMED)}, "
                        "or give an id input-pointwise-reduction-scaling[-structure][@aggregation]")
    return MetricSpec.parse(text)


register_named("filter_l1", "weight-value-l1-none", "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017")
register_named("filter_l2", "weight-value-l2-none", "Li et al. 2017 (L2 variant, as in the taxonomy paper)")
register_named("mean_activation", "activation-value-l1-elements",
               "Polyak & Wolf, Channel-level acceleration of deep face representations, 2015")
register_named("taylor_molchanov", "activation-taylor-abs_sum-elements",
               "Molchanov et al., Pruning Convolutional Neural Networks for Resource Efficient Inference, ICLR 2017")
register_named("fisher", "activation-taylor-sqr_sum-none",
               "Theis et al., Faster gaze prediction with dense networks and Fisher pruning, 2018",
               "the authors halve it, which does not change the ranking")
register_named("mean_gradient", "activation-gradient-abs_sum-elements", "Persand et al. 2021 (taxonomy paper)")
register_named("mean_squared_weight", "weight-value-l2-elements", "Persand et al. 2021 (taxonomy paper)")
register_named("apoz", "activation-indicator-sum-elements",
               "Hu et al., Network Trimming, 2016",
               "fraction of positive activations (1 - APoZ); low means prune first")
register_named("network_slimming", "bn_weight-value-l1-none",
               "Liu et al., Learning Efficient Convolutional Networks through Network Slimming, ICCV 2017")
register_named("gfbs",
               "bn_weight-value-l1-layer_l2 * bn_weight-gradient-l1-layer_l2@batch + 0.05 * bn_bias-value-sum-layer_l2",
               "Liu et al., Exploring Gradient Flow Based Saliency for DNN Model Compression, ACM MM 2021",
               "|gamma|/||gamma||_2 * |dL/dgamma|/||dL/dgamma||_2 + 0.05 * beta/||beta||_2, gradient over the batch")
