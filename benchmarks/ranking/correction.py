"""Multiple-comparison correction within a family of comparisons: Holm's step-down, or none.

Shared by ``leaderboard --versus`` (``ranking.versus``) and ``effects``
(``analysis.component_effects``); each says what its family is (docs/analysis.md, "Multiple
comparisons"). Pure Python and free of the project's statistics module (``analysis`` imports this
one): the caller passes the function that gives a t interval at another level.

For m comparisons with raw two-sided p-values p_(1) <= ... <= p_(m) (ties in the order given):

- Holm's adjusted p-value of the i-th: ``max over j <= i of min(1, (m - j + 1) p_(j))``; it is
  <= alpha exactly when Holm's step-down test at level alpha rejects that comparison;
- its corrected interval: the t interval at the level of the Holm step that decided it. A
  comparison Holm rejects, at step i, gets the ``1 - alpha / (m - i + 1)`` interval (i the first
  position of its p-value among ties); one it does not reject, when Holm stopped after r
  rejections, the ``1 - alpha / (m - r)`` interval, the level Holm stopped at. So the corrected
  interval excludes 0 exactly when the adjusted p-value is <= alpha.

``none``: the adjusted p-value is the raw one and the corrected interval the raw one.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["CORRECTIONS", "CORRECTION", "check_correction", "holm", "adjust", "correct"]

CORRECTIONS = ("holm", "none")
CORRECTION = "holm"       # the default of leaderboard --versus and effects


def check_correction(correction, name: str = "correction") -> str:
    """``correction`` when it is one of ``CORRECTIONS``, else a one-line error naming it as ``name``."""
    if correction not in CORRECTIONS:
        raise PrunetaxError(f"{name} {correction!r} is not known; choose holm (Holm's step-down within each "
                            "family, the default) or none (raw p-values and intervals)")
    return correction


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values of ``pvalues`` (one family), in their order."""
    m = len(pvalues)
    out = [0.0] * m
    running = 0.0
    for k, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        out[i] = running
    return out


def adjust(pvalues: Sequence[float], correction: str, alpha: float) -> list[tuple[float, float]]:
    """(adjusted p-value, alpha of the corrected interval) of each comparison of one family
    (module docstring); ``alpha`` = 1 - the confidence level of the raw intervals."""
    check_correction(correction)
    if correction == "none":
        return [(p, alpha) for p in pvalues]
    m = len(pvalues)
    adjusted = holm(pvalues)
    rejected = sum(1 for a in adjusted if a <= alpha)
    first: dict[float, int] = {}
    out: list[tuple[float, float]] = [(0.0, 0.0)] * m
    for k, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        first.setdefault(pvalues[i], k)
        level = alpha / (m - first[pvalues[i]]) if adjusted[i] <= alpha else alpha / (m - rejected)
        out[i] = (adjusted[i], level)
    return out


def correct(rows: list[dict], names: dict[str, str], correction: str, confidence: float,
            identity: Callable[[dict], Hashable | None], interval: Callable) -> None:
    """Correct one family in place: ``rows`` are its candidates, ``identity(row)`` a row's
    comparison (None: not in the family; rows with one identity are one comparison, counted
    once). ``names`` maps the roles ``p``, ``n``, ``low``, ``high`` (the raw test: p-value, number
    of values, t interval at ``confidence``) and ``p_adj``, ``level``, ``adj_low``, ``adj_high``,
    ``family`` (what is written) to columns. ``interval(low, high, n, confidence, level)``: the
    t interval of the same centre and standard error at ``level``.

    A row outside the family keeps its raw p-value and interval (at ``confidence``); ``family``
    is the family's size on every row."""
    alpha = 1.0 - confidence
    members: dict[Hashable, dict] = {}
    for r in rows:
        key = identity(r) if r[names["p"]] is not None else None
        if key is not None:
            members.setdefault(key, r)
    keys = list(members)
    result = dict(zip(keys, adjust([members[k][names["p"]] for k in keys], correction, alpha)))
    for r in rows:
        key = identity(r) if r[names["p"]] is not None else None
        p_adj, a = result[key] if key is not None else (r[names["p"]], alpha)
        low, high = r[names["low"]], r[names["high"]]
        if low is not None and a != alpha:
            low, high = interval(low, high, r[names["n"]], confidence, 1.0 - a)
        r[names["p_adj"]], r[names["family"]] = p_adj, len(keys)
        r[names["level"]] = None if low is None else confidence if a == alpha else 1.0 - a
        r[names["adj_low"]], r[names["adj_high"]] = low, high
