"""Leaderboards: the metrics of a results folder ranked, per group, and the leaderboard's formats.

``rank_scores(scores, by, top)`` ranks a scores table (``results.read_scores``'s);
``prunetax.benchmarks.leaderboard(results_dir, by, top)`` (in results.py) reads a folder and calls it.
It does not import results.py (results.py imports it): it reads no files.

A group is ``by`` (default network, dataset) + the baseline's recipe (``recipe_hash``) + the
protocol (its JSON): runs under two recipes or two protocols are never pooled as seeds of one
metric. Each group carries a readable label (``group``, ``recipe_label``, ``protocol_label``).
Statistics are over the runs (one per cell: a seed of a network / data set) of a metric:

- ``mean``, ``min``, ``max`` of ``conv_weights_removed_pct``; ``std`` (ddof 1) and ``pm2sigma``
  (2 std) null when fewer than two runs (no spread can be estimated from one);
- ``n_crossed``: runs whose accuracy crossed the threshold. A run that never crossed holds its
  final rate, a lower bound on its rate: a metric with such a run is ``censored``, and ranked
  after every metric whose runs all crossed (its mean is shown as ``>= mean``).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["LEADERBOARD_COLUMNS", "VERSUS_COLUMNS", "rank_scores", "select_metrics", "match_metrics",
           "metric_patterns", "AUTHORS_RATES",
           "AUTHORS_PROTOCOL", "AUTHORS_SOURCE", "FORMATS", "parse_top", "render", "group_sections"]

if TYPE_CHECKING:  # pyarrow is imported where used: the command line builds its parser without it
    import pyarrow as pa

_COMPONENTS = ("base_input", "pointwise", "reduction", "scaling", "structure", "aggregation")

LEADERBOARD_COLUMNS = ("group", "rank", "n_metrics", "metric_id", "kind", *_COMPONENTS, "ran_as",
                       "n_runs", "n_seeds", "n_crossed", "censored", "mean", "std", "pm2sigma", "min", "max",
                       "gap_to_oracle", "baseline_accuracy", "threshold", "threshold_mode", "protocol",
                       "recipe_hash", "recipe_label", "protocol_label", "authors_rate", "authors_note")
# with ``versus``: the paired difference rate(metric) - rate(its reference) over the cells where both ran
VERSUS_COLUMNS = ("versus", "vs_n", "vs_censored", "vs_mean", "vs_ci_low", "vs_ci_high", "vs_better")
_INTS = ("rank", "n_metrics", "n_runs", "n_seeds", "n_crossed", "vs_n", "vs_censored")
_FLOATS = ("mean", "std", "pm2sigma", "min", "max", "gap_to_oracle", "baseline_accuracy", "threshold", "authors_rate",
           "vs_mean", "vs_ci_low", "vs_ci_high", "vs_better")


def _type(column: str):
    import pyarrow as pa
    return (pa.int64() if column in _INTS else pa.float64() if column in _FLOATS
            else pa.bool_() if column == "censored" else pa.string())


_NOT_BY = ("metric_id", "conv_weights_removed_pct")

# The rates the authors' code records (docs/protocol.md, "Rates to compare a reproduction with"):
# % of convolution weights removed at a 5-point accuracy drop, with the short retraining of its
# `characterise` mode. Source: kaveena/compare-pruning-signals (branch input_output_saliency,
# commit 1bd281d), the driver of the Caffe fork kaveena/caffe-pruning.
AUTHORS_RATES = {("lenet5", "mnist"): 84.9, ("cifar10_quick", "cifar10"): 67.5, ("resnet20", "cifar10"): 25.4,
                 ("nin", "cifar10"): 72.8, ("alexnet_cifar", "cifar10"): 70.1, ("resnet20", "cifar100"): 12.5,
                 ("nin", "cifar100"): 59.2, ("alexnet_cifar", "cifar100"): 64.0}
AUTHORS_PROTOCOL = {"mode": "characterise", "threshold": 5.0, "relative": False}
AUTHORS_SOURCE = "kaveena/compare-pruning-signals@1bd281d (docs/protocol.md)"


def _num(v: float) -> str:
    return f"{v:g}"


def _json(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _protocol_label(p: dict | None, extra: Sequence[str]) -> str:
    if p is None:
        return "unknown"
    bits = []
    if "threshold" in p:
        bits.append(f"threshold {_num(p['threshold'])} {'%' if p.get('relative') else 'points'}")
    for key in ("mode", "schedule"):
        if key in p:
            bits.append(f"{key} {p[key]}")
    bits += [f"{k}={p.get(k)}" for k in extra if k not in ("threshold", "relative", "mode", "schedule")]
    return ", ".join(bits) or "default"


def _recipe_label(r: dict | None, extra: Sequence[str], digest: str | None) -> str:
    if r is None:
        return "unknown"
    bits = [f"epochs={r.get('epochs')}"] + ([f"limit={r['limit']}"] if r.get("limit") else [])
    bits += [f"{k}={r.get(k)}" for k in extra if k not in ("epochs", "limit")]
    return ", ".join(bits) + (f" ({digest[:8]})" if digest else "")


def _differing(dicts: list[dict | None]) -> list[str]:
    """Keys whose values differ among the non-null ``dicts``, sorted."""
    known = [d for d in dicts if d is not None]
    keys = sorted({k for d in known for k in d})
    return [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in known}) > 1]


def _authors(nets: set, datas: set, p: dict | None) -> tuple[float | None, str]:
    if len(nets) != 1 or len(datas) != 1:
        return None, "pooled over networks or data sets: no authors' rate"
    net, data = next(iter(nets)), next(iter(datas))
    rate = AUTHORS_RATES.get((net, data))
    if rate is None:
        return None, f"no authors' rate for {net} / {data}"
    note = "theirs: mode characterise, threshold 5 points"
    if not p or any(k not in p for k in AUTHORS_PROTOCOL):
        return rate, note + "; here: protocol not recorded"
    diff = [f"{k} {_num(p[k]) if isinstance(p[k], float) else p[k]}" for k in ("mode", "threshold", "relative")
            if p[k] != AUTHORS_PROTOCOL[k]]
    return rate, note + (f"; here: {', '.join(diff)}" if diff else ", as here")


def _reference(text: str) -> tuple[str, str] | None:
    """``AXIS=LEVEL`` of ``versus`` as (axis, level), or None when ``text`` names a metric."""
    from prunetax.taxonomy.vocab import ids

    if "=" not in text:
        return None
    axis, _, level = (t.strip() for t in text.partition("="))
    if axis not in _COMPONENTS:
        raise PrunetaxError(f"versus {text!r}: {axis!r} is not an axis; choose from {', '.join(_COMPONENTS)} "
                            "(AXIS=LEVEL, e.g. scaling=none), or give a metric id")
    if level not in ids(axis):
        raise PrunetaxError(f"versus {text!r}: {level!r} is not a {axis} level; choose from {', '.join(ids(axis))}")
    return axis, level


def _metric_id(text: str, known) -> str | None:
    """The metric id of ``known`` that ``text`` names: itself, or a named metric's / expression's canonical id."""
    if text in known:
        return text
    from prunetax.taxonomy import parse_metric

    try:
        canonical = str(parse_metric(text))
    except Exception:  # not a metric at all: the caller says what is known
        return None
    return canonical if canonical in known else None


def _versus(metrics: dict[str, list[dict]], versus: str, axis: tuple[str, str] | None,
            confidence: float) -> dict[str, dict]:
    """Per metric of one group: its reference (``versus``; ``axis``: its ``AXIS=LEVEL`` parsed,
    None for a metric) and the paired difference over shared cells."""
    from prunetax.benchmarks.analysis import _mean_ci

    named = _metric_id(versus, metrics) if axis is None else None    # one reference for the group
    comps: dict[tuple, str] = {}
    for metric, runs in metrics.items():  # the spec row wins over a named metric of the same components
        key = tuple(runs[0][c] for c in _COMPONENTS)
        if None not in key and (key not in comps or runs[0]["kind"] == "spec"):
            comps[key] = metric
    out = {}
    for metric, runs in metrics.items():
        if axis is None:
            ref = named
        else:
            key = tuple(runs[0][c] for c in _COMPONENTS)
            i = _COMPONENTS.index(axis[0])
            ref = None if None in key else comps.get(key[:i] + (axis[1],) + key[i + 1:])
        row = {"versus": ref, "vs_n": 0, "vs_censored": 0, "vs_mean": None, "vs_ci_low": None, "vs_ci_high": None,
               "vs_better": None}
        if ref is not None:
            theirs = {r["cell_id"]: r for r in metrics[ref] if r["conv_weights_removed_pct"] is not None}
            pairs = [(r, theirs[r["cell_id"]]) for r in runs
                     if r["conv_weights_removed_pct"] is not None and r["cell_id"] in theirs]
            kept = [(a, b) for a, b in pairs if a["crossed"] and b["crossed"]]
            diffs = [a["conv_weights_removed_pct"] - b["conv_weights_removed_pct"] for a, b in kept]
            _, lo, hi = _mean_ci(diffs, confidence)
            row.update(vs_n=len(diffs), vs_censored=len(pairs) - len(kept),
                       vs_mean=sum(diffs) / len(diffs) if diffs else None, vs_ci_low=lo, vs_ci_high=hi,
                       vs_better=sum(d > 0 for d in diffs) / len(diffs) if diffs else None)
        out[metric] = row
    return out


def rank_scores(scores: "pa.Table", by: Sequence[str] = ("network", "dataset"), top: int | None = None,
                source: str | None = None, versus: str | None = None, confidence: float = 0.95) -> "pa.Table":
    """The metrics of ``scores`` ranked by mean % conv weights removed, per group (module docstring).

    Columns: ``by``, then ``LEADERBOARD_COLUMNS`` (less any of ``by``), then with ``versus`` the
    ``VERSUS_COLUMNS``. ``top``: keep the best N of each group (None: all; 0: none). ``source``
    names the scores in errors. An empty table is an error (a results folder without score files).

    ``versus``: a metric (id, named metric, ``random``, ``oracle``), or ``AXIS=LEVEL`` (each
    metric against the one that differs from it only in that component, set to LEVEL: e.g.
    ``scaling=none``, ``structure=channel``). Per metric of a group: ``vs_mean``, the mean over
    the group's cells of rate(metric) - rate(reference) on the same cell (same seed and
    baseline), its t interval at ``confidence`` (null under two cells), ``vs_better`` the share of
    cells where the metric removed more; cells where either never crossed the threshold are left
    out and counted in ``vs_censored``. ``versus`` is null where the group has no reference.
    """
    axis = None if versus is None else _reference(versus)   # a malformed AXIS=LEVEL fails before any work
    if versus is not None:
        if not 0 < confidence < 1:
            raise PrunetaxError(f"confidence must be in (0, 1), got {confidence}")
    import numpy as np
    import pyarrow as pa

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
    unique: dict[tuple, dict] = {}
    for r in scores.to_pylist():  # one row per (cell_id, metric_id), whatever copies a reader may meet
        unique.setdefault((r["cell_id"], r["metric_id"]), r)
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in unique.values():
        key = tuple(r[b] for b in by) + (r["recipe_hash"], r["protocol"])
        groups.setdefault(key, {}).setdefault(r["metric_id"], []).append(r)

    # readable labels: the protocol's and recipe's fields that differ between groups of the same ``by``
    info = {}
    for key, metrics in groups.items():
        rows = [r for runs in metrics.values() for r in runs]
        recipe = next((r["recipe"] for r in rows if r["recipe"] is not None), None)
        info[key] = {"protocol": _json(key[-1]), "recipe": _json(recipe),
                     "networks": {r["network"] for r in rows}, "datasets": {r["dataset"] for r in rows}}
    siblings: dict[tuple, list[tuple]] = {}
    for key in groups:
        siblings.setdefault(key[:len(by)], []).append(key)
    for keys in siblings.values():
        p_extra = _differing([info[k]["protocol"] for k in keys])
        r_extra = _differing([info[k]["recipe"] for k in keys])
        for k in keys:
            i = info[k]
            i["protocol_label"] = _protocol_label(i["protocol"], p_extra)
            i["recipe_label"] = _recipe_label(i["recipe"], r_extra, None)
        labels = [(info[k]["recipe_label"], info[k]["protocol_label"]) for k in keys]
        for k in keys:  # two recipes with the same visible fields (or unknown and known): add the hash
            if labels.count((info[k]["recipe_label"], info[k]["protocol_label"])) > 1 and k[-2]:
                info[k]["recipe_label"] = _recipe_label(info[k]["recipe"], r_extra, k[-2])
    for key, i in info.items():  # network / data set (several joined by '+' when pooled), other by-values
        where = " / ".join("+".join(sorted(map(str, vals))) for vals in (i["networks"], i["datasets"]))
        extra = ", ".join(f"{b}={v}" for b, v in zip(by, key) if b not in ("network", "dataset"))
        i["group"] = (f"{where}{' | ' + extra if extra else ''}"
                      f" | recipe {i['recipe_label']} | protocol {i['protocol_label']}")
        i["authors_rate"], i["authors_note"] = _authors(i["networks"], i["datasets"], i["protocol"])

    out = []
    for key in sorted(groups, key=lambda k: (tuple("" if v is None else str(v) for v in k[:len(by)]),
                                             info[k]["recipe_label"], info[k]["protocol_label"])):
        i, stats = info[key], []
        for metric, runs in groups[key].items():
            used = [r for r in runs if r["conv_weights_removed_pct"] is not None]
            vals = np.array([r["conv_weights_removed_pct"] for r in used], dtype=np.float64)
            n = len(vals)
            std = float(vals.std(ddof=1)) if n > 1 else None
            crossed = sum(1 for r in used if r["crossed"])
            base = [r["baseline_accuracy"] for r in used if r["baseline_accuracy"] is not None]
            first = runs[0]
            stats.append({
                **dict(zip(by, key)), "group": i["group"], "metric_id": metric,
                **{c: first[c] for c in ("kind", *_COMPONENTS, "ran_as")},
                "n_runs": n, "n_seeds": len({r["seed"] for r in used}), "n_crossed": crossed,
                "censored": crossed < n, "mean": float(vals.mean()) if n else None, "std": std,
                "pm2sigma": None if std is None else 2.0 * std,
                "min": float(vals.min()) if n else None, "max": float(vals.max()) if n else None,
                "baseline_accuracy": float(np.mean(base)) if base else None,
                "threshold": first["threshold"], "threshold_mode": first["threshold_mode"],
                "protocol": first["protocol"], "recipe_hash": first["recipe_hash"],
                "recipe_label": i["recipe_label"], "protocol_label": i["protocol_label"],
                "authors_rate": i["authors_rate"], "authors_note": i["authors_note"]})
        oracle = next((s["mean"] for s in stats if s["metric_id"] == "oracle"), None)
        if versus is not None:
            vs = _versus(groups[key], versus, axis, confidence)
            for s in stats:
                s.update(vs[s["metric_id"]])
        for s in stats:
            s["gap_to_oracle"] = None if oracle is None or s["mean"] is None else oracle - s["mean"]
            s["n_metrics"] = len(stats)
        stats.sort(key=lambda s: (s["mean"] is None, s["censored"], -(s["mean"] or 0.0), s["metric_id"]))
        for rank, s in enumerate(stats, 1):
            s["rank"] = rank
        out += stats if top is None else stats[:top]
    if versus is not None and axis is None and not any(s["versus"] for s in out):
        raise PrunetaxError(f"versus {versus!r}: no such metric in {source or 'these results'}; give a metric id, "
                            "a named metric, random or oracle that ran, or AXIS=LEVEL (e.g. scaling=none)")
    columns = LEADERBOARD_COLUMNS + (VERSUS_COLUMNS if versus is not None else ())
    schema = pa.schema([(b, scores.schema.field(b).type) for b in by] +
                       [(c, _type(c)) for c in columns if c not in by])
    return pa.Table.from_pylist(out, schema=schema)


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
            hit = _metric_id(pat, known)
            hits = [hit] if hit is not None else []
        if not hits:
            close = difflib.get_close_matches(pat, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "; 'prunetax leaderboard RESULTS --top all' lists them"
            raise PrunetaxError(f"metric {pat!r} is not in {source or 'these results'}{hint}")
        chosen.update(hits)
    return chosen


def select_metrics(table: "pa.Table", patterns: Sequence[str], source: str | None = None) -> "pa.Table":
    """The rows of a leaderboard whose metrics ``patterns`` name (``match_metrics``); ranks stay
    those of the whole group."""
    import pyarrow as pa

    ids = table.column("metric_id").to_pylist()
    chosen = match_metrics(ids, patterns, source)
    return table.filter(pa.array([m in chosen for m in ids], type=pa.bool_()))


# ---------------------------------------------------------------------------------------------
# Formats

FORMATS = ("table", "markdown", "csv", "json", "parquet", "html")


def parse_top(text) -> int | None:
    """``--top``: a non-negative integer (0 = no rows) or ``all`` (None)."""
    import argparse

    if text is None or str(text).strip().lower() == "all":
        return None
    try:
        value = int(str(text))
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"give a non-negative integer (0 = none) or 'all', not {text!r}")
    return value


def group_sections(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """The rows of a leaderboard cut into its groups, in order: ``[(group label, rows)]``."""
    out: list[tuple[str, list[dict]]] = []
    for r in rows:
        if not out or out[-1][0] != r["group"]:
            out.append((r["group"], []))
        out[-1][1].append(r)
    return out


# what table, markdown and html show, with their headers (ascii for the terminal)
_SHOWN = ("rank", "metric_id", "n_runs", "n_crossed", "mean", "pm2sigma", "min", "max", "gap_to_oracle",
          "baseline_accuracy")
_HEAD_ASCII = {"n_runs": "n", "n_crossed": "crossed", "pm2sigma": "+-2sigma", "gap_to_oracle": "oracle_gap",
               "baseline_accuracy": "baseline"}
_HEAD_PAPER = {"n_runs": "n", "n_crossed": "crossed", "mean": "mean (%)", "pm2sigma": "±2σ", "min": "min",
               "max": "max", "gap_to_oracle": "gap to oracle", "baseline_accuracy": "baseline acc. (%)"}


def _cell(r: dict, c: str, ge: str) -> str:
    v = r[c]
    if c == "n_crossed":
        return f"{v}/{r['n_runs']}"
    if c == "pm2sigma" and v is None:
        return "n/a"
    if v is None:
        return ""
    if c == "mean" and r["censored"]:
        return f"{ge}{v:.2f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _notes(rows: list[dict], ge: str) -> list[str]:
    notes = []
    if any(r["censored"] for r in rows):
        notes.append(f"{ge}: some runs never crossed the threshold; their rate is the final one (a lower bound). "
                     "Ranked after the metrics whose runs all crossed.")
    if any(r["pm2sigma"] is None for r in rows):
        notes.append("n/a: fewer than two runs, no spread.")
    return notes


def _cut(group_rows: list[dict], selected: bool = False) -> str | None:
    total = group_rows[0]["n_metrics"]
    if len(group_rows) == total:
        return None
    if selected:
        return f"{len(group_rows)} of {total} metrics shown; rank among all {total}"
    return f"top {len(group_rows)} of {total} metrics shown"


_VS_SHOWN = ("versus", "vs_mean", "vs_ci", "vs_n")
_VS_HEAD = {"versus": "versus", "vs_mean": "diff", "vs_ci": "95% ci", "vs_n": "pairs"}


def _vs_cell(r: dict, c: str) -> str:
    if r.get("versus") is None:
        return "" if c != "versus" else "-"
    if c == "vs_ci":
        lo, hi = r["vs_ci_low"], r["vs_ci_high"]
        return "n/a" if lo is None else f"[{lo:+.2f}, {hi:+.2f}]"
    if c == "vs_mean":
        return "" if r["vs_mean"] is None else f"{r['vs_mean']:+.2f}"
    if c == "vs_n":
        return f"{r['vs_n']}" + (f" (+{r['vs_censored']} censored)" if r["vs_censored"] else "")
    return str(r[c])


def render(table: "pa.Table", fmt: str, groups: list[str] | None = None, selected: bool = False) -> str:
    """The text of ``table`` (``rank_scores``'s) as ``fmt`` (table, markdown, csv, json, html).

    table, markdown and html: one section per group (its label, the authors' rate when there is
    one, the main columns, a line when the list was cut), notes at the end; ``groups``: labels of
    groups to show even when no row of theirs is left (``top`` 0). csv and json: every column.
    """
    import csv
    import html as h
    import io

    from prunetax.benchmarks.io import format_table, jsonable

    rows = table.to_pylist()
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=table.column_names, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "json":
        return json.dumps(jsonable(rows), indent=1) + "\n"
    if fmt not in ("table", "markdown", "html"):
        raise PrunetaxError(f"unknown leaderboard format {fmt!r}; choose from {', '.join(FORMATS)}")
    sections = group_sections(rows)
    shown = {g for g, _ in sections}
    sections += [(g, []) for g in (groups or []) if g not in shown]
    ge = ">=" if fmt == "table" else "≥"
    head = _HEAD_ASCII if fmt == "table" else _HEAD_PAPER
    shown_cols = _SHOWN + (_VS_SHOWN if "versus" in table.column_names else ())
    headers = [_VS_HEAD.get(c) or head.get(c, c) for c in shown_cols]
    parts = []
    for label, grows in sections:
        lines = []
        authors = grows[0]["authors_rate"] if grows else None
        extra = ([f"authors' rate for {grows[0]['group'].split(' | ')[0]}: {authors:g} % "
                  f"({grows[0]['authors_note']})"] if authors is not None else [])
        cut = (_cut(grows, selected) if grows
               else "none of the chosen metrics" if selected else "top 0: no metrics shown")
        body = [{hd: (_vs_cell(r, c) if c in _VS_SHOWN else _cell(r, c, ge)) for hd, c in zip(headers, shown_cols)}
                for r in grows]
        if fmt == "table":
            lines += [f"== {label}", *extra]
            lines += [format_table(body, headers).rstrip("\n")] if grows else []
            lines += [f"({cut})"] if cut else []
        elif fmt == "markdown":
            lines += [f"### {label}", ""] + [f"{e}." for e in extra] + ([""] if extra else [])
            if grows:
                lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                lines += ["| " + " | ".join(b[hd].replace("|", "\\|") for hd in headers) + " |" for b in body]
            lines += ["", f"{cut[0].upper()}{cut[1:]}."] if cut else []
        else:
            lines.append(f"<h3>{h.escape(label)}</h3>")
            lines += [f"<p>{h.escape(e)}.</p>" for e in extra]
            if grows:
                lines.append("<table>\n<thead><tr>" + "".join(f"<th>{h.escape(x)}</th>" for x in headers)
                             + "</tr></thead>\n<tbody>")
                lines += ["<tr>" + "".join(f"<td>{h.escape(b[hd])}</td>" for hd in headers) + "</tr>" for b in body]
                lines.append("</tbody>\n</table>")
            lines += [f"<p>{h.escape(cut)}.</p>"] if cut else []
        parts.append("\n".join(lines))
    notes = _notes(rows, ge)
    if "versus" in table.column_names:
        notes.append("diff: mean over the cells of rate(metric) - rate(versus) on the same cell (seed and baseline); "
                     "95% ci: t interval over those cells (n/a under two); pairs: cells compared, and those left out "
                     "because a metric never crossed the threshold.")
    if fmt == "html":
        notes = [f"<p>{h.escape(n)}</p>" for n in notes]
    text = "\n\n".join(parts)
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text + "\n"
