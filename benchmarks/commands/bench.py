"""prunetax bench: run a grid of cells (from a TOML file and/or flags) and print the leaderboard's top."""
from __future__ import annotations

import sys

HELP = "run a grid (networks x datasets x seeds, all metrics per cell) and write Parquet results; resumes"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    from prunetax.taxonomy.errors import PrunetaxError
    try:
        seeds = [int(t) for t in _csv(text)]
    except ValueError:
        raise PrunetaxError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise PrunetaxError(f"--seeds must be >= 0, got {text!r}")
    return seeds


def _top(text: str):
    from prunetax.benchmarks.ranking import parse_top
    return parse_top(text)


def add_arguments(p) -> None:
    p.add_argument("grid", nargs="?", metavar="GRID.toml", help="grid file (docs/results.md); flags override it")
    p.add_argument("--networks", metavar="A,B", help="zoo model names")
    p.add_argument("--datasets", metavar="A,B", help="data set names")
    p.add_argument("--metrics", metavar="M,..",
                   help="presets (paper, domino, extended), ids, named metrics, expressions, random, oracle")
    p.add_argument("--metric-filter", metavar="GLOB", help="glob on the presets' metric ids")
    p.add_argument("--seeds", metavar="0,1", help="training seeds (default 0)")
    p.add_argument("--threshold", type=float, help="accuracy drop at which the rate is read (default 5.0)")
    p.add_argument("--relative", action="store_true", default=None, help="threshold in %% of the baseline accuracy")
    p.add_argument("--schedule", choices=("fast", "exact"), help="accuracy schedule (default fast)")
    p.add_argument("--one-shot", action="store_true", default=None, help="rank once on the baseline")
    p.add_argument("--mode", choices=("none", "characterise", "retrain"), help="SGD after each step (default none)")
    p.add_argument("--test-images", type=int, help="test images for accuracy (default: all)")
    p.add_argument("--epochs", type=int, help="baseline training epochs (default: the model's recipe)")
    p.add_argument("--train-limit", type=int, help="train baselines on the first N images only (quick runs)")
    p.add_argument("--backend", default="loky", choices=("loky", "dask", "ray"),
                   help="where cells run: loky (this machine), dask or ray (default loky)")
    p.add_argument("--jobs", type=int, default=1,
                   help="parallel cells: loky processes, or the workers of a local dask/ray cluster "
                        "(default 1; -1 = all cores)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="join a running cluster instead of starting one: a dask scheduler (tcp://HOST:PORT) "
                        "or a ray address (HOST:PORT, auto); it must answer within 10 s")
    p.add_argument("--checkpoint-every", type=float, default=5.0, metavar="MINUTES",
                   help="a running cell saves its state at most this often, and on SIGTERM/SIGINT, under "
                        "RESULTS/state/; a rerun resumes it (default 5)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu or cuda (with dask or ray, auto is cuda where the cluster has GPUs; "
                        "docs/results.md)")
    p.add_argument("--gpus-per-cell", type=float, default=1.0, metavar="N",
                   help="GPUs each cell asks ray or dask for when the grid runs on CUDA: a fraction in (0, 1] "
                        "(cells share a GPU) or a whole number (default 1; dask: workers declaring --resources GPU=N)")
    p.add_argument("--results", default="results", metavar="DIR", help="results root (default ./results)")
    p.add_argument("--cache-dir", default=None, help="baseline cache (default $PRUNETAX_CACHE or ~/.cache/prunetax)")
    p.add_argument("--data-root", default=None, help="folder holding the data sets' files")
    p.add_argument("--allow-weak-baseline", action="store_true",
                   help="prune a baseline even when its accuracy target (baseline - threshold) is not above "
                        "chance (by default such a cell stops with an error naming its accuracy and recipe)")
    p.add_argument("--top", type=_top, default=5, metavar="N|all",
                   help="leaderboard rows to print per group (default 5; 0 = none; all), as prunetax leaderboard --top")


def build_config(args) -> tuple[dict, str]:
    """The grid config: the TOML file's, then the flags on top. Returns (config, source name)."""
    from prunetax.benchmarks.grid import load_grid_file

    config = load_grid_file(args.grid) if args.grid else {}
    source = args.grid or "flags"
    for flag, key, conv in (("networks", "networks", _csv), ("datasets", "datasets", _csv),
                            ("metrics", "metrics", _csv), ("seeds", "seeds", _ints),
                            ("metric_filter", "metric_filter", str), ("epochs", "epochs", int),
                            ("train_limit", "train_limit", int)):
        value = getattr(args, flag)
        if value is not None:
            config[key] = conv(value)
    protocol = dict(config.get("protocol") or {}) if isinstance(config.get("protocol", {}), dict) else config["protocol"]
    for flag in ("threshold", "relative", "schedule", "one_shot", "mode", "test_images"):
        value = getattr(args, flag)
        if value is not None and isinstance(protocol, dict):
            protocol[flag] = value
    config["protocol"] = protocol
    if "networks" not in config or "datasets" not in config:
        from prunetax.taxonomy.errors import PrunetaxError
        raise PrunetaxError("give --networks and --datasets (or a GRID.toml with networks and datasets)")
    return config, source


def run(args) -> int:
    from prunetax.benchmarks.grid import GridOptions, grid_cells, preflight, run_grid, validate_cells
    from prunetax.benchmarks.setup import Env
    from prunetax.taxonomy.errors import PrunetaxError

    # everything is checked before anything is written or trained, the checks that need no
    # torch first (they answer in about a second)
    if args.jobs == 0 or args.jobs < -1:
        raise PrunetaxError(f"--jobs must be a positive integer or -1 (all cores), got {args.jobs}")
    if not args.checkpoint_every >= 0:
        raise PrunetaxError(f"--checkpoint-every must be >= 0 minutes, got {args.checkpoint_every}")
    try:
        options = GridOptions(progress=sys.stderr.isatty(), checkpoint_every=60.0 * args.checkpoint_every,
                              plugins=getattr(args, "imports", ()), allow_weak_baseline=args.allow_weak_baseline,
                              gpus_per_cell=args.gpus_per_cell)
    except PrunetaxError as exc:        # the option as the user typed it
        raise PrunetaxError(str(exc).replace("gpus_per_cell", "--gpus-per-cell", 1)) from None
    config, source = build_config(args)
    cells = grid_cells(config, source, validate=False)
    results, env = preflight(args.results, args.backend, args.jobs, args.scheduler, Env.from_args(args))
    env.torch_device  # an unknown or unavailable device: one line
    validate_cells(cells, data_root=env.data_root)
    summary = run_grid(cells, results, backend=args.backend, n_jobs=args.jobs, scheduler=args.scheduler,
                       env=env, options=options)
    n_metrics = len(cells[0].metrics)
    elsewhere = f", {len(summary.elsewhere)} running elsewhere" if summary.elsewhere else ""
    print(f"bench: {len(summary.ran)} cells run, {len(summary.skipped)} skipped{elsewhere} ({len(cells)} cells x "
          f"{n_metrics} metrics) in {summary.wall_seconds:.1f}s; results in {summary.results}")
    if args.top != 0:
        print_top(args.results, args.top)
    return 0


def print_top(results, top: int | None) -> None:
    """The leaderboard's best ``top`` (None: all) of each group, as ``prunetax leaderboard``'s table
    (each group says when its list was cut), and where to read the rest."""
    import pyarrow.compute as pc

    from prunetax.benchmarks.ranking import render
    from prunetax.benchmarks.results import leaderboard

    board = leaderboard(results)
    shown = board if top is None else board.filter(pc.less_equal(board.column("distinct_rank"), top))
    print(render(shown, "table"), end="")
    if shown.num_rows < board.num_rows:
        print(f"(every metric: prunetax leaderboard {results})")
