"""prunetax saliency: every requested metric on a trained network, one row per metric x channel.

The network is ``--checkpoint``'s, or the cached baseline of ``--seed`` (with ``--epochs`` and
``--train-limit``: the one ``prunetax train`` made with the same values), trained first when
missing; before it trains it says so, with roughly how long. What can be checked without a
trained network (the flags, the metrics on this architecture, the image count) is checked first.
"""
from __future__ import annotations

import sys

from prunetax.benchmarks.commands._flags import DATASET_HELP, MODEL_HELP, at_least, flag
from prunetax.benchmarks.commands.train import add_training_arguments, check_training_arguments

HELP = "compute saliency metrics on a trained network and write one row per metric x channel (Parquet)"


def add_network_arguments(p) -> None:
    """Which trained network a command reads (this one and ``prunetax similarity``): --model,
    --dataset, and --checkpoint or the cached baseline of --seed (with --epochs / --train-limit)."""
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--dataset", default="mnist", help=DATASET_HELP)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH", help="a state_dict saved with torch.save")
    src.add_argument("--seed", type=int, default=None,
                     help="the cached baseline of this seed (default 0), trained first when missing")
    add_training_arguments(p)


def check_network_arguments(args) -> None:
    """The checks of :func:`add_network_arguments`' flags that need no network (one line each,
    naming the flag); sets ``args.seed`` to 0 when unset."""
    from prunetax.benchmarks.data import dataset_channels
    from prunetax.benchmarks.models import model_info
    from prunetax.benchmarks.setup import Env
    from prunetax.taxonomy.errors import PrunetaxError

    if args.checkpoint and (args.epochs is not None or args.train_limit is not None):
        given = "--epochs" if args.epochs is not None else "--train-limit"
        raise PrunetaxError(f"{given} chooses the baseline to train or reuse; with --checkpoint nothing is "
                            f"trained, so leave {given} out")
    args.seed = 0 if args.seed is None else args.seed
    check_training_arguments(args)
    with flag("--model", args.model):
        model_info(args.model)
    with flag("--dataset", args.dataset):
        dataset_channels(args.dataset)
    with flag("--device", args.device):
        Env.from_args(args).torch_device


def add_arguments(p) -> None:
    from prunetax.taxonomy import NAMED   # torch-free

    add_network_arguments(p)
    p.add_argument("--metrics", default="paper", metavar="PRESET|ID[,ID...]",
                   help="comma-separated presets (paper, domino, extended; default paper), ids ('prunetax enumerate'), "
                        f"authors' names, expressions, named metrics ({', '.join(NAMED)}; 'prunetax list metrics'); "
                        "the table keeps each name as given (column metric) beside its canonical id (metric_id)")
    p.add_argument("--images", type=int, default=256, help="saliency images from the eval split (default 256)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward/backward (default 128)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-root", default=None,
                   help="folder holding the data set's files (CIFAR default: $PRUNETAX_DATA or ~/.cache/prunetax/data)")
    p.add_argument("--cache-dir", default=None, help="baseline cache (default $PRUNETAX_CACHE or ~/.cache/prunetax)")
    p.add_argument("--include-linear", action="store_true",
                   help="also score linear producers (default: convolution channels only, as the authors)")
    p.add_argument("--out", required=True, metavar="FILE.parquet", help="where to write the table (atomically)")


def parse_metric_list(text: str) -> list:
    """Presets (their ids), metric ids, authors' names, named metrics (any case) and expressions,
    comma-separated, as the strings ``saliencies`` keeps as names: an id, authors' name or
    expression as typed, a named metric in lower case. A bad item names ``--metrics``."""
    from prunetax.benchmarks.cell import REFERENCES
    from prunetax.enumerate import PRESETS, metric_space
    from prunetax.taxonomy import NAMED, parse_metric
    from prunetax.taxonomy.errors import PrunetaxError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise PrunetaxError("--metrics is empty; give a preset (paper, domino, extended) or metric ids")
    out = []
    for item in items:
        if item in PRESETS:
            out += [m.id for m in metric_space(item)]
        elif item.lower() in NAMED:
            out.append(item.lower())
        elif item.lower() in REFERENCES:
            raise PrunetaxError(f"--metrics {item}: {item.lower()} is a pruning reference, not a saliency; "
                                f"'prunetax bench --metrics {item.lower()}' prunes with it")
        else:
            with flag("--metrics", item):
                parse_metric(item)
            out.append(item)
    return out


def check_finite(model, source: str) -> None:
    import torch

    from prunetax.taxonomy.errors import PrunetaxError

    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise PrunetaxError(f"{source} has {bad} NaN/Inf values in '{name}'; re-train or repair the checkpoint")


def load_checkpoint(args, data, device):
    """``(model, info)`` of ``--checkpoint`` for ``data``."""
    import pickle

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
        raise PrunetaxError(f"--checkpoint {args.checkpoint}: no such file") from None
    except OSError as exc:
        raise PrunetaxError(f"--checkpoint {args.checkpoint}: cannot read it ({exc.strerror or exc})") from None
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0].rstrip(".")
        raise PrunetaxError(f"--checkpoint {args.checkpoint}: not a state_dict saved with torch.save "
                            f"(torch.load: {first})") from None
    except (RuntimeError, ValueError, EOFError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunetaxError(f"--checkpoint {args.checkpoint}: does not fit --model {args.model}: {first}") from None
    source = f"checkpoint {args.checkpoint}"
    with flag("--checkpoint", args.checkpoint):
        check_finite(model, "it")  # before the structure analysis runs it
    return model.to(device), {"source": source}


def check_network(args, data, metrics) -> None:
    """What a trained network is not needed for, on an untrained one of ``data``'s shape: the
    scored producers, every metric computable on them, ``--images`` within the eval split."""
    import torch

    from prunetax.benchmarks.data import model_input_spec
    from prunetax.benchmarks.models import create_model
    from prunetax.metrics import analyze, check_metrics
    from prunetax.taxonomy.errors import PrunetaxError

    if args.images > len(data.eval_y):
        raise PrunetaxError(f"--images {args.images} exceeds the {len(data.eval_y)} eval images of {args.dataset}")
    in_ch, size, classes = model_input_spec(data)
    with torch.random.fork_rng(devices=[]):
        model = create_model(args.model, in_ch, classes, size).eval()
    full = analyze(model, data.test_x[:1].cpu())
    structure = full if args.include_linear else full.restricted(("conv",))
    if not structure.producers:
        raise PrunetaxError(f"--model {args.model}: it has no convolution producers; pass --include-linear")
    with flag("--metrics"):
        check_metrics(structure, metrics)


def baseline_loader(args, metrics):
    """``prepare_cell``'s ``load_model``: checks ``check_network`` first, then the checkpoint, or
    the cached baseline, or one trained now (said before, with roughly how long)."""
    def load(data, env):
        from prunetax.benchmarks.baseline import Baseline
        from prunetax.benchmarks.commands.train import announce_training

        check_network(args, data, metrics)
        if args.checkpoint:
            return load_checkpoint(args, data, env.torch_device)
        baseline = Baseline.resolve(args.model, data, args.seed, args.epochs, limit=args.train_limit)
        found = baseline.cached(env, data)
        if found is not None:
            return found
        announce_training("saliency", baseline, data, env.torch_device)
        return baseline.get(env, data, progress=sys.stderr.isatty())
    return load


def run(args) -> int:
    import pyarrow.parquet as pq

    from prunetax.benchmarks.cell import Cell, Protocol
    from prunetax.benchmarks.io import atomic_path
    from prunetax.benchmarks.setup import Env, prepare_cell
    from prunetax.metrics import saliencies

    at_least("--images", args.images, 1)
    at_least("--batch-size", args.batch_size, 1)
    check_network_arguments(args)
    metrics = parse_metric_list(args.metrics)
    # the cell's set-up (recipe, data, baseline or checkpoint, structure), without a test pass
    cell = Cell(args.model, args.dataset, args.seed, (), Protocol(prune_linear=args.include_linear),
                epochs=args.epochs, train_limit=args.train_limit)
    setup = prepare_cell(cell, Env.from_args(args), load_model=baseline_loader(args, metrics), accuracy=False)
    model, data, structure = setup.model, setup.data, setup.structure
    source = setup.info.get("source") or f"baseline {setup.info['path']}"
    if not args.checkpoint:
        check_finite(model, source)
    x, y = data.eval_x[: args.images], data.eval_y[: args.images]
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, len(y), args.batch_size)]
    result = saliencies(model, structure, batches, metrics)
    table = result.to_arrow()
    with atomic_path(args.out) as tmp:
        pq.write_table(table, tmp)
    bad = sum(result.nonfinite.values())
    channels = sum(structure.layers[p].out_channels for p in structure.producers)
    n = len(result.values)
    print(f"wrote {table.num_rows} rows ({n} metric{'s' * (n != 1)} x {channels} channels) of {args.model} "
          f"({source}) on {args.images} {args.dataset} images to {args.out}"
          + (f"; {bad} non-finite saliencies ranked as most salient" if bad else ""))
    return 0
