"""Leaderboards: the metrics of a results folder ranked, per group, and the leaderboard's formats.

``rank_scores(scores, by, top)`` ranks a scores table (``results.read_scores``'s);
``prunetax.benchmarks.leaderboard(results_dir, by, top)`` (in results.py) reads a folder and calls it.
This package does not import results.py (results.py imports it): it reads no files.

A group is ``by`` (default network, dataset) + the baseline's recipe (``recipe_hash``) + the
protocol (its JSON): runs under two recipes or two protocols are never pooled as seeds of one
metric. Each group carries a readable label (``group``, ``recipe_label``, ``protocol_label``).
Statistics are over the runs (one per cell: a seed of a network / data set) of a metric:

- ``mean``, ``min``, ``max`` of ``conv_weights_removed_pct``; ``std`` (ddof 1) and ``pm2sigma``
  (2 std) null when fewer than two runs (no spread can be estimated from one);
- ``n_crossed``: runs whose accuracy crossed the threshold. A run that never crossed holds its
  final rate, a lower bound on its rate: a metric with such a run is ``censored``, and ranked
  after every metric whose runs all crossed (its mean is shown as ``>= mean``).

Names that ran as one metric (``ran_as``; e.g. ``filter_l1`` and ``weight-value-l1-none``) are
one entry: ``distinct_rank`` of ``n_distinct`` ranks the entries, with a rank interval
(``rank_low``, ``rank_high``) from a bootstrap over the group's seeds (``entries``).

Modules: ``board`` (``rank_scores`` and the columns), ``statistics`` (runs grouped, summarised,
ranked), ``entries`` (distinct metrics, their ranks and rank intervals), ``labels`` (group
labels), ``authors`` (the authors' rates), ``versus`` (paired differences against a reference,
the level of their interval, their t test and its correction within the group), ``correction``
(Holm's step-down, shared with ``analysis.component_effects``), ``select`` (the metrics an
option names), ``formats`` (table, markdown, html, csv, json; ``--top``).
"""
from __future__ import annotations

from prunetax.benchmarks.ranking.authors import AUTHORS_PROTOCOL, AUTHORS_RATES, AUTHORS_SOURCE, authors_rate
from prunetax.benchmarks.ranking.board import LEADERBOARD_COLUMNS, rank_scores
from prunetax.benchmarks.ranking.correction import CORRECTION, CORRECTIONS, check_correction, holm
from prunetax.benchmarks.ranking.entries import RESAMPLES
from prunetax.benchmarks.ranking.formats import FORMATS, group_sections, parse_top, render
from prunetax.benchmarks.ranking.select import match_metrics, metric_patterns, select_metrics
from prunetax.benchmarks.ranking.versus import CONFIDENCE, VERSUS_COLUMNS, confidence_of

__all__ = ["LEADERBOARD_COLUMNS", "VERSUS_COLUMNS", "rank_scores", "select_metrics", "match_metrics",
           "metric_patterns", "AUTHORS_RATES",
           "AUTHORS_PROTOCOL", "AUTHORS_SOURCE", "FORMATS", "parse_top", "render", "group_sections",
           "authors_rate", "CONFIDENCE", "confidence_of", "CORRECTION", "CORRECTIONS", "check_correction", "holm",
           "RESAMPLES"]
