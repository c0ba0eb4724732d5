"""prunetax saliency: every requested metric on a trained network, one row per metric x channel."""
from __future__ import annotations

import sys

HELP = "compute saliency metrics on a trained network and write one row per metric x channel (Parquet)"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="zoo model name (prunetax structure --model NAME)")
    p.add_argument("--dataset", default="mnist", help="data set (default: the embedded mnist)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH", help="a state_dict saved with torch.save")
    src.add_argument("--seed", type=int, default=0, help="the cached baseline of this seed (trained if missing)")
    p.add_argument("--metrics", default="paper", metavar="PRESET|ID[,ID...]",
                   help="comma-separated presets (paper, domino, extended), ids, named metrics, expressions")
    p.add_argument("--images", type=int, default=256, help="saliency images from the eval split (default 256)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward/backward (default 128)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-root", default=None, help="folder holding the data set's files")
    p.add_argument("--cache-dir", default=None, help="baseline cache (default $PRUNETAX_CACHE or ~/.cache/prunetax)")
    p.add_argument("--include-linear", action="store_true",
                   help="also score linear producers (default: convolution channels only, as the authors)")
    p.add_argument("--out", required=True, metavar="FILE.parquet", help="where to write the table (atomically)")


def parse_metric_list(text: str):
    """Presets, metric ids, named metrics and expressions, comma-separated (the grid's rules)."""
    from prunetax.benchmarks.grid import expand_metrics
    from prunetax.taxonomy import parse_metric
    from prunetax.taxonomy.errors import PrunetaxError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise PrunetaxError("--metrics is empty; give a preset (paper, domino, extended) or metric ids")
    return [parse_metric(t) for t in expand_metrics(items)]


def check_finite(model, source: str) -> None:
    import torch

    from prunetax.taxonomy.errors import PrunetaxError

    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise PrunetaxError(f"{source} has {bad} NaN/Inf values in '{name}'; re-train or repair the checkpoint")


def load_checkpoint(args, data, device):
    """``(model, info)`` of ``--checkpoint`` for ``data`` (``prepare_cell``'s ``load_model``)."""
    import torch

    from prunetax.benchmarks.data import model_input_spec
    from prunetax.benchmarks.models import create_model
    from prunetax.taxonomy.errors import PrunetaxError

    in_ch, size, classes = model_input_spec(data)
    model = create_model(args.model, in_ch, classes, size)
    try:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except FileNotFoundError:
        raise PrunetaxError(f"checkpoint {args.checkpoint!r} does not exist") from None
    except (RuntimeError, ValueError, EOFError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunetaxError(f"checkpoint {args.checkpoint!r} does not fit model {args.model}: {first}") from None
    source = f"checkpoint {args.checkpoint}"
    check_finite(model, source)  # before the structure analysis runs it
    return model.to(device), {"source": source}


def run(args) -> int:
    import pyarrow.parquet as pq

    from prunetax.benchmarks.cell import Cell, Protocol
    from prunetax.benchmarks.io import atomic_path
    from prunetax.benchmarks.setup import Env, prepare_cell
    from prunetax.metrics import saliencies
    from prunetax.taxonomy.errors import PrunetaxError

    if args.images < 1 or args.batch_size < 1:
        raise PrunetaxError("--images and --batch-size must be positive")
    metrics = parse_metric_list(args.metrics)
    # the cell's set-up (recipe, data, baseline or checkpoint, structure), without a test pass
    cell = Cell(args.model, args.dataset, args.seed, (), Protocol(prune_linear=args.include_linear))
    loader = (lambda data, device: load_checkpoint(args, data, device)) if args.checkpoint else None
    setup = prepare_cell(cell, Env.from_args(args), progress=sys.stderr.isatty(), load_model=loader,
                         accuracy=False)
    model, data, structure = setup.model, setup.data, setup.structure
    source = setup.info.get("source") or f"baseline {setup.info['path']}"
    if not args.checkpoint:
        check_finite(model, source)
    if args.images > len(data.eval_y):
        raise PrunetaxError(f"--images {args.images} exceeds the {len(data.eval_y)} eval images of {args.dataset}")
    x, y = data.eval_x[: args.images], data.eval_y[: args.images]
    if not structure.producers:
        raise PrunetaxError(f"model {args.model} has no convolution producers; pass --include-linear")
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, len(y), args.batch_size)]
    result = saliencies(model, structure, batches, metrics)
    table = result.to_arrow()
    with atomic_path(args.out) as tmp:
        pq.write_table(table, tmp)
    bad = sum(result.nonfinite.values())
    channels = sum(structure.layers[p].out_channels for p in structure.producers)
    print(f"wrote {table.num_rows} rows ({len(metrics)} metrics x {channels} channels) of {args.model} "
          f"({source}) on {args.images} {args.dataset} images to {args.out}"
          + (f"; {bad} non-finite saliencies ranked as most salient" if bad else ""))
    return 0
