"""prunetax leaderboard: metrics ranked by mean % conv weights removed across seeds."""
from __future__ import annotations

HELP = "rank the metrics of a results folder by mean percent of conv weights removed (mean +- 2 sigma across seeds)"

FORMATS = ("table", "markdown", "csv", "html", "parquet")
_SHOWN = ("rank", "metric_id", "mean", "std", "pm2sigma", "n_seeds", "gap_to_oracle", "baseline_accuracy")


def add_arguments(p) -> None:
    p.add_argument("results", metavar="RESULTS", help="results folder written by prunetax bench")
    p.add_argument("--by", default="network,dataset", help="group columns (default network,dataset; '' = none)")
    p.add_argument("--top", type=int, default=None, help="best N metrics per group")
    p.add_argument("--format", default="table", choices=FORMATS, help="output format (default table)")
    p.add_argument("--out", default=None, metavar="PATH", help="write to PATH (atomically) instead of stdout")


def _render(rows, cols, fmt) -> str:
    import csv
    import html
    import io

    from prunetax.benchmarks.io import format_table

    def show(v):
        return "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

    if fmt == "table":
        return format_table([{c: show(r[c]) for c in cols} for r in rows], cols)
    if fmt == "markdown":
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(show(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(show(r[c]))}</td>" for c in cols) + "</tr>\n" for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def run(args) -> int:
    import sys

    from prunetax.benchmarks.io import atomic_path
    from prunetax.benchmarks.results import leaderboard
    from prunetax.taxonomy.errors import PrunetaxError

    by = tuple(b.strip() for b in args.by.split(",") if b.strip())
    table = leaderboard(args.results, by=by, top=args.top)
    if args.format == "parquet":
        if not args.out:
            raise PrunetaxError("--format parquet needs --out FILE.parquet")
        import pyarrow.parquet as pq
        with atomic_path(args.out) as tmp:
            pq.write_table(table, tmp)
    else:
        rows = table.to_pylist()
        cols = list(by) + (list(_SHOWN) if args.format in ("table", "markdown") else
                           [c for c in table.column_names if c not in by])
        text = _render(rows, cols, args.format)
        if args.out:
            with atomic_path(args.out) as tmp:
                tmp.write_text(text)
        else:
            sys.stdout.write(text)
    groups = len({tuple(r) for r in zip(*(table.column(b).to_pylist() for b in by))}) if by else 1
    where = f" to {args.out}" if args.out else ""
    print(f"leaderboard: {table.num_rows} rows in {groups if table.num_rows else 0} groups of {args.results}{where}",
          file=sys.stderr if not args.out else sys.stdout)
    return 0
