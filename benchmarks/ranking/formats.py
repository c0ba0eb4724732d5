"""The text formats of a leaderboard (table, markdown, html, csv, json) and the ``--top`` option."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from prunetax.taxonomy.errors import PrunetaxError

if TYPE_CHECKING:  # pyarrow is imported where used: the command line builds its parser without it
    import pyarrow as pa

__all__ = ["FORMATS", "parse_top", "group_sections", "render"]

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


# what table, markdown and html show, with their headers (ascii for the terminal): one line per
# distinct metric (entry), its rank among the group's distinct metrics and the rank interval
_SHOWN = ("rank", "rank_ci", "metric_id", "n_runs", "n_crossed", "mean", "pm2sigma", "min", "max", "gap_to_oracle",
          "baseline_accuracy")
_HEAD_ASCII = {"rank_ci": "rank_95%", "n_runs": "n", "n_crossed": "crossed", "pm2sigma": "+-2sigma",
               "gap_to_oracle": "oracle_gap", "baseline_accuracy": "baseline"}
_HEAD_PAPER = {"rank_ci": "rank 95 %", "n_runs": "n", "n_crossed": "crossed", "mean": "mean (%)", "pm2sigma": "±2σ",
               "min": "min", "max": "max", "gap_to_oracle": "gap to oracle", "baseline_accuracy": "baseline acc. (%)"}
# with versus; the interval's header names its level (``versus.interval_name``), the corrected
# columns name the correction (none: the raw p alone)
_VS_SHOWN = ("versus", "vs_mean", "vs_ci", "vs_p", "vs_p_adj", "vs_adj_ci", "vs_n")
_VS_HEAD = {"versus": "versus", "vs_mean": "diff", "vs_p": "p", "vs_n": "pairs"}


def _cell(r: dict, c: str, ge: str) -> str:
    if c == "rank":
        return str(r.get("distinct_rank", r["rank"]))
    if c == "rank_ci":
        lo, hi = r.get("rank_low"), r.get("rank_high")
        return "n/a" if lo is None else f"[{lo}, {hi}]"
    if c == "metric_id" and r.get("aliases"):     # the entry's id, then its other names
        entry = r.get("entry") or r["metric_id"]
        names = [r["metric_id"], *r["aliases"].split(",")]
        return f"{entry} (= {', '.join(m for m in names if m != entry)})"
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


def _vs_cell(r: dict, c: str) -> str:
    if r.get("versus") is None:
        return "" if c != "versus" else "-"
    if c in ("vs_ci", "vs_adj_ci"):
        lo, hi = (r["vs_ci_low"], r["vs_ci_high"]) if c == "vs_ci" else (r.get("vs_adj_low"), r.get("vs_adj_high"))
        return "n/a" if lo is None else f"[{lo:+.2f}, {hi:+.2f}]"
    if c in ("vs_p", "vs_p_adj"):
        v = r.get(c)
        return "n/a" if v is None else f"{v:.3f}" if v >= 0.001 else "<0.001"
    if c == "vs_mean":
        return "" if r["vs_mean"] is None else f"{r['vs_mean']:+.2f}"
    if c == "vs_n":
        return f"{r['vs_n']}" + (f" (+{r['vs_censored']} censored)" if r["vs_censored"] else "")
    return str(r[c])


def _notes(rows: list[dict], ge: str, heads: dict[str, str], versus: tuple[str, str, float] | None) -> list[str]:
    """The notes under the sections; ``heads``: column -> header; ``versus``: (the versus
    interval's name, the correction, the interval's level) or None without versus."""
    notes = []
    if rows:
        notes.append(f"{heads['rank']}: among the group's distinct metrics (names that ran as one metric share a line, "
                     f"the others after '='; equal means share a rank); {heads['rank_ci']}: the middle 95 % of its "
                     "ranks over bootstrap resamples of the group's seeds (n/a under two seeds).")
    if any(r["censored"] for r in rows):
        notes.append(f"{ge}: some runs never crossed the threshold; their rate is the final one (a lower bound). "
                     "Ranked after the metrics whose runs all crossed.")
    if any(r["pm2sigma"] is None for r in rows):
        notes.append("n/a: fewer than two runs, no spread.")
    if versus is not None:
        interval, correction, confidence = versus
        notes.append("diff: mean over the cells of rate(metric) - rate(versus) on the same cell (seed and baseline); "
                     f"{interval}: t interval over those cells (n/a under two); p: its two-sided t test; pairs: cells "
                     "compared, and those left out because a metric never crossed the threshold.")
        if correction != "none":
            notes.append(f"{heads['vs_p_adj']}, {heads['vs_adj_ci']}: {correction.capitalize()}'s correction within "
                         "each group's comparisons (one per distinct metric shown, less a metric against itself or an "
                         "alias); the interval is at the level of the comparison's Holm step, so it excludes 0 "
                         f"exactly when {heads['vs_p_adj']} <= {round(1 - confidence, 12):g}.")
        else:
            notes.append("p and intervals uncorrected for multiple comparisons (correction none).")
    return notes


def _cut(group_rows: list[dict], selected: bool = False) -> str | None:
    """The line saying the group's list was cut; ``group_rows``: one per distinct metric shown."""
    first = group_rows[0]
    total = first.get("n_distinct") or first["n_metrics"]
    what = "metrics" if total == first["n_metrics"] else "distinct metrics"
    if len(group_rows) == total:
        return None
    if selected:
        return f"{len(group_rows)} of {total} {what} shown; rank among all {total}"
    return f"top {len(group_rows)} of {total} {what} shown"


def _one_per_entry(rows: list[dict]) -> list[dict]:
    """One row per entry (distinct metric) of one group's rows, where its first row is: the
    entry's own row when it is there, else its first."""
    out: dict[str, dict] = {}
    for r in rows:
        entry = r.get("entry") or r["metric_id"]
        if entry not in out or r["metric_id"] == entry:
            out[entry] = r
    return list(out.values())


def _table_lines(label: str, extra: list[str], body: list[dict], headers: list[str], cut: str | None) -> list[str]:
    from prunetax.benchmarks.io import format_table

    lines = [f"== {label}", *extra]
    lines += [format_table(body, headers).rstrip("\n")] if body else []
    return lines + ([f"({cut})"] if cut else [])


def _markdown_lines(label: str, extra: list[str], body: list[dict], headers: list[str], cut: str | None) -> list[str]:
    lines = [f"### {label}", ""] + [f"{e}." for e in extra] + ([""] if extra else [])
    if body:
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(b[hd].replace("|", "\\|") for hd in headers) + " |" for b in body]
    return lines + (["", f"{cut[0].upper()}{cut[1:]}."] if cut else [])


def _html_lines(label: str, extra: list[str], body: list[dict], headers: list[str], cut: str | None) -> list[str]:
    import html as h

    lines = [f"<h3>{h.escape(label)}</h3>"]
    lines += [f"<p>{h.escape(e)}.</p>" for e in extra]
    if body:
        lines.append("<table>\n<thead><tr>" + "".join(f"<th>{h.escape(x)}</th>" for x in headers)
                     + "</tr></thead>\n<tbody>")
        lines += ["<tr>" + "".join(f"<td>{h.escape(b[hd])}</td>" for hd in headers) + "</tr>" for b in body]
        lines.append("</tbody>\n</table>")
    return lines + ([f"<p>{h.escape(cut)}.</p>"] if cut else [])


_SECTION = {"table": _table_lines, "markdown": _markdown_lines, "html": _html_lines}


def _rows_text(table: "pa.Table", fmt: str) -> str:
    """csv and json: every column of every row."""
    import csv
    import io

    from prunetax.benchmarks.io import jsonable

    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps(jsonable(rows), indent=1) + "\n"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=table.column_names, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _headers(fmt: str, interval: str | None, correction: str) -> dict[str, str]:
    """Column -> header of what table, markdown and html show (``interval``: the versus interval's name)."""
    head = _HEAD_ASCII if fmt == "table" else _HEAD_PAPER
    shown = _SHOWN + (() if interval is None else tuple(
        c for c in _VS_SHOWN if correction != "none" or c not in ("vs_p_adj", "vs_adj_ci")))
    vs = {**_VS_HEAD, "vs_ci": interval, "vs_p_adj": f"p {correction}", "vs_adj_ci": f"{correction} ci"}
    return {c: vs[c] if c in _VS_SHOWN else head.get(c, c) for c in shown}


def render(table: "pa.Table", fmt: str, groups: list[str] | None = None, selected: bool = False) -> str:
    """The text of ``table`` (``rank_scores``'s) as ``fmt`` (table, markdown, csv, json, html).

    table, markdown and html: one section per group (its label, the authors' rate when there is
    one, one line per distinct metric with its aliases, its distinct rank and rank interval, the
    main columns, a line when the list was cut), notes at the end; ``groups``: labels of groups to
    show even when no row of theirs is left (``top`` 0); with versus columns, the interval is
    named by the level the table records (``versus.confidence_of``) and the corrected columns by
    the correction (``vs_correction``). csv and json: every column of every row.
    """
    import html as h

    from prunetax.benchmarks.ranking.versus import confidence_of, interval_name

    if fmt in ("csv", "json"):
        return _rows_text(table, fmt)
    if fmt not in _SECTION:
        raise PrunetaxError(f"unknown leaderboard format {fmt!r}; choose from {', '.join(FORMATS)}")
    rows = table.to_pylist()
    sections = group_sections(rows)
    shown = {g for g, _ in sections}
    sections += [(g, []) for g in (groups or []) if g not in shown]
    ge = ">=" if fmt == "table" else "≥"
    confidence = confidence_of(table)
    interval = interval_name(confidence) if "versus" in table.column_names else None
    correction = next((r.get("vs_correction") for r in rows if r.get("vs_correction")), "none")
    heads = _headers(fmt, interval, correction)
    headers = list(heads.values())
    parts = []
    for label, grows in sections:
        grows = _one_per_entry(grows)
        authors = grows[0]["authors_rate"] if grows else None
        extra = ([f"authors' rate for {grows[0]['group'].split(' | ')[0]}: {authors:g} % "
                  f"({grows[0]['authors_note']})"] if authors is not None else [])
        cut = (_cut(grows, selected) if grows
               else "none of the chosen metrics" if selected else "top 0: no metrics shown")
        body = [{hd: (_vs_cell(r, c) if c in _VS_SHOWN else _cell(r, c, ge)) for c, hd in heads.items()}
                for r in grows]
        parts.append("\n".join(_SECTION[fmt](label, extra, body, headers, cut)))
    notes = _notes(rows, ge, heads, None if interval is None else (interval, correction, confidence))
    if fmt == "html":
        notes = [f"<p>{h.escape(n)}</p>" for n in notes]
    text = "\n\n".join(parts)
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text + "\n"
