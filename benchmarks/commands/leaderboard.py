"""prunetax leaderboard: metrics ranked by mean % conv weights removed across seeds, per group."""
from __future__ import annotations

HELP = ("rank the metrics of a results folder by mean percent of conv weights removed, per network, data set, "
        "recipe and protocol (mean, +-2 sigma, min, max across seeds)")


def add_arguments(p) -> None:
    from prunetax.benchmarks.ranking import CONFIDENCE, CORRECTION, FORMATS, RESAMPLES, parse_top

    p.add_argument("results", metavar="RESULTS", help="results folder written by prunetax bench")
    p.add_argument("--by", default="network,dataset",
                   help="group columns (default network,dataset; '' = none); recipe and protocol always split groups")
    p.add_argument("--top", type=parse_top, default=None, metavar="N|all",
                   help="best N distinct metrics per group (ties included; default all; 0 = none: the groups alone)")
    p.add_argument("--metrics", default=None, metavar="M,..",
                   help="show only these metrics: ids, named metrics, or globs on the ids (e.g. "
                        "'weight-value-l1-*,filter_l1,random'); ranks stay those among all the group's metrics")
    p.add_argument("--versus", default=None, metavar="METRIC|AXIS=LEVEL",
                   help="add each metric's paired difference in rate against METRIC (an id, named metric, random, "
                        "oracle), or against the metric that differs from it only in AXIS, set to LEVEL (e.g. "
                        "scaling=none, structure=channel): mean over the cells where both ran and its "
                        f"{CONFIDENCE * 100:g}%% t interval, its two-sided t test, and both corrected (--correction)")
    p.add_argument("--correction", default=CORRECTION, metavar="holm|none",
                   help="with --versus: multiple-comparison correction within each group's comparisons (its metrics, "
                        "or those --metrics chooses; one per distinct metric): holm (Holm's step-down: adjusted "
                        "p-values, intervals at the level of each one's Holm step; the default) or none")
    p.add_argument("--resamples", default=str(RESAMPLES), metavar="N",
                   help=f"bootstrap resamples of each group's seeds behind the rank intervals (default {RESAMPLES}, "
                        "fixed generator seed; 0 = no intervals)")
    p.add_argument("--format", default="table", choices=FORMATS,
                   help="table, markdown, html (main columns, one section per group); csv, json, parquet "
                        "(every column); default table")
    p.add_argument("--out", default=None, metavar="PATH", help="write to PATH (atomically) instead of stdout")


def run(args) -> int:
    import sys

    from prunetax.benchmarks.io import write_parquet, write_text
    from prunetax.benchmarks.ranking import check_correction, metric_patterns, rank_scores, render, select_metrics
    from prunetax.benchmarks.results import read_scores
    from prunetax.taxonomy.errors import PrunetaxError

    by = tuple(b.strip() for b in args.by.split(",") if b.strip())
    check_correction(args.correction, "--correction")
    resamples = int(args.resamples) if args.resamples.strip().isdigit() else -1
    if resamples < 0:
        raise PrunetaxError(f"--resamples {args.resamples!r}: give a non-negative integer (default 1000; 0 = no rank "
                            "intervals)")
    patterns = [] if args.metrics is None else metric_patterns(args.metrics)
    full = rank_scores(read_scores(args.results), by, source=str(args.results), versus=args.versus,
                       correction=args.correction, resamples=resamples)
    groups = list(dict.fromkeys(full.column("group").to_pylist()))
    table = select_metrics(full, patterns, source=str(args.results)) if patterns else full
    if args.top is not None:
        import pyarrow.compute as pc
        table = table.filter(pc.less_equal(table.column("distinct_rank"), args.top))
    if args.format == "parquet":
        write_parquet(table, args.out, {"prunetax_leaderboard_source": str(args.results),
                                        "prunetax_leaderboard_by": ",".join(by)})
    else:
        write_text(render(table, args.format, groups=groups, selected=bool(patterns)), args.out)
    cut = f"; top {args.top} of each" if args.top is not None else ""
    where = f" to {args.out}" if args.out else ""
    print(f"leaderboard: {table.num_rows} rows in {len(groups)} groups of {args.results}{cut}{where}",
          file=sys.stderr if not args.out else sys.stdout)
    return 0
