"""The metric space: presets, filters and the redundancy rules that make the paper's 308.

Order is stable: the product of the axes in registration order (input, pointwise, reduction,
scaling, structure, aggregation), so ``metric_space("paper")[i]`` never moves.
"""
from __future__ import annotations

import fnmatch
import itertools
from typing import Iterable

from prunetax.taxonomy import vocab as C
from prunetax.taxonomy.errors import SpecError
from prunetax.taxonomy.spec import MetricSpec, validity_problem

PRESETS = {
    "paper": "the taxonomy paper's 308: 2 inputs x 7 pointwise x 5 reductions x 5 scalings, less its 42 redundant combinations",
    "domino": "paper x {channel, domino_o, domino_io} = 924",
    "extended": "every valid combination with the extension axes (BatchNorm inputs, indicator, batch aggregation), less provable duplicates",
}


def paper_redundancy(base_input: str, pointwise: str, reduction: str, scaling: str) -> str | None:
    """The authors' two exclusion rules (docs/taxonomy.md, "The 308 rule"), or None when the combination is kept."""
    if pointwise == "hessian_gn" and reduction in ("sum", "l1", "abs_sum"):
        return "hessian_gn is non-negative, so sum, l1 and abs_sum agree (the authors drop all three)"
    if (base_input == "weight" and pointwise == "taylor" and reduction in ("sum", "abs_sum", "sqr_sum")
            and scaling != "elements"):
        return ("sum over a filter of w*g equals the sum over its output map of a*g: "
                "it repeats an activation metric")
    return None


def extended_redundancy(spec: MetricSpec) -> str | None:
    """Duplicates in the extended space: a reason to drop ``spec``, or None to keep it."""
    b, p, r, s, t, a = spec.components()
    reason = paper_redundancy(b, p, r, s)
    if reason:
        return reason
    if p == "indicator" and r in ("l1", "l2", "abs_sum"):
        return "indicator is 0 or 1: l1, l2 and abs_sum equal sum"
    if b in ("bn_weight", "bn_bias"):
        if r in ("abs_sum", "sqr_sum"):
            return "one element per channel: abs_sum equals l1 and sqr_sum equals l2"
        if s == "elements":
            return "one element per channel: elements scaling equals none"
    if a == "batch" and p == "value" and b != "activation":
        return "value of a parameter does not depend on the image: batch equals per_image"
    return None


def _product(paper_only: bool, structures: Iterable[str], aggregations: Iterable[str]):
    axes = [C.ids(axis, paper_only) for axis in ("base_input", "pointwise", "reduction", "scaling")]
    for (b, p, r, s), t, a in itertools.product(itertools.product(*axes), structures, aggregations):
        if validity_problem(b, p, r, s, t, a) is None:
            yield MetricSpec(b, p, r, s, t, a)


def _preset(preset: str) -> list[MetricSpec]:
    if preset == "paper":
        return [m for m in _product(True, ["channel"], ["per_image"])
                if paper_redundancy(*m.components()[:4]) is None]
    if preset == "domino":
        return [m for m in _product(True, C.ids("structure", True), ["per_image"])
                if paper_redundancy(*m.components()[:4]) is None]
    if preset == "extended":
        return [m for m in _product(False, C.ids("structure"), C.ids("aggregation"))
                if extended_redundancy(m) is None]
    raise SpecError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def excluded(preset: str) -> list[tuple[MetricSpec, str]]:
    """The combinations a preset drops as redundant, each with the reason."""
    if preset == "paper":
        return [(m, paper_redundancy(*m.components()[:4]))
                for m in _product(True, ["channel"], ["per_image"])
                if paper_redundancy(*m.components()[:4])]
    if preset == "extended":
        return [(m, extended_redundancy(m)) for m in _product(False, C.ids("structure"), C.ids("aggregation"))
                if extended_redundancy(m)]
    if preset == "domino":
        return [(m, paper_redundancy(*m.components()[:4]))
                for m in _product(True, C.ids("structure", True), ["per_image"])
                if paper_redundancy(*m.components()[:4])]
    raise SpecError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def metric_space(preset: str = "paper", pattern: str | None = None, **components) -> list[MetricSpec]:
    """The specs of a preset, filtered by a glob on the id and by component values.

    ``components`` maps an axis (``base_input``, ``pointwise``, ``reduction``, ``scaling``,
    ``structure``, ``aggregation``) to one id or a collection of ids; authors' names work too.

    >>> len(metric_space("paper"))
    308
    """
    specs = _preset(preset)
    for axis, wanted in components.items():
        if wanted is None:
            continue
        if axis not in C.AXES:
            raise SpecError(f"unknown component axis {axis!r}; choose one of {', '.join(C.AXES)}")
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        allowed = {C.get(axis, v).id for v in values}
        specs = [m for m in specs if getattr(m, axis) in allowed]
    if pattern:
        pats = [p.strip() for p in pattern.split(",") if p.strip()]
        specs = [m for m in specs
                 if any(fnmatch.fnmatchcase(m.id, p) or
                        (m.authors_name and fnmatch.fnmatchcase(m.authors_name, p)) for p in pats)]
    return specs


def count(preset: str = "paper", pattern: str | None = None, **components) -> int:
    return len(metric_space(preset, pattern, **components))
