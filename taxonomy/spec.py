"""MetricSpec: one saliency metric as a frozen value object whose id is its canonical string."""
from __future__ import annotations

from dataclasses import dataclass, fields

from prunetax.taxonomy import vocab as C
from prunetax.taxonomy.errors import SpecError

_BN_INPUTS = ("bn_weight", "bn_bias")


def validity_problem(base_input: str, pointwise: str, reduction: str, scaling: str,
                     structure: str, aggregation: str) -> str | None:
    """Why this combination is not a metric, or None when it is one.

    These are semantic rules (the combination is undefined), not redundancy rules; the
    enumerator's presets apply the redundancy rules on top.
    """
    if pointwise == "indicator" and base_input != "activation":
        return "pointwise 'indicator' needs base input 'activation' (it counts positive activations)"
    if base_input in _BN_INPUTS and structure == "domino_io":
        return (f"structure 'domino_io' is undefined for base input {base_input!r}: consumers have "
                "no BatchNorm parameter for the channel; use 'channel' or 'domino_o'")
    return None


@dataclass(frozen=True, order=True)
class MetricSpec:
    """One metric: ``input-pointwise-reduction-scaling[-structure][@batch]``.

    >>> str(MetricSpec.parse("activation-taylor-abs_sum_norm-weights_removed"))
    'activation-taylor-abs_sum-weights_removed'
    """

    base_input: str
    pointwise: str
    reduction: str
    scaling: str
    structure: str = "channel"
    aggregation: str = "per_image"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            canonical = C.get(f.name, value).id  # raises SpecError naming the valid choices
            if canonical != value:
                object.__setattr__(self, f.name, canonical)
        problem = validity_problem(*self.components())
        if problem:
            raise SpecError(f"invalid metric {self._text()!r}: {problem}")

    def components(self) -> tuple[str, str, str, str, str, str]:
        """The six components in the order of the axes (``vocab.AXES``)."""
        return tuple(getattr(self, axis) for axis in C.AXES)

    def _text(self) -> str:
        text = f"{self.base_input}-{self.pointwise}-{self.reduction}-{self.scaling}"
        if self.structure != "channel":
            text += f"-{self.structure}"
        if self.aggregation != "per_image":
            text += f"@{self.aggregation}"
        return text

    @property
    def id(self) -> str:
        return self._text()

    def __str__(self) -> str:
        return self._text()

    def replace(self, **changes) -> "MetricSpec":
        values = dict(zip((f.name for f in fields(self)), self.components()))
        values.update(changes)
        return MetricSpec(**values)

    @property
    def authors_name(self) -> str | None:
        """The authors' name (``{input}-{pointwise}-{reduction}_norm-{scaling}``) for the 350
        combinations of their code; None for structures, aggregations and inputs they lacked."""
        if self.structure != "channel" or self.aggregation != "per_image":
            return None
        parts = [C.get(axis, value) for axis, value in zip(C.AXES, self.components()[:4])]
        if any(not p.paper or p.authors_name is None for p in parts):
            return None
        return "-".join(p.authors_name for p in parts)

    @classmethod
    def parse(cls, text: str) -> "MetricSpec":
        """Parse a canonical id or an authors' name; raise SpecError naming the bad part."""
        if not isinstance(text, str):
            raise SpecError(f"a metric id must be a string, not {type(text).__name__}")
        raw = text.strip()
        body, at, aggregation = raw.partition("@")
        if at and not aggregation:
            raise SpecError(f"empty aggregation after '@' in {raw!r}; choose one of "
                            f"{', '.join(C.ids('aggregation'))}")
        parts = body.split("-")
        if len(parts) not in (4, 5) or any(p == "" for p in parts):
            raise SpecError(
                f"malformed metric id {raw!r}: expected input-pointwise-reduction-scaling"
                "[-structure][@aggregation], e.g. activation-taylor-abs_sum-weights_removed-domino_io")
        values = dict(zip(C.AXES, parts))     # the id's parts in the axes' order; aggregation after '@'
        if aggregation:
            values["aggregation"] = aggregation
        try:
            return cls(**values)
        except SpecError as exc:
            message = str(exc)
            if raw not in message:
                message = f"{message} (in {raw!r})"
            raise SpecError(message) from None

    def describe(self) -> dict[str, str]:
        """Each component's id, description and formula, plus the whole formula."""
        out: dict[str, str] = {"id": self.id}
        for axis, value in zip(C.AXES, self.components()):
            comp = C.get(axis, value)
            out[axis] = f"{comp.id}: {comp.description} ({comp.formula})"
        out["formula"] = self.formula()
        out["latex"] = self.latex()
        return out

    def formula(self) -> str:
        """The whole metric in plain text, unit saliency of channel c of producer l."""
        pw = C.get("pointwise", self.pointwise).formula.removeprefix("f = ")
        red = {"sum": "sum_{x in X(c)} {f}", "l1": "sum_{x in X(c)} |{f}|",
               "l2": "sum_{x in X(c)} ({f})^2", "abs_sum": "|sum_{x in X(c)} {f}|",
               "sqr_sum": "(sum_{x in X(c)} {f})^2"}.get(self.reduction, self.reduction + "({f})")
        if self.aggregation == "batch":
            s = f"s(c) = {red.replace('{f}', 'fbar')}, fbar = (1/N) sum_n ({pw})"
        else:
            s = f"s(c) = (1/N) sum_n {red.replace('{f}', pw)}"
        structure = {"channel": "D(c) = s_l(c)",
                     "domino_o": "D(c) = s_l(c) + sum_{l' in P(l)} s_l'(c)",
                     "domino_io": "D(c) = s_l(c) + sum_{l' in P(l)} s_l'(c) + sum_{k in C(l)} s_in^k(c)"}
        divisor = C.get("scaling", self.scaling).formula.removeprefix("divisor = ")
        x = C.get("base_input", self.base_input).formula
        return (f"S(c) = D(c) / d(c);  {structure.get(self.structure, self.structure)};  {s};  "
                f"{x};  d(c) = {divisor} (0 becomes 1)")

    def latex(self) -> str:
        pw = C.get("pointwise", self.pointwise).latex.removeprefix("f = ")
        red = {"sum": r"\sum_{x \in X_c} F", "l1": r"\sum_{x \in X_c} \left|F\right|",
               "l2": r"\sum_{x \in X_c} \left(F\right)^2", "abs_sum": r"\left|\sum_{x \in X_c} F\right|",
               "sqr_sum": r"\left(\sum_{x \in X_c} F\right)^2"}.get(self.reduction, "R(F)")
        if self.aggregation == "batch":
            s = red.replace("F", r"\frac{1}{N}\sum_n " + pw)
        else:
            s = r"\frac{1}{N}\sum_n " + red.replace("F", pw)
        d = C.get("scaling", self.scaling).latex.removeprefix("d = ")
        struct = {"channel": "", "domino_o": r" + \sum_{l' \in P(l)} (\cdot)_{l'}",
                  "domino_io": r" + \sum_{l' \in P(l)} (\cdot)_{l'} + \sum_{k \in C(l)} (\cdot)^k_{in}"}
        return rf"S(c) = \frac{{{s}{struct.get(self.structure, '')}}}{{{d}}}"
