"""``prunetax train``: train (or fetch from the cache) one baseline network.

Before it trains, it says so on stderr, with what (epochs x images) and roughly how long: a few
training steps of the model are timed here and multiplied out (``announce_training``, which
``prunetax saliency`` uses too). ``Baseline.get`` then names the recipe, device and cache entry.
"""
from __future__ import annotations

import json

from prunetax.benchmarks.commands._flags import DATASET_HELP, MODEL_HELP, at_least, flag

HELP = "Train a baseline network on a data set (cached by recipe hash) and print its test accuracy."

TIMED_STEPS = 2   # training steps timed (after one untimed) for the estimate


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--dataset", default="mnist", help=DATASET_HELP)
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    add_training_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--cache-dir", default=None, help="cache root (default $PRUNETAX_CACHE or ~/.cache/prunetax)")
    parser.add_argument("--data-root", default=None,
                        help="folder holding the data set's files (CIFAR default: $PRUNETAX_DATA or "
                             "~/.cache/prunetax/data)")
    parser.add_argument("--download", action="store_true",
                        help="download CIFAR through torchvision into the data folder when missing (needs "
                             "torchvision and internet)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")


def add_training_arguments(parser) -> None:
    """``--epochs`` and ``--train-limit``: which baseline (they are part of its cache key)."""
    parser.add_argument("--epochs", type=int, default=None, metavar="E",
                        help="training epochs (default: the model's recipe, e.g. 10 for lenet5)")
    parser.add_argument("--train-limit", type=int, default=None, metavar="N",
                        help="train on the first N training images only (default: all of them). --epochs and "
                             "--train-limit are part of the baseline's cache key: train, saliency and bench given "
                             "the same values share one baseline")


def check_training_arguments(args) -> None:
    """One-line errors naming ``--seed``, ``--epochs`` or ``--train-limit``."""
    at_least("--seed", getattr(args, "seed", None), 0)
    at_least("--epochs", args.epochs, 1)
    at_least("--train-limit", args.train_limit, 1)


def duration(seconds: float) -> str:
    """``42 s``, ``17 min`` or ``2.5 h``: a rough duration, in the unit that reads best."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def step_seconds(model_name: str, data, batch_size: int, device) -> float:
    """Seconds of one training step (forward, backward, SGD step) of a fresh ``model_name`` on a
    batch of ``data``'s training images, on ``device``: the mean of ``TIMED_STEPS`` steps after one
    untimed. The global random state is left as it was."""
    import time

    import torch

    from prunetax.benchmarks.data import model_input_spec
    from prunetax.benchmarks.models import create_model

    dev = torch.device(device)
    in_ch, size, classes = model_input_spec(data)
    x, y = data.train_x[:batch_size].to(dev), data.train_y[:batch_size].to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        model = create_model(model_name, in_ch, classes, size).to(dev).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        times = []
        for _ in range(1 + TIMED_STEPS):
            sync()
            start = time.perf_counter()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            times.append(time.perf_counter() - start)
    return sum(times[1:]) / TIMED_STEPS


def training_notice(command: str, model_name: str, data, seed: int, recipe, device, step_s: float) -> str:
    """The line said before a baseline trains: that it will, on what, and roughly how long."""
    import math

    n = len(data.train_y) if recipe.limit is None else min(recipe.limit, len(data.train_y))
    steps = math.ceil(n / recipe.batch_size) * recipe.epochs
    epochs = f"{recipe.epochs} epoch{'s' * (recipe.epochs != 1)}"
    return (f"prunetax {command}: no cached baseline of {model_name} on {data.name} (seed {seed}, {epochs}"
            f"{f', first {recipe.limit} images' if recipe.limit is not None else ''}); training it now: {epochs} x "
            f"{n:,} images ({steps:,} steps of {recipe.batch_size}), roughly {duration(steps * step_s)} on {device} "
            f"at {step_s:.3g} s a step (timed here just now; the machine's load changes it)")




def announce_training(command: str, baseline, data, device) -> None:
    """Print ``training_notice`` on stderr for ``baseline`` (a ``Baseline``), about to be trained
    on ``data`` on ``device``."""
    import sys

    step_s = step_seconds(baseline.network, data, baseline.recipe.batch_size, device)
    print(training_notice(command, baseline.network, data, baseline.seed, baseline.recipe, device, step_s),
          file=sys.stderr, flush=True)


def run(args) -> int:
    from prunetax.benchmarks.baseline import Baseline
    from prunetax.benchmarks.data import dataset_channels
    from prunetax.benchmarks.models import model_info
    from prunetax.benchmarks.setup import Env

    check_training_arguments(args)
    with flag("--model", args.model):
        model_info(args.model)
    with flag("--dataset", args.dataset):
        dataset_channels(args.dataset)
    env = Env.from_args(args)
    with flag("--device", args.device):
        dev = env.torch_device
    baseline = Baseline.resolve(args.model, args.dataset, args.seed, args.epochs, limit=args.train_limit)
    found = baseline.cached(env)
    if found is not None:
        info = found[1]
    else:
        data = baseline.load_data(env)
        announce_training("train", baseline, data, dev)
        _, info = baseline.get(env, data, progress=True)
    if args.format == "json":
        print(json.dumps(info, sort_keys=True))
    else:
        cached = " (cached)" if info["cached"] else f" in {info['wall_time_s']:.1f} s on {info['device']}"
        limit = info.get("recipe", {}).get("limit")
        print(f"{info['model']} on {info['dataset']}, seed {info['seed']}, {info['epochs']} "
              f"epoch{'s' * (info['epochs'] != 1)}"
              f"{f' on the first {limit} images' if limit else ''}: "
              f"test accuracy {info['test_accuracy']:.2f}%, checkpoint {info['path']}{cached}")
    return 0
