"""`prunetax structure`: producers, units and weight counts of a zoo model."""
from __future__ import annotations

import json

HELP = "Show a zoo model's producers, pruning units and weight/MAC counts."


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="zoo model name (see prunetax.benchmarks.models.list_models)")
    parser.add_argument("--in-channels", type=int, default=3, help="input image channels (default 3)")
    parser.add_argument("--num-classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--input-size", type=int, default=32, help="input height and width (default 32)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")


def run(args) -> int:
    import torch

    from prunetax.benchmarks.models import create_model
    from prunetax.metrics.structure import analyze

    model = create_model(args.model, in_channels=args.in_channels, num_classes=args.num_classes,
                         input_size=args.input_size).eval()
    s = analyze(model, torch.zeros(1, args.in_channels, args.input_size, args.input_size))
    if args.format == "json":
        print(json.dumps({"model": args.model, **s.to_dict()}))
        return 0
    rows = [("producer", "kind", "out", "in", "groups", "k", "units", "mask point")]
    for name in s.producers:
        L = s.layers[name]
        n_units = len(set(u for u in L.out_units.tolist() if u >= 0))
        rows.append((name, L.kind, str(L.out_channels), str(L.in_channels), str(L.groups), str(L.kernel),
                     str(n_units), L.mask_point or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"{args.model}: {len(s.producers)} producers, {s.num_units} units, {s.conv_channels} conv channels, "
          f"{s.conv_weights} conv weights, {s.params} params, {s.macs} MACs at "
          f"{args.in_channels}x{args.input_size}x{args.input_size}")
    return 0
