"""``versus``: each metric of a leaderboard group against a reference, as paired differences in
rate over the cells where both ran, with a t interval at a confidence level the table records,
its two-sided t test, and the test and interval corrected within the group's family
(``correct_versus``; ``ranking.correction``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.vocab import AXES

if TYPE_CHECKING:  # pyarrow is imported where used: the command line builds its parser without it
    import pyarrow as pa

__all__ = ["VERSUS_COLUMNS", "CONFIDENCE", "CONFIDENCE_KEY", "parse_reference", "check_confidence",
           "paired_differences", "confidence_of", "interval_name", "correct_versus", "resolve_metric"]

# with ``versus``: the paired difference rate(metric) - rate(its reference) over the cells where both ran,
# its t test (vs_p), and the test and interval corrected within the group's family (vs_correction ...)
VERSUS_COLUMNS = ("versus", "vs_n", "vs_censored", "vs_mean", "vs_ci_low", "vs_ci_high", "vs_better", "vs_p",
                  "vs_correction", "vs_family", "vs_p_adj", "vs_adj_level", "vs_adj_low", "vs_adj_high")
CONFIDENCE = 0.95   # the level of the ``vs_ci_*`` interval unless one is asked
# The schema metadata key under which a leaderboard with ``VERSUS_COLUMNS`` records the level of
# its ``vs_ci_*`` interval: what its formats name the interval by.
CONFIDENCE_KEY = "prunetax_versus_confidence"


def resolve_metric(text: str, known) -> str | None:
    """The metric id of ``known`` that ``text`` names: itself, or a named metric's / expression's canonical id."""
    if text in known:
        return text
    from prunetax.taxonomy import parse_metric

    try:
        canonical = str(parse_metric(text))
    except Exception:  # not a metric at all: the caller says what is known
        return None
    return canonical if canonical in known else None


def parse_reference(text: str) -> tuple[str, str] | None:
    """``AXIS=LEVEL`` of ``versus`` as (axis, level), or None when ``text`` names a metric."""
    from prunetax.taxonomy.vocab import ids

    if "=" not in text:
        return None
    axis, _, level = (t.strip() for t in text.partition("="))
    if axis not in AXES:
        raise PrunetaxError(f"versus {text!r}: {axis!r} is not an axis; choose from {', '.join(AXES)} "
                            "(AXIS=LEVEL, e.g. scaling=none), or give a metric id")
    if level not in ids(axis):
        raise PrunetaxError(f"versus {text!r}: {level!r} is not a {axis} level; choose from {', '.join(ids(axis))}")
    return axis, level


def check_confidence(confidence: float) -> None:
    """A confidence level is in (0, 1), or an error."""
    if not 0 < confidence < 1:
        raise PrunetaxError(f"confidence must be in (0, 1), got {confidence}")


def confidence_of(table: "pa.Table") -> float:
    """The level of a leaderboard's ``vs_ci_*`` interval (``CONFIDENCE_KEY``; ``CONFIDENCE`` for a
    table that does not record it)."""
    meta = table.schema.metadata or {}
    value = meta.get(CONFIDENCE_KEY.encode())
    return CONFIDENCE if value is None else float(value)


def interval_name(confidence: float) -> str:
    """The name of the ``vs_ci_*`` interval at ``confidence``: ``95% ci``."""
    return f"{confidence * 100:g}% ci"


def _references(metrics: dict[str, list[dict]], versus: str, axis: tuple[str, str] | None) -> dict[str, str | None]:
    """Each metric's reference in one group: the metric ``versus`` names, or (``axis``) the one
    whose components differ from it only in that axis, set to its level; None where there is none."""
    if axis is None:
        named = resolve_metric(versus, metrics)    # one reference for the group
        return {metric: named for metric in metrics}
    comps: dict[tuple, str] = {}
    for metric, runs in metrics.items():  # the spec row wins over a named metric of the same components
        key = tuple(runs[0][c] for c in AXES)
        if None not in key and (key not in comps or runs[0]["kind"] == "spec"):
            comps[key] = metric
    i = AXES.index(axis[0])
    out = {}
    for metric, runs in metrics.items():
        key = tuple(runs[0][c] for c in AXES)
        out[metric] = None if None in key else comps.get(key[:i] + (axis[1],) + key[i + 1:])
    return out


def _paired(runs: list[dict], theirs: list[dict], confidence: float) -> dict:
    """The ``vs_*`` columns of a metric's ``runs`` against its reference's ``theirs``, cell by cell."""
    from prunetax.benchmarks.analysis import mean_ci, t_pvalue

    by_cell = {r["cell_id"]: r for r in theirs if r["conv_weights_removed_pct"] is not None}
    pairs = [(r, by_cell[r["cell_id"]]) for r in runs
             if r["conv_weights_removed_pct"] is not None and r["cell_id"] in by_cell]
    kept = [(a, b) for a, b in pairs if a["crossed"] and b["crossed"]]
    diffs = [a["conv_weights_removed_pct"] - b["conv_weights_removed_pct"] for a, b in kept]
    _, lo, hi = mean_ci(diffs, confidence)
    return {"vs_n": len(diffs), "vs_censored": len(pairs) - len(kept),
            "vs_mean": sum(diffs) / len(diffs) if diffs else None, "vs_ci_low": lo, "vs_ci_high": hi,
            "vs_better": sum(d > 0 for d in diffs) / len(diffs) if diffs else None, "vs_p": t_pvalue(diffs)}


def paired_differences(metrics: dict[str, list[dict]], versus: str, axis: tuple[str, str] | None,
                       confidence: float) -> dict[str, dict]:
    """The ``VERSUS_COLUMNS`` of each metric of one group (metric -> its runs): its reference
    (``versus``; ``axis``: its ``AXIS=LEVEL`` parsed, None for a metric) and the paired
    difference over the cells both ran on (``rank_scores`` says what each column holds)."""
    out = {}
    for metric, ref in _references(metrics, versus, axis).items():
        row = {"versus": ref, "vs_n": 0, "vs_censored": 0, "vs_mean": None, "vs_ci_low": None, "vs_ci_high": None,
               "vs_better": None, "vs_p": None}
        if ref is not None:
            row.update(_paired(metrics[metric], metrics[ref], confidence))
        out[metric] = row
    return out


_NAMES = {"p": "vs_p", "n": "vs_n", "low": "vs_ci_low", "high": "vs_ci_high", "p_adj": "vs_p_adj",
          "level": "vs_adj_level", "adj_low": "vs_adj_low", "adj_high": "vs_adj_high", "family": "vs_family"}


def _comparison(row: dict):
    """A row's comparison in its group's family: None for a metric against itself or one of its
    aliases (0 by construction) or without a reference; rows of one entry against one reference
    on the same cells are one comparison."""
    ref = row["versus"]
    if ref is None or ref == row["metric_id"] or ref in (row.get("aliases") or "").split(","):
        return None
    return row.get("entry", row["metric_id"]), ref, row["vs_n"], row["vs_mean"]


def correct_versus(rows: list[dict], correction: str, confidence: float) -> None:
    """Set ``vs_correction``, ``vs_family``, ``vs_p_adj``, ``vs_adj_level``, ``vs_adj_low`` and
    ``vs_adj_high`` on leaderboard rows (any groups) in place: the family is the rows of one
    group (``ranking.correction``: Holm's step-down, or none)."""
    from prunetax.benchmarks.analysis import t_interval_at
    from prunetax.benchmarks.ranking.correction import correct

    groups: dict[str, list[dict]] = {}
    for r in rows:
        r["vs_correction"] = correction
        groups.setdefault(r["group"], []).append(r)
    for family in groups.values():
        correct(family, _NAMES, correction, confidence, identity=_comparison, interval=t_interval_at)
