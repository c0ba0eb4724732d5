"""Which metrics a leaderboard option names: ids, named metrics, expressions and globs on the ids
(``resolve_metric``, in ``versus`` since a reference is named the same way, is re-exported here)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from prunetax.benchmarks.ranking.versus import resolve_metric
from prunetax.taxonomy.errors import PrunetaxError

if TYPE_CHECKING:  # pyarrow is imported where used: the command line builds its parser without it
    import pyarrow as pa

__all__ = ["resolve_metric", "metric_patterns", "match_metrics", "select_metrics"]


def metric_patterns(text: str) -> list[str]:
    """The comma-separated patterns of a ``--metrics`` option; none at all is an error."""
    patterns = [m.strip() for m in text.split(",") if m.strip()]
    if not patterns:
        raise PrunetaxError("--metrics is empty; give metric ids, named metrics or globs, comma-separated")
    return patterns


def match_metrics(known: Sequence[str], patterns: Sequence[str], source: str | None = None) -> set[str]:
    """The ids among ``known`` that ``patterns`` name: ids, named metrics (their own id when they
    ran under their name, else their canonical id), or globs on the ids (``*``, ``?``, ``[...]``).
    A pattern that names none of them is an error naming the closest id."""
    import difflib
    import fnmatch

    known = list(dict.fromkeys(known))
    chosen: set[str] = set()
    for pat in patterns:
        if any(ch in pat for ch in "*?["):
            hits = fnmatch.filter(known, pat)
        else:
            hit = resolve_metric(pat, known)
            hits = [hit] if hit is not None else []
        if not hits:
            close = difflib.get_close_matches(pat, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "; 'prunetax leaderboard RESULTS --top all' lists them"
            raise PrunetaxError(f"metric {pat!r} is not in {source or 'these results'}{hint}")
        chosen.update(hits)
    return chosen


def select_metrics(table: "pa.Table", patterns: Sequence[str], source: str | None = None) -> "pa.Table":
    """The rows of a leaderboard whose metrics ``patterns`` name (``match_metrics``); ranks stay
    those of the whole group. With versus columns the chosen metrics are the family: the
    correction is made again within each group's chosen rows (``versus.correct_versus``)."""
    import pyarrow as pa

    ids = table.column("metric_id").to_pylist()
    chosen = match_metrics(ids, patterns, source)
    kept = table.filter(pa.array([m in chosen for m in ids], type=pa.bool_()))
    if "vs_correction" not in kept.column_names or kept.num_rows == 0:
        return kept
    from prunetax.benchmarks.ranking.versus import confidence_of, correct_versus

    rows = kept.to_pylist()
    correct_versus(rows, rows[0]["vs_correction"], confidence_of(kept))
    return pa.Table.from_pylist(rows, schema=kept.schema)
