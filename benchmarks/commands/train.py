"""``prunetax train``: train (or fetch from the cache) one baseline network."""
from __future__ import annotations

import json

HELP = "Train a baseline network on a data set (cached by recipe hash) and print its test accuracy."


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model name (see prunetax.benchmarks.models.list_models)")
    parser.add_argument("--dataset", default="mnist",
                        help="mnist (default), fashion-mnist, cifar10, cifar100 or imagefolder:PATH")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the model's recipe)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--cache-dir", default=None, help="cache root (default $PRUNETAX_CACHE or ~/.cache/prunetax)")
    parser.add_argument("--data-root", default=None, help="folder holding the data set's files")
    parser.add_argument("--download", action="store_true",
                        help="download CIFAR through torchvision when missing (needs torchvision and internet)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")


def run(args) -> int:
    from prunetax.benchmarks.setup import Env
    from prunetax.benchmarks.training import train_baseline

    env = Env.from_args(args)
    _, info = train_baseline(args.model, args.dataset, args.seed, epochs=args.epochs, device=env.device,
                             cache_dir=env.cache, data_root=env.data_root, progress=True,
                             download=args.download)
    if args.format == "json":
        print(json.dumps(info, sort_keys=True))
    else:
        cached = " (cached)" if info["cached"] else f" in {info['wall_time_s']:.1f} s on {info['device']}"
        print(f"{info['model']} on {info['dataset']}, seed {info['seed']}, {info['epochs']} epochs: "
              f"test accuracy {info['test_accuracy']:.2f}%, checkpoint {info['path']}{cached}")
    return 0
