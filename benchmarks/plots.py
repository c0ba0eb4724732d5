"""Figures of a results folder (matplotlib, Agg backend; ``pip install prunetax[plot]``).

Per network/dataset:
- ``accuracy_<net>_<data>``: test accuracy against % conv weights removed for chosen metrics
  (default: the leaderboard's top 5 and ``random``), one line per seed, the threshold dashed;
- ``reduction_scaling_<net>_<data>``: mean rate by reduction x scaling (grouped bars, as the
  taxonomy paper), over the single-spec metrics with channel structure;
- ``pointwise_input_<net>_<data>``: mean rate by pointwise function x base input;
- ``domino_<net>_<data>``: the same metric with structure channel / domino_o / domino_io
  (only where Domino variants ran).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["plot_results", "FIGURES"]

FIGURES = ("accuracy", "reduction_scaling", "pointwise_input", "domino")
FORMATS = ("png", "svg")
_STRUCTURES = ("channel", "domino_o", "domino_io")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PrunetaxError("plots need matplotlib; pip install prunetax[plot]") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")


def _mean_rates(board: list[dict]) -> dict[str, dict]:
    return {r["metric_id"]: r for r in board if r["mean"] is not None}


def _grouped_bars(plt, title, groups, series, value, ylabel):
    """Bars: x = ``groups``, one bar per ``series`` in each; ``value(g, s)`` or None for missing."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 2), 4.2))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, s in enumerate(series):
        vals = [value(g, s) for g in groups]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [np.nan if v is None else v for v in vals], width,
               label=s)
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(series), 4), loc="upper left", bbox_to_anchor=(0, -0.25), frameon=False)
    fig.tight_layout()
    return fig


def _by_components(rates: dict[str, dict], a: str, b: str):
    """Mean (over metrics) of each metric's mean rate, per (component a, component b)."""
    import numpy as np

    cells: dict[tuple, list[float]] = {}
    for r in rates.values():
        if r["kind"] != "spec" or r["structure"] not in (None, "channel") or r[a] is None or r[b] is None:
            continue
        cells.setdefault((r[a], r[b]), []).append(r["mean"])
    groups = list(dict.fromkeys(k[0] for k in sorted(cells)))
    series = list(dict.fromkeys(k[1] for k in sorted(cells)))
    return groups, series, (lambda g, s: float(np.mean(cells[(g, s)])) if (g, s) in cells else None)


def _accuracy_figure(plt, traj: list[dict], chosen: Sequence[str], title: str, threshold_line):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, metric in enumerate(chosen):
        runs: dict[int, list] = {}
        for t in traj:
            if t["metric_id"] == metric and t["accuracy"] is not None:
                runs.setdefault(t["seed"], []).append((t["conv_weights_removed_pct"], t["accuracy"]))
        for j, (seed, pts) in enumerate(sorted(runs.items())):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[i % len(colors)], lw=1.3, alpha=0.8,
                    label=metric if j == 0 else None, ls="--" if metric == "random" else "-")
    if threshold_line is not None:
        ax.axhline(threshold_line, color="grey", ls=":", lw=1, label="baseline - threshold")
    ax.set_xlabel("conv weights removed (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def _domino_figure(plt, rates: dict[str, dict], title: str, limit: int = 15):
    base: dict[str, dict[str, float]] = {}
    for mid, r in rates.items():
        if r["kind"] == "spec" and r["structure"] in _STRUCTURES:
            stem = mid[: -len("-" + r["structure"])] if mid.endswith("-" + r["structure"]) else mid
            base.setdefault(stem, {})[r["structure"]] = r["mean"]
    pairs = {k: v for k, v in base.items() if "channel" in v and len(v) > 1}
    if not pairs:
        return None
    best = sorted(pairs, key=lambda k: -max(pairs[k].values()))[:limit]
    return _grouped_bars(plt, title, best, [s for s in _STRUCTURES if any(s in pairs[k] for k in best)],
                         lambda g, s: pairs[g].get(s), "conv weights removed (%)")


def plot_results(results_dir, out_dir, metrics: Sequence[str] | None = None,
                 formats: Sequence[str] = FORMATS, top: int = 5) -> list[Path]:
    """Write every figure of ``results_dir`` into ``out_dir`` in ``formats``; returns the paths."""
    from prunetax.benchmarks.io import atomic_path
    from prunetax.benchmarks.results import leaderboard, read_trajectories

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise PrunetaxError(f"unknown plot format {(bad or [''])[0]!r}; choose from {', '.join(FORMATS)}")
    plt = _pyplot()
    board = leaderboard(results_dir).to_pylist()
    if not board:
        raise PrunetaxError(f"no results under {results_dir}; run prunetax bench first")
    traj = read_trajectories(results_dir).to_pylist()
    known = {r["metric_id"] for r in board}
    if metrics:
        missing = [m for m in metrics if m not in known]
        if missing:
            raise PrunetaxError(f"metric {missing[0]!r} is not in {results_dir}; choose from the leaderboard's ids")
    out, written = Path(out_dir), []

    def save(fig, name):
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=120)
            written.append(path)
        plt.close(fig)

    groups: dict[tuple, list[dict]] = {}
    for r in board:
        groups.setdefault((r["network"], r["dataset"]), []).append(r)
    for (net, data), rows in sorted(groups.items()):
        rates, tag = _mean_rates(rows), f"{_safe(net)}_{_safe(data)}"
        chosen = list(metrics) if metrics else (
            [r["metric_id"] for r in rows if r["metric_id"] not in ("random", "oracle")][:top]
            + [m for m in ("random",) if m in rates])
        mine = [t for t in traj if t["network"] == net and t["dataset"] == data]
        base = [r["baseline_accuracy"] for r in rows if r["baseline_accuracy"] is not None]
        line = None
        if base and rows[0]["threshold"] is not None:
            b = sum(base) / len(base)
            line = b * (1 - rows[0]["threshold"] / 100) if rows[0]["threshold_mode"] == "relative" \
                else b - rows[0]["threshold"]
        save(_accuracy_figure(plt, mine, chosen, f"{net} / {data}: accuracy while pruning", line), f"accuracy_{tag}")
        for name, a, b, title in (("reduction_scaling", "reduction", "scaling", "reduction x scaling"),
                                  ("pointwise_input", "pointwise", "base_input", "pointwise x base input")):
            g, s, value = _by_components(rates, a, b)
            if g:
                save(_grouped_bars(plt, f"{net} / {data}: mean rate by {title}", g, s, value,
                                   "mean conv weights removed (%)"), f"{name}_{tag}")
        fig = _domino_figure(plt, rates, f"{net} / {data}: channel vs Domino structure")
        if fig is not None:
            save(fig, f"domino_{tag}")
    return written
