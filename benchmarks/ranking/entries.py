"""Distinct metrics of a leaderboard group, and their ranks with intervals from resampling seeds.

**Entries.** Names that ran as one metric are one entry: metrics whose runs all record the same
``ran_as`` (the metric that actually ran: a named metric and its spec id, e.g. ``filter_l1`` and
``weight-value-l1-none``; a Domino form equivalent to its channel form on a chain) and that ran
on the same cells. The entry is shown under the member whose id is that ``ran_as`` (else its
first spec member, else its first id); ``aliases`` lists the others.

**Distinct ranks.** Entries are ranked as metrics are (``statistics.rank_metrics``): those with
no rate last, then those with a censored run, the rest by mean rate, higher first; entries with
equal means (to 1e-9) share the best of their ranks (competition ranking: 1, 2, 2, 4).

**Rank intervals.** A bootstrap over the group's seeds (all the runs of one seed are drawn
together; a seed is one baseline): ``resamples`` times, draw the group's n seeds with
replacement (``numpy.random.default_rng(RANK_SEED).integers(0, n, size=(resamples, n))`` over
the seeds in increasing order, one generator per group, so the output is reproducible), recompute
every entry's mean rate and censoring over the drawn seeds (a seed drawn twice counts twice) and
rank as above. ``rank_low`` and ``rank_high`` are the 2.5th and 97.5th percentiles of an entry's
ranks (``numpy.percentile`` with method ``lower`` and ``higher``: ranks that occurred, the
interval rounded outwards). Null with fewer than two seeds or no resamples.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where used: the command line builds its parser without it
    import numpy as np

__all__ = ["RESAMPLES", "RANK_SEED", "RANK_LEVEL", "alias_entries", "competition_ranks", "entry_ranks",
           "add_entries"]

RESAMPLES = 1000        # bootstrap resamples of the seeds behind each rank interval (leaderboard --resamples)
RANK_SEED = 0           # the generator's seed: the same intervals on every run
RANK_LEVEL = 0.95       # the rank interval holds the middle 95 % of the resampled ranks
_CHUNK = 64             # resamples ranked at once (memory: chunk x entries x entries booleans)


def alias_entries(metrics: dict[str, list[dict]]) -> dict[str, list[str]]:
    """The entries of one group (metric -> its runs): entry id -> its metric ids, the entry's first."""
    members: dict[tuple, list[str]] = {}
    for metric, runs in metrics.items():
        ran = {r.get("ran_as") for r in runs}
        same = ran.pop() if len(ran) == 1 and None not in ran else None
        cells = frozenset(r["cell_id"] for r in runs)
        members.setdefault(("ran_as", same, cells) if same is not None else ("id", metric), []).append(metric)
    out = {}
    for key, names in members.items():
        names.sort(key=lambda m: (m != key[1], metrics[m][0].get("kind") != "spec", m))
        out[names[0]] = names
    return out


def competition_ranks(tier: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Ranks of each row of ``tier``, ``mean`` [B, E]: 1 + the entries of a lower tier or of the
    same tier and a higher mean (rounded to 1e-9)."""
    import numpy as np

    mean = np.round(mean, 9)
    out = np.empty(tier.shape, dtype=np.int64)
    for s in range(0, tier.shape[0], _CHUNK):
        t, m = tier[s:s + _CHUNK], mean[s:s + _CHUNK]
        better = (t[:, None, :] < t[:, :, None]) | ((t[:, None, :] == t[:, :, None]) & (m[:, None, :] > m[:, :, None]))
        out[s:s + _CHUNK] = 1 + better.sum(axis=2)
    return out


def _per_seed(metrics: dict[str, list[dict]], ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per entry (its id's runs) and seed: the sum of rates, the runs with a rate, those not crossed."""
    import numpy as np

    seeds = sorted({r["seed"] for m in ids for r in metrics[m]}, key=lambda s: (s is None, s if s is not None else 0))
    col = {s: j for j, s in enumerate(seeds)}
    total, count, uncrossed = (np.zeros((len(ids), len(seeds))) for _ in range(3))
    for i, m in enumerate(ids):
        for r in metrics[m]:
            if r["conv_weights_removed_pct"] is not None:
                j = col[r["seed"]]
                total[i, j] += r["conv_weights_removed_pct"]
                count[i, j] += 1
                uncrossed[i, j] += not r["crossed"]
    return total, count, uncrossed


def _ranks(weights: np.ndarray, total: np.ndarray, count: np.ndarray, uncrossed: np.ndarray) -> np.ndarray:
    """Ranks [B, E] of the entries when seed j counts ``weights[b, j]`` times."""
    import numpy as np

    tot = (weights[:, None, :] * total[None]).sum(axis=2)
    cnt = (weights[:, None, :] * count[None]).sum(axis=2)
    unc = (weights[:, None, :] * uncrossed[None]).sum(axis=2)
    none = cnt == 0
    mean = np.where(none, 0.0, tot / np.maximum(cnt, 1))
    return competition_ranks(2 * none + (unc > 0), mean)


def entry_ranks(metrics: dict[str, list[dict]], ids: list[str], resamples: int,
                seed: int = RANK_SEED) -> dict[str, tuple[int, int | None, int | None]]:
    """Each entry's (distinct rank, rank_low, rank_high) among ``ids`` (the entries' ids) of one
    group (metric -> its runs): the module docstring."""
    import numpy as np

    total, count, uncrossed = _per_seed(metrics, ids)
    n = total.shape[1]
    point = _ranks(np.ones((1, n)), total, count, uncrossed)[0]
    if resamples <= 0 or n < 2:
        return {m: (int(point[i]), None, None) for i, m in enumerate(ids)}
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    ranks = _ranks(weights, total, count, uncrossed)
    tail = round((1.0 - RANK_LEVEL) / 2 * 100, 9)        # 2.5, not 2.4999999999999956
    low = np.percentile(ranks, tail, axis=0, method="lower")
    high = np.percentile(ranks, 100 - tail, axis=0, method="higher")
    return {m: (int(point[i]), int(low[i]), int(high[i])) for i, m in enumerate(ids)}


def add_entries(metrics: dict[str, list[dict]], rows: list[dict], resamples: int) -> None:
    """Set ``entry``, ``aliases``, ``distinct_rank``, ``n_distinct``, ``rank_low``, ``rank_high``
    on the leaderboard ``rows`` of one group (metric -> its runs in ``metrics``)."""
    entries = alias_entries(metrics)
    ranks = entry_ranks(metrics, list(entries), resamples)
    entry_of = {m: e for e, names in entries.items() for m in names}
    for r in rows:
        entry = entry_of[r["metric_id"]]
        r["entry"] = entry
        r["aliases"] = ",".join(m for m in entries[entry] if m != r["metric_id"])
        r["distinct_rank"], r["rank_low"], r["rank_high"] = ranks[entry]
        r["n_distinct"] = len(entries)
