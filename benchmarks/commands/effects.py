"""prunetax effects: which component matters, as paired differences in rate per axis of the taxonomy."""
from __future__ import annotations

HELP = ("component effects: per axis (base input, pointwise, reduction, scaling, structure, aggregation), the "
        "paired difference in rate between metrics that differ only there, with confidence intervals")

_SHOWN = ("axis", "comparison", "n_pairs", "n_cells", "mean_diff", "ci", "cell_ci", "cell_p", "cell_p_adj",
          "cell_adj_ci", "b_better", "n_identical", "n_censored")


def add_arguments(p) -> None:
    p.add_argument("results", metavar="RESULTS", help="results folder written by prunetax bench")
    p.add_argument("--out", default="effects", metavar="DIR",
                   help="folder for effects.md, effects.parquet and the figure (default ./effects)")
    p.add_argument("--by", default="", metavar="COLS",
                   help="score columns to split by, e.g. network,dataset (default: pool every cell)")
    p.add_argument("--metrics", default=None, metavar="M,..",
                   help="compare only among these metrics: ids, named metrics, or globs on the ids (e.g. "
                        "'weight-value-l1-*,activation-taylor-*'); default every metric of the results")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--correction", default="holm", metavar="holm|none",
                   help="multiple-comparison correction within each --by group's comparisons (the family): holm "
                        "(Holm's step-down; adjusted p-values and intervals at the level of each one's Holm step; "
                        "the default) or none")
    p.add_argument("--keep-censored", action="store_true",
                   help="keep pairs where a metric never crossed the threshold (at its final rate, a lower bound)")
    p.add_argument("--format", default="png,svg,pdf", help="figure formats: png, svg, pdf (default all three)")


def command_line(args) -> str:
    import shlex

    words = ["prunetax", "effects", str(args.results), "--out", str(args.out)]
    if args.by:
        words += ["--by", args.by]
    if args.metrics:
        words += ["--metrics", args.metrics]
    if args.confidence != 0.95:
        words += ["--confidence", f"{args.confidence:g}"]
    if args.correction != "holm":
        words += ["--correction", args.correction]
    if args.keep_censored:
        words.append("--keep-censored")
    return shlex.join(words + ["--format", args.format])


def _columns(correction: str) -> list[tuple[str, str]]:
    """The shown columns and their headers: the corrected ones name the correction (none: the raw p alone)."""
    if correction == "none":
        return [(c, c) for c in _SHOWN if c not in ("cell_p_adj", "cell_adj_ci")]
    return [(c, {"cell_p_adj": f"cell_p_{correction}", "cell_adj_ci": f"cell_ci_{correction}"}.get(c, c))
            for c in _SHOWN]


def _show(e: dict, by, columns: list[tuple[str, str]]) -> dict:
    def f(v, signed=False):
        return "" if v is None else (f"{v:+.2f}" if signed else f"{v:.2f}")

    def ci(lo, hi):
        return f"[{f(e[lo], True)}, {f(e[hi], True)}]" if e[lo] is not None else "n/a"

    def p(v):
        return "n/a" if v is None else f"{v:.3f}" if v >= 0.001 else "<0.001"

    pre = ", ".join(f"{b}={e[b]}" for b in by)
    row = {"axis": (pre + ": " if pre else "") + e["axis"], "comparison": f"{e['level_b']} - {e['level_a']}",
           "n_pairs": str(e["n_pairs"]), "n_cells": str(e["n_cells"]), "mean_diff": f(e["mean_diff"], True),
           "ci": ci("ci_low", "ci_high"), "cell_ci": ci("cell_ci_low", "cell_ci_high"), "cell_p": p(e["cell_p"]),
           "cell_p_adj": p(e["cell_p_adj"]), "cell_adj_ci": ci("cell_adj_ci_low", "cell_adj_ci_high"),
           "b_better": "" if e["b_better"] is None else f"{e['b_better'] * 100:.0f}%",
           "n_identical": str(e["n_identical"]), "n_censored": str(e["n_censored"])}
    return {head: row[c] for c, head in columns}


def _head(args, rows: list[dict], cells: int, nets: list[str]) -> str:
    """The paragraph above the table: what it holds, and the correction within which family."""
    conf = f"{args.confidence * 100:g} %"
    among = f", {len({r['metric_id'] for r in rows})} metrics ({args.metrics})" if args.metrics else ""
    family = "each --by group's comparisons" if args.by else "the comparisons below"
    fix = (f"cell_p: two-sided t test of the interval over cells; cell_p_holm, cell_ci_holm: Holm-adjusted "
           f"p-value and the interval at the level of its Holm step, within {family} (the family, less those "
           "whose every pair ran as one metric)" if args.correction == "holm"
           else "cell_p: two-sided t test of the interval over cells, uncorrected (--correction none)")
    return (f"Component effects of {args.results} ({cells} cells: {', '.join(nets)}{among}): mean of rate(b) - "
            f"rate(a) in points of % conv weights removed; ci: {conf} t interval over the pairs; cell_ci: over the "
            f"cells' mean differences; {fix}; b_better: share of pairs where b removed more.")


def run(args) -> int:
    from pathlib import Path

    import pyarrow as pa

    from prunetax.benchmarks._version import __version__
    from prunetax.benchmarks.analysis import EFFECT_COLUMNS, component_effects, effects_figure
    from prunetax.benchmarks.io import atomic_path, format_markdown, format_table, write_parquet
    from prunetax.benchmarks.plots import FORMATS, pyplot
    from prunetax.benchmarks.ranking import check_correction
    from prunetax.benchmarks.results import SCORES_SCHEMA, read_scores
    from prunetax.taxonomy.errors import PrunetaxError

    by = tuple(b.strip() for b in args.by.split(",") if b.strip())
    bad = [b for b in by if b not in SCORES_SCHEMA.names]
    if bad:
        raise PrunetaxError(f"cannot split by {bad[0]!r}; choose from {', '.join(SCORES_SCHEMA.names)}")
    check_correction(args.correction, "--correction")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        raise PrunetaxError(f"unknown figure format in {args.format!r}; choose from {', '.join(FORMATS)}")
    scores = read_scores(args.results)
    if scores.num_rows == 0:
        raise PrunetaxError(f"no results in {args.results}: expected score files "
                            "scores/network=<n>/dataset=<d>/<cell>.parquet as prunetax bench writes them")
    rows = scores.to_pylist()
    if args.metrics is not None:
        from prunetax.benchmarks.ranking import match_metrics, metric_patterns

        chosen = match_metrics([r["metric_id"] for r in rows], metric_patterns(args.metrics), source=str(args.results))
        rows = [r for r in rows if r["metric_id"] in chosen]
    effects = component_effects(rows, by=by, confidence=args.confidence, keep_censored=args.keep_censored,
                                correction=args.correction)
    command = command_line(args)
    out = Path(args.out)
    cells = len({r["cell_id"] for r in rows})
    nets = sorted({f"{r['network']} / {r['dataset']}" for r in rows})
    columns = _columns(args.correction)
    shown = [_show(e, by, columns) for e in effects]
    headers = [h for _, h in columns]
    md = f"{_head(args, rows, cells, nets)}\n\n{format_markdown(shown, headers)}\n`{command}`\n"
    with atomic_path(out / "effects.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    schema = pa.schema([(b, SCORES_SCHEMA.field(b).type) for b in by] +
                       [(c, pa.string() if c in ("axis", "level_a", "level_b", "correction") else
                         pa.int64() if c.startswith("n_") else pa.float64()) for c in EFFECT_COLUMNS])
    write_parquet(pa.Table.from_pylist(effects, schema=schema), str(out / "effects.parquet"),
                  {"prunetax_command": command, "prunetax_version": __version__})
    plt = pyplot()
    fig = effects_figure(plt, effects, f"component effects: {', '.join(nets)} ({cells} cells)", by)
    written = 2
    if fig is not None:
        meta = {"png": {"Title": "component effects", "Source": command, "Software": f"prunetax {__version__}"},
                "svg": {"Title": "component effects", "Source": command, "Creator": f"prunetax {__version__}",
                        "Date": None},
                "pdf": {"Title": "component effects", "Subject": command, "Creator": f"prunetax {__version__}",
                        "CreationDate": None}}
        for fmt in formats:
            with atomic_path(out / f"effects.{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, dpi=150, metadata=meta[fmt], bbox_inches="tight")
            written += 1
        plt.close(fig)
    print(format_table(shown, headers), end="")
    print(f"effects: {len(effects)} comparisons over {sum(e['n_pairs'] for e in effects)} pairs from {cells} cells; "
          f"wrote {written} files to {out}")
    return 0
