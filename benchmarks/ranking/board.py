"""``rank_scores``: a scores table ranked into a leaderboard, with its columns and their types."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from prunetax.benchmarks.ranking.correction import CORRECTION
from prunetax.benchmarks.ranking.entries import RESAMPLES
from prunetax.benchmarks.ranking.versus import CONFIDENCE, VERSUS_COLUMNS
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.vocab import AXES

if TYPE_CHECKING:  # pyarrow is imported where used: the command line builds its parser without it
    import pyarrow as pa

__all__ = ["LEADERBOARD_COLUMNS", "rank_scores"]

LEADERBOARD_COLUMNS = ("group", "rank", "n_metrics", "distinct_rank", "n_distinct", "rank_low", "rank_high",
                       "metric_id", "entry", "aliases", "kind", *AXES, "ran_as",
                       "n_runs", "n_seeds", "n_crossed", "censored", "mean", "std", "pm2sigma", "min", "max",
                       "gap_to_oracle", "baseline_accuracy", "threshold", "threshold_mode", "protocol",
                       "recipe_hash", "recipe_label", "protocol_label", "authors_rate", "authors_note")
_INTS = ("rank", "n_metrics", "distinct_rank", "n_distinct", "rank_low", "rank_high", "n_runs", "n_seeds", "n_crossed",
         "vs_n", "vs_censored", "vs_family")
_FLOATS = ("mean", "std", "pm2sigma", "min", "max", "gap_to_oracle", "baseline_accuracy", "threshold", "authors_rate",
           "vs_mean", "vs_ci_low", "vs_ci_high", "vs_better", "vs_p", "vs_p_adj", "vs_adj_level", "vs_adj_low",
           "vs_adj_high")
_NOT_BY = ("metric_id", "conv_weights_removed_pct")


def _type(column: str):
    import pyarrow as pa
    return (pa.int64() if column in _INTS else pa.float64() if column in _FLOATS
            else pa.bool_() if column == "censored" else pa.string())


def _checked_by(scores: "pa.Table", by: Sequence[str], top: int | None, source: str | None) -> tuple[str, ...]:
    """``by`` without repeats, once ``by``, ``top`` and ``scores`` are known good (else an error)."""
    by = tuple(dict.fromkeys(by))
    names = scores.schema.names
    bad = [b for b in by if b not in names or b in _NOT_BY]
    if bad:
        raise PrunetaxError(f"cannot group by {bad[0]!r}; choose from "
                            f"{', '.join(n for n in names if n not in _NOT_BY)}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
        raise PrunetaxError(f"top must be a non-negative integer (0 = none) or None (all), got {top!r}")
    if scores.num_rows == 0:
        where = f" in {source}" if source is not None else ""
        raise PrunetaxError(f"no results{where}: expected score files scores/network=<n>/dataset=<d>/<cell>.parquet "
                            "as prunetax bench writes them")
    return by


def _schema(scores: "pa.Table", by: tuple[str, ...], versus: str | None, confidence: float) -> "pa.Schema":
    """The leaderboard's schema: ``by`` as typed in ``scores``, then its columns; with ``versus``
    the ``VERSUS_COLUMNS`` and the interval's level in the metadata (``versus.CONFIDENCE_KEY``)."""
    import pyarrow as pa

    from prunetax.benchmarks.ranking.versus import CONFIDENCE_KEY

    columns = LEADERBOARD_COLUMNS + (VERSUS_COLUMNS if versus is not None else ())
    meta = {CONFIDENCE_KEY: repr(float(confidence))} if versus is not None else None
    return pa.schema([(b, scores.schema.field(b).type) for b in by] +
                     [(c, _type(c)) for c in columns if c not in by], metadata=meta)


def _group_rows(metrics: dict[str, list[dict]], head: dict, info: dict, versus: str | None,
                axis: tuple[str, str] | None, confidence: float, resamples: int) -> list[dict]:
    """The ranked rows of one group (metric -> its runs): statistics, versus columns, entries."""
    from prunetax.benchmarks.ranking.entries import add_entries
    from prunetax.benchmarks.ranking.statistics import metric_rows, rank_metrics
    from prunetax.benchmarks.ranking.versus import paired_differences

    rows = metric_rows(metrics, head, info)
    if versus is not None:
        vs = paired_differences(metrics, versus, axis, confidence)
        for s in rows:
            s.update(vs[s["metric_id"]])
    rank_metrics(rows)
    add_entries(metrics, rows, resamples)
    return rows


def rank_scores(scores: "pa.Table", by: Sequence[str] = ("network", "dataset"), top: int | None = None,
                source: str | None = None, versus: str | None = None, confidence: float = CONFIDENCE,
                correction: str = CORRECTION, resamples: int = RESAMPLES) -> "pa.Table":
    """The metrics of ``scores`` ranked by mean % conv weights removed, per group (the package's docstring).

    Columns: ``by``, then ``LEADERBOARD_COLUMNS`` (less any of ``by``), then with ``versus`` the
    ``VERSUS_COLUMNS``. ``top``: keep the best N distinct metrics of each group (``distinct_rank``
    <= N, ties included; None: all; 0: none). ``source`` names the scores in errors. An empty
    table is an error (a results folder without score files).

    ``rank`` orders every metric id (aliases each counted, ties broken by id); ``distinct_rank``
    of ``n_distinct`` ranks the entries (names that ran as one metric together: ``entry``,
    ``aliases``), with ``rank_low``/``rank_high`` from ``resamples`` bootstrap resamples of the
    group's seeds (0: none; ``entries``'s docstring).

    ``versus``: a metric (id, named metric, ``random``, ``oracle``), or ``AXIS=LEVEL`` (each
    metric against the one that differs from it only in that component, set to LEVEL: e.g.
    ``scaling=none``, ``structure=channel``). Per metric of a group: ``vs_mean``, the mean over
    the group's cells of rate(metric) - rate(reference) on the same cell (same seed and
    baseline), its t interval at ``confidence`` (null under two cells; the table's schema
    metadata records the level, ``versus.confidence_of`` reads it), ``vs_better`` the share of
    cells where the metric removed more; cells where either never crossed the threshold are left
    out and counted in ``vs_censored``. ``versus`` is null where the group has no reference.
    ``vs_p``: the interval's two-sided t test; ``correction`` (holm, none) within each group's
    comparisons (its family: one per distinct metric, less a metric against itself or an alias):
    ``vs_p_adj``, ``vs_adj_low``/``vs_adj_high`` at level ``vs_adj_level``, ``vs_family``
    (``versus.correct_versus``, ``correction``'s docstring).
    """
    from prunetax.benchmarks.ranking.authors import authors_rate
    from prunetax.benchmarks.ranking.correction import check_correction
    from prunetax.benchmarks.ranking.labels import label_groups
    from prunetax.benchmarks.ranking.statistics import group_runs
    from prunetax.benchmarks.ranking.versus import check_confidence, correct_versus, parse_reference

    axis = None if versus is None else parse_reference(versus)   # a malformed AXIS=LEVEL fails before any work
    if versus is not None:
        check_confidence(confidence)
        check_correction(correction)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 0:
        raise PrunetaxError(f"resamples must be a non-negative integer (0 = no rank intervals), got {resamples!r}")
    import pyarrow as pa

    by = _checked_by(scores, by, top, source)
    groups = group_runs(scores, by)
    info = label_groups(groups, by)
    for i in info.values():
        i["authors_rate"], i["authors_note"] = authors_rate(i["networks"], i["datasets"], i["protocol"])
    out = []
    for key in sorted(groups, key=lambda k: (tuple("" if v is None else str(v) for v in k[:len(by)]),
                                             info[k]["recipe_label"], info[k]["protocol_label"])):
        out += _group_rows(groups[key], dict(zip(by, key)), info[key], versus, axis, confidence, resamples)
    if versus is not None:
        if axis is None and not any(s["versus"] for s in out):
            raise PrunetaxError(f"versus {versus!r}: no such metric in {source or 'these results'}; give a metric "
                                "id, a named metric, random or oracle that ran, or AXIS=LEVEL (e.g. scaling=none)")
        correct_versus(out, correction, confidence)
    if top is not None:
        out = [s for s in out if s["distinct_rank"] <= top]
    return pa.Table.from_pylist(out, schema=_schema(scores, by, versus, confidence))
