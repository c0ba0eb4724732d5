"""prunetax plot: figures of a results folder (PNG and SVG)."""
from __future__ import annotations

HELP = "plot accuracy-vs-pruning curves and component bar charts of a results folder (needs matplotlib)"


def add_arguments(p) -> None:
    p.add_argument("results", metavar="RESULTS", help="results folder written by prunetax bench")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the figures")
    p.add_argument("--metrics", default=None, metavar="ID,...",
                   help="metrics of the accuracy plot (default: the top 5 and random)")
    p.add_argument("--format", default="png,svg", help="comma-separated: png, svg (default both)")


def run(args) -> int:
    from prunetax.benchmarks.plots import plot_results

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    paths = plot_results(args.results, args.out, metrics=metrics, formats=formats)
    print(f"plot: wrote {len(paths)} files ({', '.join(formats)}) to {args.out}")
    return 0
