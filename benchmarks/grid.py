"""The grid runner: cells from flags or a TOML file, validated up front, run through joblib.

A grid is networks x datasets x seeds, each cell holding every metric of the grid (the harness
batches metrics within a cell) and one protocol. ``run_grid`` skips cells whose scores file
exists (resume), trains each distinct baseline once before fanning out, and writes each cell's
files as it completes (``prunetax.benchmarks.results``). Backends: ``loky`` (one machine), ``dask``
(``pip install prunetax[dask]``; joins a dask.distributed scheduler) and ``ray``
(``pip install prunetax[ray]``).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

from prunetax.benchmarks.cell import REFERENCES, Cell, CellResult, Protocol
from prunetax.benchmarks.setup import Env
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["GRID_KEYS", "BACKENDS", "load_grid_file", "grid_cells", "expand_metrics", "validate_cells",
           "run", "run_grid", "GridSummary", "Env"]

GRID_KEYS = ("networks", "datasets", "seeds", "metrics", "metric_filter", "epochs", "train_limit", "protocol")
BACKENDS = ("loky", "dask", "ray")
_EXTRA = {"dask": ("dask.distributed", "dask"), "ray": ("ray.util.joblib", "ray")}


def load_grid_file(path) -> dict:
    """The TOML grid at ``path`` as a dict; a syntax error names the file, line and problem."""
    import tomllib

    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        raise PrunetaxError(f"grid file {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise PrunetaxError(f"grid file {str(p)!r} is a folder; give a .toml file") from None
    try:
        config = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PrunetaxError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PrunetaxError(f"{p}: malformed TOML {_where(str(exc), text)}") from None
    unknown = sorted(set(config) - set(GRID_KEYS))
    if unknown:
        raise PrunetaxError(f"{p}: unknown key {unknown[0]!r}; valid keys are {', '.join(GRID_KEYS)}")
    return config


def _where(message: str, text: bytes) -> str:
    """'at line L, column C: problem' from tomllib's 'problem (at line L, column C)'."""
    import re

    m = re.match(r"(.*) \(at line (\d+), column (\d+)\)$", message)
    if m:
        return f"at line {m.group(2)}, column {m.group(3)}: {m.group(1)}"
    m = re.match(r"(.*) \(at end of document\)$", message)
    if m:
        lines = text.count(b"\n") + 1
        return f"at line {lines} (end of file): {m.group(1)}"
    return f": {message}"


def _list(config: dict, key: str, kind: type, source: str) -> list:
    value = config.get(key)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise PrunetaxError(f"{source}: {key} must be a non-empty list of {kind.__name__}s, got {value!r}")
    for v in value:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise PrunetaxError(f"{source}: {key} must hold {kind.__name__}s, got {v!r}")
    return list(dict.fromkeys(value))


def expand_metrics(items: Iterable[str], metric_filter: str | None = None) -> tuple[str, ...]:
    """Presets become their metric ids (filtered by the glob ``metric_filter``); ids are made
    canonical, named metrics and ``random`` / ``oracle`` are kept as given. Order kept, no repeats.
    """
    from prunetax.enumerate import PRESETS, metric_space
    from prunetax.taxonomy import NAMED, parse_metric

    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item in PRESETS:
            out += [m.id for m in metric_space(item, metric_filter)]
        elif item in REFERENCES or item.lower() in NAMED:
            out.append(item.lower() if item.lower() in NAMED else item)
        else:
            out.append(str(parse_metric(item)))
    if not out:
        why = f" (metric_filter {metric_filter!r} matches none of the presets' metrics)" if metric_filter else ""
        raise PrunetaxError(f"the grid has no metrics{why}; give presets (paper, domino, extended), ids or names")
    return tuple(dict.fromkeys(out))


def grid_cells(config: dict, source: str = "grid") -> list[Cell]:
    """Validated cells of a grid config (the TOML keys, see ``GRID_KEYS``). Raises PrunetaxError."""
    unknown = sorted(set(config) - set(GRID_KEYS))
    if unknown:
        raise PrunetaxError(f"{source}: unknown key {unknown[0]!r}; valid keys are {', '.join(GRID_KEYS)}")
    networks = _list(config, "networks", str, source)
    datasets = _list(config, "datasets", str, source)
    seeds = _list({"seeds": [0], **config}, "seeds", int, source)
    if any(s < 0 for s in seeds):
        raise PrunetaxError(f"{source}: seeds must be >= 0, got {seeds}")
    metric_items = _list({"metrics": ["paper"], **config}, "metrics", str, source)
    metric_filter = config.get("metric_filter")
    if metric_filter is not None and not isinstance(metric_filter, str):
        raise PrunetaxError(f"{source}: metric_filter must be a glob string, got {metric_filter!r}")
    metrics = expand_metrics(metric_items, metric_filter)
    protocol_cfg = config.get("protocol", {})
    if not isinstance(protocol_cfg, dict):
        raise PrunetaxError(f"{source}: [protocol] must be a table of Protocol options")
    types = {f.name: f.type for f in dataclasses.fields(Protocol)}
    for k, v in protocol_cfg.items():
        want = {"float": (int, float), "bool": (bool,), "int": (int,), "str": (str,)}.get(str(types.get(k)), ())
        if want and (not isinstance(v, want) or (isinstance(v, bool) and bool not in want)):
            raise PrunetaxError(f"{source}: protocol option {k} must be a {types[k]}, got {v!r}")
    try:
        protocol = Protocol.from_dict(protocol_cfg)
    except TypeError as exc:
        raise PrunetaxError(f"{source}: bad protocol option: {exc}") from None
    epochs, limit = config.get("epochs"), config.get("train_limit")
    for name, v in (("epochs", epochs), ("train_limit", limit)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise PrunetaxError(f"{source}: {name} must be a positive integer, got {v!r}")
    cells = [Cell(n, d, s, metrics, protocol, epochs, limit) for n in networks for d in datasets for s in seeds]
    validate_cells(cells)
    return cells


def validate_cells(cells: Sequence[Cell]) -> None:
    """Check networks, data sets, recipes and each network's structure before anything runs."""
    import torch

    from prunetax.benchmarks.data import dataset_channels
    from prunetax.benchmarks.models import create_model, model_info
    from prunetax.benchmarks.training import recipe_for
    from prunetax.metrics import analyze

    checked = set()
    for cell in cells:
        key = (cell.network, cell.dataset, cell.epochs)
        if key in checked:
            continue
        checked.add(key)
        info = model_info(cell.network)  # unknown model: one line naming the zoo
        if not info.available:
            raise PrunetaxError(f"model '{cell.network}' is unavailable: {info.reason}")
        channels = dataset_channels(cell.dataset)  # unknown data set: one line listing them
        recipe_for(cell.network, cell.dataset, cell.epochs)
        if cell.dataset.startswith("imagefolder:"):
            continue  # image size unknown until loaded; the cell itself reports structure problems
        model = create_model(cell.network, channels, 10, 32).eval()
        try:
            analyze(model, torch.zeros(1, channels, 32, 32))
        except PrunetaxError as exc:
            raise PrunetaxError(f"network '{cell.network}' cannot be pruned: {exc}") from None


def _run_cell(cell: Cell, env: Env, progress: bool = False) -> CellResult:
    from prunetax.benchmarks.protocol import run_cell

    return run_cell(cell, env, progress=progress)


def run(cell: Cell, results=None, device=None, cache_dir=None, data_root=None, progress=False,
        env: Env | None = None) -> CellResult:
    """Run one cell (``prunetax.benchmarks.protocol.run_cell``); write its files under ``results`` if given.

    ``env``: where it runs (``prunetax.benchmarks.setup.Env``; None: the defaults); ``device``,
    ``cache_dir`` and ``data_root``, when given, set its fields.
    """
    env = Env.of(env, device=device, cache_dir=cache_dir, data_root=data_root)
    result = _run_cell(cell, env, progress=progress)
    if results is not None:
        from prunetax.benchmarks.results import write_cell_result
        write_cell_result(results, result)
    return result


def _job(cell: Cell, results: str, env: Env, runner=None) -> tuple[str, float]:
    """What a worker runs: one cell, written on completion (skipped if another worker finished it)."""
    from prunetax.benchmarks.results import cell_done, write_cell_result

    if cell_done(results, cell):
        return cell.id, 0.0
    start = time.perf_counter()
    result = (runner or _run_cell)(cell, env, progress=False)
    write_cell_result(results, result)
    return cell.id, time.perf_counter() - start


@dataclasses.dataclass
class GridSummary:
    ran: list[str]          # cell ids computed by this call
    skipped: list[str]      # cell ids already complete before it
    results: Path
    wall_seconds: float


def _train_baselines(cells, env: Env, progress) -> None:
    from prunetax.benchmarks.training import train_baseline

    seen = set()
    for c in cells:
        key = (c.network, c.dataset, c.seed, c.epochs, c.train_limit)
        if key not in seen:
            seen.add(key)
            train_baseline(c.network, c.dataset, c.seed, epochs=c.epochs, device=env.device, cache_dir=env.cache,
                           data_root=env.data_root, progress=progress, limit=c.train_limit)


def _backend_context(backend: str, n_jobs: int, scheduler: str | None):
    """A joblib parallel_config for ``backend`` (and the client it needs), imported lazily."""
    import contextlib

    import joblib

    if backend not in BACKENDS:
        raise PrunetaxError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "loky":
        if scheduler:
            raise PrunetaxError("--scheduler needs --backend dask or ray")
        return contextlib.nullcontext(), n_jobs
    module, extra = _EXTRA[backend]
    try:
        __import__(module)
    except ImportError:
        raise PrunetaxError(f"backend '{backend}' needs {extra}; pip install prunetax[{extra}]") from None
    stack = contextlib.ExitStack()
    if backend == "dask":
        from dask.distributed import Client
        local = dict(n_workers=max(n_jobs, 1) if n_jobs != -1 else os.cpu_count(), threads_per_worker=1)
        stack.enter_context(Client(scheduler) if scheduler else Client(**local))
        stack.enter_context(joblib.parallel_config(backend="dask", wait_for_workers_timeout=600))
        return stack, (n_jobs if not scheduler else -1)
    import ray
    from ray.util.joblib import register_ray
    register_ray()
    ray.init(address=scheduler or None, ignore_reinit_error=True)
    stack.callback(ray.shutdown)
    stack.enter_context(joblib.parallel_config(backend="ray"))
    return stack, (n_jobs if not scheduler else -1)


def run_grid(cells: Sequence[Cell], results, backend: str = "loky", n_jobs: int = 1, device=None,
             scheduler: str | None = None, cache_dir=None, data_root=None, progress: bool = True,
             env: Env | None = None) -> GridSummary:
    """Run every cell not yet complete under ``results``; each writes its files on completion.

    ``n_jobs`` workers (loky processes, or dask/ray tasks; -1 = all cores or all cluster slots).
    ``env``: where the cells run (``prunetax.benchmarks.setup.Env``, sent to every worker, which
    resolves its device and cache itself; None: the defaults); ``device``, ``cache_dir`` and
    ``data_root``, when given, set its fields.
    Two runs on one results root are safe: a cell may be computed twice, never written half.
    """
    import joblib
    from tqdm.auto import tqdm

    from prunetax.benchmarks.results import cell_done

    start = time.perf_counter()
    env = Env.of(env, device=device, cache_dir=cache_dir, data_root=data_root)
    if n_jobs == 0 or n_jobs < -1:
        raise PrunetaxError(f"n_jobs must be a positive integer or -1, got {n_jobs}")
    results = Path(results)
    if results.exists() and not results.is_dir():
        raise PrunetaxError(f"results folder {str(results)!r} is a file")
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise PrunetaxError("the grid lists the same cell twice")
    pending = [c for c in cells if not cell_done(results, c)]
    skipped = [c.id for c in cells if c not in pending]
    context, n_jobs = _backend_context(backend, n_jobs, scheduler)
    ran: list[str] = []
    with context:
        if pending and (n_jobs != 1 or backend != "loky"):
            _train_baselines(pending, env, progress)
        bar = tqdm(total=len(cells), initial=len(skipped), desc="cells", unit="cell", disable=not progress)
        args = [str(results), env, _run_cell]
        if n_jobs == 1 and backend == "loky":
            outputs = (_job(c, *args) for c in pending)
        else:
            outputs = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
                joblib.delayed(_job)(c, *args) for c in pending)
        for cell_id, _ in outputs:
            ran.append(cell_id)
            bar.update(1)
        bar.close()
    return GridSummary(ran, skipped, results, time.perf_counter() - start)
