"""`prunetax structure`: producers, units and weight counts of a zoo model.

The units are counted twice: the convolution units (those with a member channel in a
convolution: what ``bench`` and ``saliency`` score and prune by default, as the authors) and all
units (linear producers' too: ``saliency --include-linear``, ``[protocol] prune_linear = true``).
"""
from __future__ import annotations

import json

from prunetax.benchmarks.commands._flags import MODEL_HELP, at_least, flag

HELP = "Show a zoo model's producers, pruning units (convolution units and all units) and weight/MAC counts."


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--in-channels", type=int, default=3, help="input image channels (default 3)")
    parser.add_argument("--num-classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--input-size", type=int, default=32, help="input height and width (default 32)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="output format; json keys: model, producers, units (all), conv_units, "
                             "linear_only_units, conv_channels, conv_weights, params, macs")


def conv_units(s) -> int:
    """Units with at least one member channel in a convolution producer: the units pruned by
    default (``Structure.restricted(("conv",))`` scores them; every other unit ranks +inf)."""
    return len({u for name in s.producers if s.layers[name].kind == "conv"
                for u in s.layers[name].out_units.tolist() if u >= 0})


def run(args) -> int:
    import torch

    from prunetax.benchmarks.models import create_model, model_info
    from prunetax.metrics.structure import analyze
    from prunetax.taxonomy.errors import PrunetaxError

    with flag("--model", args.model):
        model_info(args.model)
    for name, value in (("--in-channels", args.in_channels), ("--num-classes", args.num_classes),
                        ("--input-size", args.input_size)):
        at_least(name, value, 1)
    try:
        model = create_model(args.model, in_channels=args.in_channels, num_classes=args.num_classes,
                             input_size=args.input_size).eval()
        s = analyze(model, torch.zeros(1, args.in_channels, args.input_size, args.input_size))
    except PrunetaxError as exc:  # a model's own limit names the flag it is about
        text = str(exc)
        name, value = next(((f, v) for f, v, word in (("--input-size", args.input_size, "input_size"),
                                                      ("--in-channels", args.in_channels, "in_channels"),
                                                      ("--num-classes", args.num_classes, "num_classes"))
                            if word in text), ("--model", args.model))
        raise PrunetaxError(f"{name} {value}: {text}") from None
    n_conv = conv_units(s)
    if args.format == "json":
        summary = {}
        for key, value in s.to_dict().items():
            summary[key] = value
            if key == "units":   # all units (the key's old meaning), then the two kinds apart
                summary.update(conv_units=n_conv, linear_only_units=s.num_units - n_conv)
        print(json.dumps({"model": args.model, **summary}))
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
    other = s.num_units - n_conv
    units = (f"{n_conv} units, all in convolution producers (pruned by default)" if not other else
             f"{n_conv} convolution units (pruned by default) of {s.num_units} units in all (the other {other} "
             f"are linear producers' only: saliency --include-linear, [protocol] prune_linear = true)")
    print(f"{args.model}: {len(s.producers)} producers; {units}; {s.conv_channels} conv channels, "
          f"{s.conv_weights} conv weights, {s.params} params, {s.macs} MACs at "
          f"{args.in_channels}x{args.input_size}x{args.input_size}")
    return 0
