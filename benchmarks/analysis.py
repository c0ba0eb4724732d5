"""The two analyses of a metric space (docs/analysis.md): component effects and metric similarity.

**Component effects** (``component_effects``): for each axis of the taxonomy, the paired
difference in rate (% conv weights removed at the threshold) between metrics that differ only
in that component, on the same cell (network, data set, seed, recipe, protocol), pooled over
cells, with a t confidence interval over the pairs and one over the cells' mean differences.

**Similarity** (``rank_similarity``, ``clusters``, ``removal_overlap``): Spearman's rho and
Kendall's tau-b between the rankings of the units of a network by every pair of metrics, at
the baseline; clusters of metrics that rank alike (average linkage on 1 - rho); and, from a
results folder, the overlap of two metrics' first n removals.

Only numpy: the t quantile and p-value and Kendall's tau-b are computed here (tests check them
by hand and against scipy). The effects' p-values are corrected within each ``by`` group
(``ranking.correction``: Holm's step-down, or none).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.vocab import AXES

__all__ = ["AXES", "component_effects", "EFFECT_COLUMNS", "t_quantile", "mean_ci", "t_pvalue", "t_interval_at",
           "level_order", "average_ranks", "rank_similarity", "clusters", "removal_overlap", "rate_gap", "alike", "RHO_BINS"]

EFFECT_COLUMNS = ("axis", "level_a", "level_b", "n_pairs", "n_cells", "n_identical", "n_censored", "mean_diff",
                  "sd", "ci_low", "ci_high", "cell_ci_low", "cell_ci_high", "b_better", "confidence",
                  # the tests of the two intervals and their correction within the family (ranking.correction)
                  "p", "cell_p", "correction", "n_family", "p_adj", "adj_level", "adj_ci_low", "adj_ci_high",
                  "n_cell_family", "cell_p_adj", "cell_adj_level", "cell_adj_ci_low", "cell_adj_ci_high")


# ---------------------------------------------------------------------------------------------
# Student's t quantile (no scipy)

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (exact forms for 1 and 2,
    bisection on the CDF otherwise; |error| < 1e-9)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise PrunetaxError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], confidence: float) -> tuple[float | None, float | None, float | None]:
    """(sd, low, high) of the mean of ``values``: t interval; (None, None, None) under two values."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return None, None, None
    sd = float(v.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, len(v) - 1) * sd / math.sqrt(len(v))
    return sd, float(v.mean() - half), float(v.mean() + half)


def t_pvalue(values: Sequence[float]) -> float | None:
    """The two-sided p-value of the one-sample t test of mean 0 over ``values`` (the test of
    ``mean_ci``'s interval: it excludes 0 at level c exactly when p <= 1 - c). None under two
    values; with no spread (sd 0) 1 when the mean is 0, else 0."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return None
    mean, sd, df = float(v.mean()), float(v.std(ddof=1)), len(v) - 1
    if sd == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(len(v)))
    return min(1.0, _betainc(df / 2.0, 0.5, df / (df + t * t)))


def t_interval_at(low: float, high: float, n: int, confidence: float, level: float) -> tuple[float, float]:
    """The t interval of the mean at ``level`` from ``mean_ci``'s (low, high) at ``confidence``
    over ``n`` values: same centre and standard error, the half-width scaled by the ratio of the
    two t quantiles (n - 1 degrees of freedom)."""
    centre, half = (low + high) / 2.0, (high - low) / 2.0
    scale = t_quantile(0.5 + level / 2, n - 1) / t_quantile(0.5 + confidence / 2, n - 1)
    return centre - half * scale, centre + half * scale


# ---------------------------------------------------------------------------------------------
# Component effects

def level_order(axis: str, values) -> list[str]:
    """``values`` of a component axis in the taxonomy's order (docs/taxonomy.md), unknown ones last."""
    from prunetax.taxonomy.vocab import ids

    order = {v: i for i, v in enumerate(ids(axis))}
    return sorted(values, key=lambda v: (order.get(v, len(order)), str(v)))


def _baseline_of(cell: str, row: dict) -> tuple:
    """What a cell's pairs share: its baseline (digest) and protocol; cells of two grids run on one
    baseline (same seed and recipe) under one protocol are one draw of the baseline's noise. The
    cell id where the digest is unknown (folders written before the column)."""
    digest = row.get("baseline_digest")
    return ("cell", cell) if digest is None else (digest, row.get("protocol"))


def _comparison(items: list, keep_censored: bool, confidence: float) -> dict:
    """The statistics of one comparison from its pairs ``[(cell, row a, row b)]``."""
    kept = [(c, a, b) for c, a, b in items if keep_censored or (a.get("crossed") and b.get("crossed"))]
    diffs = [b["conv_weights_removed_pct"] - a["conv_weights_removed_pct"] for _, a, b in kept]
    per_cell: dict[tuple, list[float]] = {}
    for (c, ra, _), d in zip(kept, diffs):
        per_cell.setdefault(_baseline_of(c, ra), []).append(d)
    cell_means = [float(np.mean(v)) for v in per_cell.values()]
    sd, lo, hi = mean_ci(diffs, confidence)
    _, clo, chi = mean_ci(cell_means, confidence)
    return {"n_pairs": len(diffs), "n_cells": len(per_cell),
            "n_identical": sum(1 for _, a, b in kept
                               if a.get("ran_as") is not None and a.get("ran_as") == b.get("ran_as")),
            "n_censored": len(items) - len(kept),
            "mean_diff": float(np.mean(diffs)) if diffs else None, "sd": sd, "ci_low": lo, "ci_high": hi,
            "cell_ci_low": clo, "cell_ci_high": chi,
            "b_better": float(np.mean([d > 0 for d in diffs])) if diffs else None,
            "confidence": confidence, "p": t_pvalue(diffs), "cell_p": t_pvalue(cell_means)}


# the two tests of a comparison (over the pairs, over the cells) and the columns of their correction
_TESTS = ({"p": "p", "n": "n_pairs", "low": "ci_low", "high": "ci_high", "p_adj": "p_adj", "level": "adj_level",
           "adj_low": "adj_ci_low", "adj_high": "adj_ci_high", "family": "n_family"},
          {"p": "cell_p", "n": "n_cells", "low": "cell_ci_low", "high": "cell_ci_high", "p_adj": "cell_p_adj",
           "level": "cell_adj_level", "adj_low": "cell_adj_ci_low", "adj_high": "cell_adj_ci_high",
           "family": "n_cell_family"})


def _correct_effects(out: list[dict], by: tuple, correction: str, confidence: float) -> None:
    """Each ``by`` group's comparisons are one family, for each of the two tests; a comparison
    whose every pair ran as one metric (a difference of 0 by construction) is not in it."""
    from prunetax.benchmarks.ranking.correction import correct

    groups: dict[tuple, list[dict]] = {}
    for e in out:
        e["correction"] = correction
        groups.setdefault(tuple(e[b] for b in by), []).append(e)
    for family in groups.values():
        for names in _TESTS:
            correct(family, names, correction, confidence, interval=t_interval_at,
                    identity=lambda e: None if e["n_identical"] == e["n_pairs"] else id(e))


def component_effects(rows: Sequence[dict], by: Sequence[str] = (), confidence: float = 0.95,
                      keep_censored: bool = False, correction: str = "holm") -> list[dict]:
    """Paired differences per axis and pair of its levels (module docstring), from score rows.

    ``rows``: ``read_scores(...).to_pylist()``. Metrics enter with all six components known
    (kind spec or named; a named metric equal to a spec counts once per cell). For each cell
    and each combination of the other five components, every two levels a < b of the axis (in
    the taxonomy's order) that both ran give one pair: ``rate(b) - rate(a)``. Pairs where a
    metric never crossed the threshold (its rate is a lower bound) are left out and counted in
    ``n_censored``, unless ``keep_censored``. ``n_identical``: pairs whose two metrics ran as the
    same metric (``ran_as``: equivalent on that network, a difference of 0 by construction).
    ``ci_low``/``ci_high``: t interval of the mean over the pairs (pairs of one cell share its
    baseline: read it as the spread over metrics); ``cell_ci_*``: t interval over the cells'
    mean differences (null under two cells), where cells run on one baseline under one protocol
    (two grids' cells of one seed) count as one cell, as in ``n_cells``. ``b_better``: fraction
    of pairs with b > a. ``p``, ``cell_p``: the two-sided t tests of those intervals.
    ``correction`` (holm, none; ``ranking.correction``): within each ``by`` group's comparisons
    (the family; less those whose every pair ran as one metric) the adjusted p-values
    (``p_adj``, ``cell_p_adj``), the corrected intervals (``adj_ci_*``, ``cell_adj_ci_*``) and
    their levels (``adj_level``, ``cell_adj_level``), the family's size (``n_family``,
    ``n_cell_family``). Grouped by ``by`` (score columns) too. Returns one dict per comparison
    (``by`` + EFFECT_COLUMNS).
    """
    from prunetax.benchmarks.ranking.correction import check_correction

    if not 0 < confidence < 1:
        raise PrunetaxError(f"confidence must be in (0, 1), got {confidence}")
    check_correction(correction)
    by = tuple(by)
    spec: dict[tuple, dict] = {}
    for r in rows:
        if r.get("conv_weights_removed_pct") is None or any(r.get(a) is None for a in AXES):
            continue
        key = (r["cell_id"], tuple(r[a] for a in AXES))
        if key not in spec or (r.get("kind") == "spec" and spec[key].get("kind") != "spec"):
            spec[key] = r
    if not spec:
        raise PrunetaxError("no metric with all six components in these results (component effects compare "
                            "metrics of the taxonomy: run presets or metric ids, not only expressions)")
    out = []
    for i, axis in enumerate(AXES):
        contexts: dict[tuple, dict[str, dict]] = {}
        for (cell, comps), r in spec.items():
            ctx = (cell, comps[:i] + comps[i + 1:])
            contexts.setdefault(ctx, {})[comps[i]] = r
        pairs: dict[tuple, list] = {}
        for (cell, _), levels in contexts.items():
            names = level_order(axis, levels)
            for x in range(len(names)):
                for y in range(x + 1, len(names)):
                    ra, rb = levels[names[x]], levels[names[y]]
                    group = tuple(ra.get(b) for b in by) + (names[x], names[y])
                    pairs.setdefault(group, []).append((cell, ra, rb))
        levels = {v: i for i, v in enumerate(level_order(axis, {v for g in pairs for v in g[-2:]}))}
        for group in sorted(pairs, key=lambda g: (tuple(str(v) for v in g[:len(by)]), levels[g[-2]], levels[g[-1]])):
            out.append({**dict(zip(by, group[:len(by)])), "axis": axis, "level_a": group[-2], "level_b": group[-1],
                        **_comparison(pairs[group], keep_censored, confidence)})
    _correct_effects(out, by, correction, confidence)
    return [{**{b: e[b] for b in by}, **{c: e[c] for c in EFFECT_COLUMNS}} for e in out]


def effects_figure(plt, effects: list[dict], title: str, by: Sequence[str] = ()):
    """A forest plot: one row per comparison (axis: b - a), one panel per ``by`` group side by side
    (rows shared); the mean difference with its interval over the pairs (dark, capped) and over the
    cells' mean differences (wide, light; where there are two cells or more)."""
    rows = [e for e in effects if e["mean_diff"] is not None]
    if not rows:
        return None
    groups = list(dict.fromkeys(tuple(e.get(b) for b in by) for e in rows))
    comps = list(dict.fromkeys((e["axis"], e["level_a"], e["level_b"]) for e in rows))
    ypos = {c: y for y, c in enumerate(comps)}
    width = min(4.2, max(2.6, 11.0 / len(groups)))
    fig, axs = plt.subplots(1, len(groups), sharey=True, squeeze=False,
                            figsize=(2.8 + width * len(groups), max(2.5, 0.24 * len(comps) + 1.6)))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    axes_seen = list(dict.fromkeys(c[0] for c in comps))
    for ax, g in zip(axs[0], groups):
        for e in (e for e in rows if tuple(e.get(b) for b in by) == g):
            y, m = ypos[(e["axis"], e["level_a"], e["level_b"])], e["mean_diff"]
            color = colors[axes_seen.index(e["axis"]) % len(colors)]
            if e["cell_ci_low"] is not None:
                ax.plot([e["cell_ci_low"], e["cell_ci_high"]], [y, y], color=color, alpha=0.3, lw=5,
                        solid_capstyle="butt")
            lo = e["ci_low"] if e["ci_low"] is not None else m
            hi = e["ci_high"] if e["ci_high"] is not None else m
            ax.errorbar(m, y, xerr=[[m - lo], [hi - m]], fmt="o", color=color, ms=4, capsize=2, lw=1)
        ax.axvline(0, color="0.4", lw=0.8)
        ax.grid(axis="x", alpha=0.3)
        if by:
            ax.set_title(", ".join(f"{b}={v}" for b, v in zip(by, g)), fontsize=8)
    n_pairs = {(e["axis"], e["level_a"], e["level_b"], tuple(e.get(b) for b in by)): e["n_pairs"] for e in rows}
    labels = []
    for a, lo, hi in comps:               # pairs per panel, left to right
        ns = [str(n_pairs[(a, lo, hi, g)]) for g in groups if (a, lo, hi, g) in n_pairs]
        labels.append(f"{a}: {hi} - {lo}  (n={'/'.join(ns)})")
    axs[0][0].set_yticks(range(len(comps)), labels, fontsize=7)
    axs[0][0].invert_yaxis()
    conf = f"{rows[0]['confidence'] * 100:g} %"
    fig.supxlabel(f"difference in conv weights removed (percentage points): mean, {conf} CI over pairs (capped), "
                  f"over cells (wide band)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Similarity

def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks (1 = smallest) of each row of ``x`` [M, U], ties given their average rank; +inf ties with +inf."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for i, row in enumerate(x):
        order = np.argsort(row, kind="stable")
        srt = row[order]
        new = np.concatenate(([True], srt[1:] != srt[:-1]))
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], len(srt))
        avg = (starts + ends + 1) / 2.0          # ranks starts+1 .. ends, averaged
        out[i, order] = np.repeat(avg, ends - starts)
    return out


def _pearson_rows(x: np.ndarray) -> np.ndarray:
    """Pearson's correlation between every two rows of ``x`` (of ranks: Spearman's rho); NaN where
    a row is constant."""
    c = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((c * c).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (c @ c.T) / np.outer(norm, norm)


def rank_similarity(values: np.ndarray, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's rho and Kendall's tau-b between every two rows of ``values`` [M metrics, U units].

    rho: Pearson's correlation of the average ranks. tau-b: sum over unit pairs of
    sign(ri - rj) sign(si - sj) over sqrt(n_a n_b), n = the pairs not tied in that metric; as a
    matrix product over chunks of unit pairs (exact: integer counts). NaN where a metric ranks
    every unit alike. Returns (rho, tau), each [M, M].
    """
    ranks = average_ranks(values)
    M, U = ranks.shape
    rho = _pearson_rows(ranks)
    iu, ju = np.triu_indices(U, 1)
    num = np.zeros((M, M), dtype=np.float64)
    r32 = ranks.astype(np.float64)
    for s in range(0, len(iu), chunk):
        sgn = np.sign(r32[:, iu[s:s + chunk]] - r32[:, ju[s:s + chunk]]).astype(np.float32)
        num += (sgn @ sgn.T).astype(np.float64)
    n = np.diag(num).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = num / np.sqrt(np.outer(n, n))
    for m in (rho, tau):
        np.clip(m, -1.0, 1.0, out=m)
        d = np.diag(m).copy()
        np.fill_diagonal(m, np.where(np.isnan(d), np.nan, 1.0))   # exactly 1, not 1 - 1e-16
    return rho, tau


def clusters(rho: np.ndarray, min_rho: float = 0.9) -> tuple[list[int], list[int]]:
    """Average-linkage clustering of the metrics on the distance 1 - rho (in [0, 2]; a NaN rho counts as 0).

    Returns (order, label): ``order`` the leaves of the dendrogram left to right (the heatmap's
    order), ``label[m]`` the cluster of metric m (0-based, clusters by decreasing size), where a
    cluster is a subtree merged at a distance <= 1 - ``min_rho`` (average rho >= min_rho).
    """
    M = rho.shape[0]
    dist = 1.0 - np.where(np.isnan(rho), 0.0, rho)
    np.fill_diagonal(dist, np.inf)
    size = np.ones(M)
    alive = np.ones(M, dtype=bool)
    node = list(range(M))                       # current tree node of each live slot
    children: dict[int, tuple[int, int]] = {}
    parent = list(range(M))                     # union-find of the cut

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for k in range(M - 1):
        flat = int(np.argmin(dist))
        i, j = divmod(flat, M)
        if i > j:
            i, j = j, i
        height = dist[i, j]
        children[M + k] = (node[i], node[j])
        if height <= 1.0 - min_rho:
            parent[find(j)] = find(i)
        # the merged cluster takes slot i: size-weighted average of the two rows
        new = (dist[i] * size[i] + dist[j] * size[j]) / (size[i] + size[j])
        dist[i, :] = new
        dist[:, i] = new
        dist[i, i] = np.inf
        dist[j, :] = np.inf
        dist[:, j] = np.inf
        size[i] += size[j]
        alive[j] = False
        node[i] = M + k
    # leaves left to right
    order, stack = [], [node[int(np.flatnonzero(alive)[0])]] if M else []
    while stack:
        n = stack.pop()
        if n < M:
            order.append(n)
        else:
            a, b = children[n]
            stack += [b, a]
    roots = [find(m) for m in range(M)]
    count: dict[int, int] = {}
    for r in roots:
        count[r] = count.get(r, 0) + 1
    first = {}
    for pos, m in enumerate(order):
        first.setdefault(roots[m], pos)
    ranked = sorted(count, key=lambda r: (-count[r], first[r]))
    index = {r: i for i, r in enumerate(ranked)}
    return order, [index[r] for r in roots]


def removal_overlap(trajectories: Sequence[dict], metrics: Sequence[str], first: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean over cells of |A_n & B_n| / n, A_n the units of a metric's first ``first`` pruning
    steps (the trajectories' ``unit``: each step's first unit) in a cell. Returns (overlap, cells):
    [M, M] each; overlap NaN where two metrics never ran in one cell with ``first`` steps each."""
    idx = {m: i for i, m in enumerate(metrics)}
    per_cell: dict[str, dict[int, set]] = {}
    steps: dict[tuple, list] = {}
    for t in trajectories:
        if t["metric_id"] in idx and 1 <= t["step"] <= first:
            steps.setdefault((t["cell_id"], idx[t["metric_id"]]), []).append(t["unit"])
    for (cell, m), units in steps.items():
        if len(units) == first:
            per_cell.setdefault(cell, {})[m] = set(units)
    M = len(metrics)
    total, count = np.zeros((M, M)), np.zeros((M, M))
    for sets in per_cell.values():
        ms = sorted(sets)
        for a in ms:
            for b in ms:
                total[a, b] += len(sets[a] & sets[b]) / first
                count[a, b] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


def similarity_figure(plt, rho: np.ndarray, ids: Sequence[str], order: Sequence[int], labels: Sequence[int],
                      title: str, notes: Sequence[str] = ()):
    """The clustered heatmap of Spearman's rho, clusters of two or more metrics boxed."""
    from matplotlib.patches import Rectangle

    M = len(ids)
    mat = rho[np.ix_(order, order)]
    side = min(11.0, max(5.0, 0.16 * M + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="Spearman's rho")
    if M <= 60:
        names = [ids[m] for m in order]
        ax.set_xticks(range(M), names, rotation=90, fontsize=6)
        ax.set_yticks(range(M), names, fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{M} metrics in dendrogram order (clusters_*.md lists them)")
    pos = 0
    lab = [labels[m] for m in order]
    while pos < M:
        end = pos
        while end + 1 < M and lab[end + 1] == lab[pos]:
            end += 1
        if end > pos:
            ax.add_patch(Rectangle((pos - 0.5, pos - 0.5), end - pos + 1, end - pos + 1, fill=False, lw=0.8,
                                   edgecolor="k"))
        pos = end + 1
    ax.set_title(title, fontsize=9)
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=7, color="0.3", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.025 * len(notes), 1, 1))
    return fig


def rate_gap(scores: Sequence[dict], metrics: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over cells of |rate(a) - rate(b)| (``conv_weights_removed_pct``), over the cells where
    both metrics crossed the threshold. Returns (gap, cells): [M, M] each; gap NaN where no cell
    has both."""
    idx = {m: i for i, m in enumerate(metrics)}
    per_cell: dict[str, dict[int, float]] = {}
    for r in scores:
        if r["metric_id"] in idx and r.get("crossed") and r.get("conv_weights_removed_pct") is not None:
            per_cell.setdefault(r["cell_id"], {})[idx[r["metric_id"]]] = float(r["conv_weights_removed_pct"])
    M = len(metrics)
    total, count = np.zeros((M, M)), np.zeros((M, M))
    for rates in per_cell.values():
        ms = np.array(sorted(rates))
        v = np.array([rates[m] for m in ms])
        total[np.ix_(ms, ms)] += np.abs(v[:, None] - v[None, :])
        count[np.ix_(ms, ms)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan), count


RHO_BINS = (0.9, 0.5, 0.0, -1.0)   # lower edges: rho >= 0.9, [0.5, 0.9), [0, 0.5), [-1, 0)


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho of two vectors; None under three values or where one is constant."""
    if len(x) < 3:
        return None
    rho = _pearson_rows(average_ranks(np.stack([x, y])))[0, 1]
    return None if np.isnan(rho) else float(rho)


def alike(rho: np.ndarray, overlap: np.ndarray | None, gap: np.ndarray | None) -> tuple[list[dict], dict]:
    """Do metrics that rank alike prune alike? Over the pairs of distinct metrics (each pair once):
    per band of rho (``RHO_BINS``), the pairs, their mean rho, mean overlap of the first removals
    and mean rate gap (each over the pairs where it is known); and Spearman's correlation across
    pairs of rho with the overlap and with the gap (None under three pairs). Returns (bands, corr)."""
    iu, ju = np.triu_indices(rho.shape[0], 1)
    r = rho[iu, ju]
    o = overlap[iu, ju] if overlap is not None else np.full(len(r), np.nan)
    g = gap[iu, ju] if gap is not None else np.full(len(r), np.nan)
    bands, upper = [], math.inf
    for low in RHO_BINS:
        inb = np.isfinite(r) & (r >= low) & (r < upper)
        ob, gb = o[inb & np.isfinite(o)], g[inb & np.isfinite(g)]
        bands.append({"rho_low": low, "rho_high": None if upper == math.inf else upper, "pairs": int(inb.sum()),
                      "mean_rho": float(r[inb].mean()) if inb.any() else None,
                      "overlap_pairs": len(ob), "mean_overlap": float(ob.mean()) if len(ob) else None,
                      "gap_pairs": len(gb), "mean_gap": float(gb.mean()) if len(gb) else None})
        upper = low
    ko, kg = np.isfinite(r) & np.isfinite(o), np.isfinite(r) & np.isfinite(g)
    corr = {"rho_vs_overlap": _spearman(r[ko], o[ko]), "overlap_pairs": int(ko.sum()),
            "rho_vs_gap": _spearman(r[kg], g[kg]), "gap_pairs": int(kg.sum())}
    return bands, corr
