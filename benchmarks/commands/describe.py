"""prunetax describe: the components, their descriptions and the whole formula of one metric."""
from __future__ import annotations

HELP = "show the components and the formula of a metric id, authors' name, named metric or expression"


def add_arguments(p) -> None:
    from prunetax.taxonomy import NAMED   # torch-free

    p.add_argument("metric", metavar="ID_OR_NAME",
                   help="a canonical id (activation-taylor-abs_sum-weights_removed-domino_io; 'prunetax enumerate' "
                        "lists them), an authors' name, an expression, or a named metric: "
                        f"{', '.join(NAMED)} ('prunetax list metrics')")
    p.add_argument("--latex", action="store_true", help="also print the LaTeX formula")


def run(args) -> int:
    from prunetax.taxonomy import AXES, NAMED, MetricSpec, parse_metric

    metric = parse_metric(args.metric)
    if args.metric.strip() in NAMED:
        named = NAMED[args.metric.strip()]
        print(f"{named.name}: {named.definition}")
        print(f"  citation: {named.citation}")
        if named.note:
            print(f"  note: {named.note}")
    specs = [metric] if isinstance(metric, MetricSpec) else list(metric.specs)
    if not isinstance(metric, MetricSpec):
        print(f"expression: {metric}")
    for spec in specs:
        info = spec.describe()
        print(spec.id)
        if spec.authors_name:
            print(f"  authors' name: {spec.authors_name}")
        for axis in AXES:
            print(f"  {axis:<12} {info[axis]}")
        print(f"  formula      {info['formula']}")
        if args.latex:
            print(f"  latex        {info['latex']}")
    return 0
