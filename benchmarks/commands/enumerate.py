"""prunetax enumerate: list, filter and count the metric space."""
from __future__ import annotations

import sys

from prunetax.benchmarks.io import write_rows

HELP = "list, filter and count the metric space (presets: paper, domino, extended)"
COLUMNS = ("id", "authors_name", "base_input", "pointwise", "reduction", "scaling", "structure", "aggregation")


def add_arguments(p) -> None:
    from prunetax.enumerate import PRESETS

    p.add_argument("--preset", default="paper", choices=list(PRESETS),
                   help="which space: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    p.add_argument("--filter", metavar="GLOB", help="glob(s) on the id or authors' name, comma-separated")
    for axis, flag in (("base_input", "--input"), ("pointwise", "--pointwise"), ("reduction", "--reduction"),
                       ("scaling", "--scaling"), ("structure", "--structure"), ("aggregation", "--aggregation")):
        p.add_argument(flag, dest=axis, metavar="ID[,ID]", help=f"keep only these {axis.replace('_', ' ')}s")
    p.add_argument("--format", default="table", choices=["table", "json", "csv", "parquet"])
    p.add_argument("--out", metavar="PATH", help="write to this file (atomically) instead of stdout")
    p.add_argument("--count", action="store_true", help="print the number of metrics alone")


def rows_for(specs) -> list[dict]:
    return [{"id": s.id, "authors_name": s.authors_name, "base_input": s.base_input,
             "pointwise": s.pointwise, "reduction": s.reduction, "scaling": s.scaling,
             "structure": s.structure, "aggregation": s.aggregation} for s in specs]


def run(args) -> int:
    from prunetax.enumerate import metric_space

    filters = {axis: getattr(args, axis).split(",") for axis in
               ("base_input", "pointwise", "reduction", "scaling", "structure", "aggregation")
               if getattr(args, axis)}
    specs = metric_space(args.preset, args.filter, **filters)
    if args.count:
        print(len(specs))
        return 0
    write_rows(rows_for(specs), args.format, args.out, COLUMNS)
    if args.out:
        print(f"wrote {len(specs)} metrics of preset {args.preset} to {args.out} ({args.format})")
    elif args.format == "table":
        print(f"{len(specs)} metrics (preset {args.preset})", file=sys.stderr)
    return 0
