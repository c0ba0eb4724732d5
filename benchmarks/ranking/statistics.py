"""The statistics of a leaderboard: runs grouped, each metric's rates summarised, metrics ranked."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from prunetax.taxonomy.vocab import AXES

if TYPE_CHECKING:  # pyarrow is imported where used: the command line builds its parser without it
    import pyarrow as pa

__all__ = ["group_runs", "run_statistics", "metric_rows", "rank_metrics"]


def group_runs(scores: "pa.Table", by: Sequence[str]) -> dict[tuple, dict[str, list[dict]]]:
    """The score rows of ``scores`` by group (key: the ``by`` values, the recipe hash, the protocol
    JSON) and metric, one row per (cell_id, metric_id) whatever copies a reader may meet."""
    unique: dict[tuple, dict] = {}
    for r in scores.to_pylist():
        unique.setdefault((r["cell_id"], r["metric_id"]), r)
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in unique.values():
        key = tuple(r[b] for b in by) + (r["recipe_hash"], r["protocol"])
        groups.setdefault(key, {}).setdefault(r["metric_id"], []).append(r)
    return groups


def run_statistics(runs: list[dict]) -> dict:
    """The statistics of one metric's runs over their rates (``conv_weights_removed_pct``; runs
    without one are left out): ``n_runs``, ``n_seeds``, ``n_crossed``, ``censored``, ``mean``,
    ``std`` (ddof 1) and ``pm2sigma`` (null under two runs), ``min``, ``max``, and the mean
    ``baseline_accuracy``."""
    import numpy as np

    used = [r for r in runs if r["conv_weights_removed_pct"] is not None]
    vals = np.array([r["conv_weights_removed_pct"] for r in used], dtype=np.float64)
    n = len(vals)
    std = float(vals.std(ddof=1)) if n > 1 else None
    crossed = sum(1 for r in used if r["crossed"])
    base = [r["baseline_accuracy"] for r in used if r["baseline_accuracy"] is not None]
    return {"n_runs": n, "n_seeds": len({r["seed"] for r in used}), "n_crossed": crossed,
            "censored": crossed < n, "mean": float(vals.mean()) if n else None, "std": std,
            "pm2sigma": None if std is None else 2.0 * std,
            "min": float(vals.min()) if n else None, "max": float(vals.max()) if n else None,
            "baseline_accuracy": float(np.mean(base)) if base else None}


def metric_rows(metrics: dict[str, list[dict]], head: dict, info: dict) -> list[dict]:
    """One leaderboard row per metric of a group (metric -> its runs), unranked: ``head`` (the
    ``by`` values), the group's labels and authors' rate from ``info``, the metric's components
    and protocol (from its first run) and ``run_statistics``."""
    rows = []
    for metric, runs in metrics.items():
        first = runs[0]
        rows.append({
            **head, "group": info["group"], "metric_id": metric,
            **{c: first[c] for c in ("kind", *AXES, "ran_as")}, **run_statistics(runs),
            "threshold": first["threshold"], "threshold_mode": first["threshold_mode"],
            "protocol": first["protocol"], "recipe_hash": first["recipe_hash"],
            "recipe_label": info["recipe_label"], "protocol_label": info["protocol_label"],
            "authors_rate": info["authors_rate"], "authors_note": info["authors_note"]})
    return rows


def rank_metrics(rows: list[dict]) -> None:
    """Rank the rows of one group in place: ``gap_to_oracle`` (the oracle's mean less each mean),
    ``n_metrics``, sorted by mean rate, censored metrics after the others, ``rank`` from 1."""
    oracle = next((s["mean"] for s in rows if s["metric_id"] == "oracle"), None)
    for s in rows:
        s["gap_to_oracle"] = None if oracle is None or s["mean"] is None else oracle - s["mean"]
        s["n_metrics"] = len(rows)
    rows.sort(key=lambda s: (s["mean"] is None, s["censored"], -(s["mean"] or 0.0), s["metric_id"]))
    for rank, s in enumerate(rows, 1):
        s["rank"] = rank
