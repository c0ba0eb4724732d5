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


def globs(pattern: str | None) -> list[str]:
    """The comma-separated shell-style globs of ``pattern`` (none when None or blank). A glob
    with a ``[`` never closed is a SpecError (fnmatch would read it as a literal ``[``, which no
    metric id holds)."""
    out = []
    for p in (pattern or "").split(","):
        p = p.strip()
        if not p:
            continue
        i = 0
        while i < len(p):
            if p[i] == "[":
                j = i + 1
                if j < len(p) and p[j] == "!":
                    j += 1
                if j < len(p) and p[j] == "]":
                    j += 1
                while j < len(p) and p[j] != "]":
                    j += 1
                if j >= len(p):
                    raise SpecError(f"invalid glob {p!r}: the '[' at position {i} is never closed "
                                    f"(a glob uses *, ? and [abc]; no metric id holds '[')")
                i = j
            i += 1
        out.append(p)
    return out


def _nearest(glob: str, specs: list[MetricSpec]) -> str:
    """``: did you mean ...`` (the closest id or authors' name), a named metric's note, or an example id."""
    import difflib

    from prunetax.taxonomy.expr import NAMED
    if glob.lower() in NAMED:
        return f" ({glob} is a named metric, {NAMED[glob.lower()].definition}: 'prunetax describe {glob}')"
    names = [m.id for m in specs] + [m.authors_name for m in specs if m.authors_name]
    close = difflib.get_close_matches(glob, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else f" (ids look like {specs[0].id})"


def _matches(m: MetricSpec, p: str) -> bool:
    return fnmatch.fnmatchcase(m.id, p) or bool(m.authors_name and fnmatch.fnmatchcase(m.authors_name, p))


def metric_space(preset: str = "paper", pattern: str | None = None, *, strict: bool = False,
                 **components) -> list[MetricSpec]:
    """The specs of a preset, filtered by a glob on the id and by component values.

    ``pattern``: shell-style globs, comma-separated, on the canonical id or the authors' name
    (a ``[`` never closed is an error). ``strict``: each glob must match some metric of the
    preset (before the component filters), else a SpecError names it. ``components`` maps an
    axis (``base_input``, ``pointwise``, ``reduction``, ``scaling``, ``structure``,
    ``aggregation``) to one id or a collection of ids; authors' names work too.

    >>> len(metric_space("paper"))
    308
    """
    specs = _preset(preset)
    pats = globs(pattern)
    if strict:
        for p in pats:
            if not any(_matches(m, p) for m in specs):
                raise SpecError(f"glob {p!r} matches no metric id or authors' name of preset {preset}"
                                f"{_nearest(p, specs)}; 'prunetax enumerate --preset {preset}' lists them")
    for axis, wanted in components.items():
        if wanted is None:
            continue
        if axis not in C.AXES:
            raise SpecError(f"unknown component axis {axis!r}; choose one of {', '.join(C.AXES)}")
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        allowed = {C.get(axis, v).id for v in values}
        specs = [m for m in specs if getattr(m, axis) in allowed]
    if pats:
        specs = [m for m in specs if any(_matches(m, p) for p in pats)]
    return specs


def count(preset: str = "paper", pattern: str | None = None, *, strict: bool = False, **components) -> int:
    return len(metric_space(preset, pattern, strict=strict, **components))
