"""prunetax plot: figures of a results folder (PNG, SVG, PDF), one set per leaderboard group."""
from __future__ import annotations

HELP = ("plot accuracy-vs-pruning curves and component bar charts of a results folder, per network, data set, "
        "recipe and protocol (PNG, SVG, PDF; needs matplotlib)")


def add_arguments(p) -> None:
    p.add_argument("results", metavar="RESULTS", help="results folder written by prunetax bench")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the figures")
    p.add_argument("--metrics", default=None, metavar="ID,...",
                   help="metrics of the accuracy plot (default: each group's top 5 that crossed, random and oracle)")
    p.add_argument("--top", type=int, default=5, metavar="N",
                   help="metrics of the accuracy plot when --metrics is not given (default 5)")
    p.add_argument("--format", default="png,svg,pdf", help="comma-separated: png, svg, pdf (default all three)")


def command_line(args) -> str:
    """The command that makes these figures (stored in each file's metadata)."""
    import shlex

    words = ["prunetax", "plot", str(args.results), "--out", str(args.out)]
    if args.metrics:
        words += ["--metrics", args.metrics]
    if args.top != 5:
        words += ["--top", str(args.top)]
    words += ["--format", args.format]
    return shlex.join(words)


def run(args) -> int:
    from prunetax.benchmarks.plots import plot_results
    from prunetax.taxonomy.errors import PrunetaxError

    if args.top < 0:
        raise PrunetaxError(f"--top must be >= 0, got {args.top}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    paths = plot_results(args.results, args.out, metrics=metrics, formats=formats, top=args.top,
                         command=command_line(args))
    figures = len({p.stem for p in paths})
    print(f"plot: wrote {len(paths)} files ({figures} figures x {', '.join(formats)}) to {args.out}")
    return 0
