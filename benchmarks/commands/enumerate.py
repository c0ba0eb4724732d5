"""prunetax enumerate: list, filter and count the metric space."""
from __future__ import annotations

import sys

from prunetax.benchmarks.commands._flags import flag
from prunetax.benchmarks.io import write_rows
from prunetax.taxonomy.vocab import AXES

HELP = "list, filter and count the metric space (presets: paper, domino, extended)"
# one filter option per axis: --<axis>, but --input for the base input
FLAGS = tuple((axis, "--input" if axis == "base_input" else f"--{axis}") for axis in AXES)
COLUMNS = ("id", "authors_name", *AXES)


def add_arguments(p) -> None:
    from prunetax.enumerate import PRESETS

    p.add_argument("--preset", default="paper", choices=list(PRESETS),
                   help="which space: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    p.add_argument("--filter", metavar="GLOB", help="shell-style glob(s) on the id or authors' name, comma-separated "
                                                    "(*, ?, [abc]); each must match some metric of the preset")
    for axis, name in FLAGS:
        p.add_argument(name, dest=axis, metavar="ID[,ID]", help=f"keep only these {axis.replace('_', ' ')}s "
                                                                f"('prunetax describe' and docs/taxonomy.md list them)")
    p.add_argument("--format", default="table", choices=["table", "json", "csv", "parquet"])
    p.add_argument("--out", metavar="PATH", help="write to this file (atomically) instead of stdout")
    p.add_argument("--count", action="store_true", help="print the number of metrics alone")


def rows_for(specs) -> list[dict]:
    """One row per metric: its id, authors' name and components (``COLUMNS``)."""
    return [{"id": s.id, "authors_name": s.authors_name, **dict(zip(AXES, s.components()))} for s in specs]


def run(args) -> int:
    from prunetax.enumerate import metric_space
    from prunetax.taxonomy import vocab
    from prunetax.taxonomy.errors import PrunetaxError

    filters = {}
    for axis, name in FLAGS:
        text = getattr(args, axis)
        if text is None:
            continue
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values:
            raise PrunetaxError(f"{name} is empty; give one or more {axis.replace('_', ' ')} ids, comma-separated")
        for v in values:
            with flag(name, v):
                vocab.get(axis, v)
        filters[axis] = values
    with flag("--filter"):
        specs = metric_space(args.preset, args.filter, strict=True, **filters)
    if args.count:
        print(len(specs))
        return 0
    write_rows(rows_for(specs), args.format, args.out, COLUMNS)
    if args.out:
        print(f"wrote {len(specs)} metrics of preset {args.preset} to {args.out} ({args.format})")
    elif args.format == "table":
        print(f"{len(specs)} metrics (preset {args.preset})", file=sys.stderr)
    return 0
