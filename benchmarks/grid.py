"""The grid runner: cells from flags or a TOML file, validated up front, run on a backend.

A grid is networks x datasets x seeds, each cell holding every metric of the grid (the harness
batches metrics within a cell) and one protocol. ``run_grid`` checks everything it can before
any work starts (``preflight``: backend, jobs, writable results and cache roots; then
``validate_cells``: networks, data, metrics on each network), skips cells whose scores file
exists (resume), trains each distinct baseline once on the client before fanning out, and
writes each cell's files as it completes (``prunetax.benchmarks.results``). A running cell saves
its state under ``RESULTS/state/`` (``prunetax.benchmarks.checkpoint``), so a killed cell
resumes from its last saved step.

Backends: ``loky`` (one machine, through joblib), ``dask`` (``pip install prunetax[dask]``: a
local cluster of worker processes, or ``scheduler=`` a dask.distributed scheduler's address;
dask futures) and ``ray`` (``pip install prunetax[ray]``: local, or ``scheduler=`` a ray
address; ray tasks). Paths are resolved on the client and sent as absolute paths; stopping the
client cancels the grid's tasks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from prunetax.benchmarks.cell import REFERENCES, Cell, CellResult, Protocol
from prunetax.benchmarks.plugins import resolve_imports
from prunetax.benchmarks.setup import Env
from prunetax.taxonomy.errors import BaselineError, PrunetaxError

__all__ = ["GRID_KEYS", "BACKENDS", "load_grid_file", "grid_cells", "expand_metrics", "validate_cells",
           "preflight", "writable_folder", "state_path", "run", "run_grid", "GridSummary", "Env"]

GRID_KEYS = ("networks", "datasets", "seeds", "metrics", "metric_filter", "epochs", "train_limit", "protocol")
BACKENDS = ("loky", "dask", "ray")
_EXTRA = {"dask": ("dask.distributed", "dask"), "ray": ("ray", "ray")}
SCHEDULER_TIMEOUT_S = 10.0      # how long a --scheduler address may take to answer
CHECKPOINT_EVERY_S = 300.0      # a running cell saves its state at most this often (and on SIGTERM/SIGINT)


def _toml():
    """``tomllib`` (Python 3.11+) or its backport ``tomli`` (a dependency on 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise PrunetaxError("reading a grid file on Python 3.10 needs tomli; pip install tomli") from None
    return tomllib


def load_grid_file(path) -> dict:
    """The TOML grid at ``path`` as a dict; a syntax error names the file, line and problem."""
    tomllib = _toml()

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
        raise _unknown_key(str(p), unknown[0], GRID_KEYS)
    return config


def _where(message: str, text: bytes) -> str:
    """'at line L, column C: problem' from tomllib's 'problem (at line L, column C)'."""
    import re

    m = re.match(r"(.*) \(at line (\d+), column (\d+)\)$", message)
    end = re.match(r"(.*) \(at end of document\)$", message)
    if message.startswith("Unclosed array"):   # tomllib names where it noticed, not the '['
        lines = text.decode("utf-8", "replace").splitlines()
        stop = int(m.group(2)) if m else len(lines) + 1
        for k in range(min(stop, len(lines)), 0, -1):
            line = lines[k - 1].split("#", 1)[0]
            if "=" in line and line.count("[") > line.count("]"):
                return f"at line {k}: the array opened here is not closed (the parser stopped at line {stop})"
    if m:
        return f"at line {m.group(2)}, column {m.group(3)}: {m.group(1)}"
    if end:
        lines = text.count(b"\n") + 1
        return f"at line {lines} (end of file): {end.group(1)}"
    return f": {message}"


def _label(source: str, key: str) -> str:
    """How an error names a grid key: the flag the user typed (``--train-limit``) when the grid
    came from flags, ``FILE: key`` when it came from a grid file."""
    return f"--{key.replace('_', '-')}" if source == "flags" else f"{source}: {key}"


def _unknown_key(source: str, key: str, valid) -> PrunetaxError:
    import difflib

    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return PrunetaxError(f"{source}: unknown key {key!r}; {hint}valid keys are {', '.join(valid)}")


def _list(config: dict, key: str, kind: type, source: str) -> list:
    value = config.get(key)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise PrunetaxError(f"{_label(source, key)} must be a non-empty list of {kind.__name__}s, got {value!r}")
    for v in value:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise PrunetaxError(f"{_label(source, key)} must hold {kind.__name__}s, got {v!r}")
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


def grid_cells(config: dict, source: str = "grid", *, validate: bool = True, data_root=None) -> list[Cell]:
    """The cells of a grid config (the TOML keys, see ``GRID_KEYS``). Raises PrunetaxError.

    The config's own checks need no torch; ``validate`` then runs :func:`validate_cells`
    (networks, data under ``data_root``, metrics on each network), which does."""
    unknown = sorted(set(config) - set(GRID_KEYS))
    if unknown:
        raise _unknown_key(source, unknown[0], GRID_KEYS)
    networks = _list(config, "networks", str, source)
    datasets = _list(config, "datasets", str, source)
    seeds = _list({"seeds": [0], **config}, "seeds", int, source)
    if any(s < 0 for s in seeds):
        raise PrunetaxError(f"{_label(source, 'seeds')} must be >= 0, got {seeds}")
    metric_items = _list({"metrics": ["paper"], **config}, "metrics", str, source)
    metric_filter = config.get("metric_filter")
    if metric_filter is not None and not isinstance(metric_filter, str):
        raise PrunetaxError(f"{_label(source, 'metric_filter')} must be a glob string, got {metric_filter!r}")
    metrics = expand_metrics(metric_items, metric_filter)
    protocol_cfg = config.get("protocol", {})
    if not isinstance(protocol_cfg, dict):
        raise PrunetaxError(f"{source}: [protocol] must be a table of Protocol options")
    types = {f.name: f.type for f in dataclasses.fields(Protocol)}
    for k, v in protocol_cfg.items():
        want = {"float": (int, float), "bool": (bool,), "int": (int,), "str": (str,)}.get(str(types.get(k)), ())
        if want and (not isinstance(v, want) or (isinstance(v, bool) and bool not in want)):
            raise PrunetaxError(f"{_label(source, k) if source == 'flags' else source + ': [protocol] ' + k} "
                                f"must be a {types[k]}, got {v!r}")
    unknown = sorted(set(protocol_cfg) - set(types))
    if unknown:
        raise _unknown_key(f"{source}: [protocol]" if source != "flags" else "flags: [protocol]", unknown[0],
                           sorted(types))
    try:
        protocol = Protocol.from_dict(protocol_cfg)
    except TypeError as exc:
        raise PrunetaxError(f"{source}: bad protocol option: {exc}") from None
    epochs, limit = config.get("epochs"), config.get("train_limit")
    for name, v in (("epochs", epochs), ("train_limit", limit)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise PrunetaxError(f"{_label(source, name)} must be a positive integer, got {v!r}")
    cells = [Cell(n, d, s, metrics, protocol, epochs, limit) for n in networks for d in datasets for s in seeds]
    if validate:
        validate_cells(cells, data_root=data_root)
    return cells


def validate_cells(cells: Sequence[Cell], data_root=None) -> None:
    """Check, before anything trains: each data set is present and readable (under ``data_root``
    or its default place), each network is known, available, has a recipe and can be analysed on
    that data's images, and every metric of the cell can be computed on it (BatchNorm metrics
    need a BatchNorm after every pruned producer). One-line PrunetaxError otherwise."""
    import torch

    from prunetax.benchmarks.data import load_raw
    from prunetax.benchmarks.models import create_model, model_info
    from prunetax.benchmarks.training import recipe_for
    from prunetax.metrics import analyze, check_metrics

    raws, analysed, checked = {}, {}, set()
    for cell in cells:
        info = model_info(cell.network)  # unknown model: one line naming the zoo
        if not info.available:
            raise PrunetaxError(f"model '{cell.network}' is unavailable: {info.reason}")
        if cell.dataset not in raws:      # unknown data set, missing or malformed files: one line
            raws[cell.dataset] = load_raw(cell.dataset, data_root)
        raw = raws[cell.dataset]
        recipe = recipe_for(cell.network, cell.dataset, cell.epochs)
        channels, size = int(raw.train_x.shape[1]), int(raw.train_x.shape[2])
        size = max(size, recipe.pad_to or 0)
        key = (cell.network, channels, raw.num_classes, size)
        if key not in analysed:
            model = create_model(cell.network, channels, raw.num_classes, size).eval()
            try:
                analysed[key] = analyze(model, torch.zeros(1, channels, size, size))
            except PrunetaxError as exc:
                raise PrunetaxError(f"network '{cell.network}' cannot be pruned: {exc}") from None
        metrics = tuple(m for m in cell.metrics if m not in REFERENCES)
        if metrics and (key, cell.protocol.prune_linear, metrics) not in checked:
            checked.add((key, cell.protocol.prune_linear, metrics))
            full = analysed[key]
            try:
                check_metrics(full if cell.protocol.prune_linear else full.restricted(("conv",)), metrics)
            except PrunetaxError as exc:
                raise PrunetaxError(f"network '{cell.network}': {exc}") from None


def writable_folder(path, what: str) -> Path:
    """``path`` made absolute, after checking that it is, or can be made, a folder this process
    can write: the nearest existing folder on its path is probed by creating and removing a file.
    Creates nothing that stays. One-line PrunetaxError naming the path otherwise."""
    target = Path(path).expanduser().absolute()
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        if probe == target:
            raise PrunetaxError(f"{what} {str(target)!r} is a file; give a folder")
        raise PrunetaxError(f"{what} {str(target)!r} lies below the regular file {str(probe)!r}; give a folder path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".prunetax-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise PrunetaxError(f"{what} {str(target)!r} cannot be written ({exc.strerror} in {str(probe)!r}); "
                            f"give a folder you can write") from None
    return target


def preflight(results, backend: str = "loky", n_jobs: int = 1, scheduler: str | None = None,
              env: Env | None = None) -> tuple[Path, Env]:
    """The checks that need no torch, before any work: the backend and its extra, ``n_jobs``, a
    scheduler given only where one is meant, and writable results and cache roots. Returns the
    results root and ``env`` with every path absolute (what crosses to a worker is never relative
    to its working folder); the cache root is the client's (``$PRUNETAX_CACHE`` or the default)
    when ``env`` names none."""
    if backend not in BACKENDS:
        raise PrunetaxError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
        raise PrunetaxError(f"n_jobs must be a positive integer or -1 (all cores or cluster slots), got {n_jobs!r}")
    if backend == "loky" and scheduler:
        raise PrunetaxError("--scheduler needs --backend dask or ray")
    if backend in _EXTRA:
        module, extra = _EXTRA[backend]
        try:
            __import__(module)
        except ImportError:
            raise PrunetaxError(f"backend '{backend}' needs {extra}; pip install prunetax[{extra}]") from None
    env = Env.of(env)
    root = writable_folder(results, "results folder")
    cache = writable_folder(env.cache, "cache folder")
    data = str(Path(env.data_root).expanduser().absolute()) if env.data_root is not None else None
    return root, dataclasses.replace(env, cache_dir=str(cache), data_root=data)


def state_path(results, cell: Cell) -> Path:
    """Where ``cell``'s running state is saved under the results root (removed once its results
    are written; the scores and trajectories readers never look in ``state/``)."""
    from prunetax.benchmarks.results import cell_path

    return Path(results) / "state" / cell_path(results, cell).with_suffix(".state").name


def _run_cell(cell: Cell, env: Env, progress: bool = False, **kw) -> CellResult:
    from prunetax.benchmarks.protocol import run_cell

    return run_cell(cell, env, progress=progress, **kw)


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


def _job(cell: Cell, results: str, env: Env, runner=None, threads: int | None = None,
         checkpoint_every: float = CHECKPOINT_EVERY_S, progress: bool = False, plugins: tuple = (),
         plugin_cwd: str | None = None, allow_weak_baseline: bool = False) -> tuple[str, float]:
    """What a worker runs: the client's plug-ins loaded (``plugins``, as ``--import`` gave them,
    resolved against ``plugin_cwd``, and the installed entry points), then one cell, resumed from
    its saved state if there is one, written on completion (skipped if another worker finished
    it), then its state removed. ``threads``: torch's intra-op threads for the cell (None: the
    worker's default)."""
    from prunetax.benchmarks.plugins import load_plugins
    from prunetax.benchmarks.results import cell_done, write_cell_result

    load_plugins(plugins, plugin_cwd)
    if cell_done(results, cell):
        return cell.id, 0.0
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    start = time.perf_counter()
    state = state_path(results, cell)
    extra = {"allow_weak_baseline": True} if allow_weak_baseline else {}
    try:
        result = (runner or _run_cell)(cell, env, progress=progress, checkpoint=state,
                                       checkpoint_every=checkpoint_every, **extra)
    except BaselineError as exc:     # this cell cannot run; the grid goes on with the others
        return cell.id, time.perf_counter() - start, str(exc)
    write_cell_result(results, result)
    with contextlib.suppress(FileNotFoundError):
        state.unlink()
    return cell.id, time.perf_counter() - start


@dataclasses.dataclass
class GridSummary:
    ran: list[str]          # cell ids computed by this call
    skipped: list[str]      # cell ids already complete before it
    results: Path
    wall_seconds: float


def _train_baselines(cells, env: Env, progress) -> dict[str, str]:
    """Train the cells' missing baselines here; ``{cell id: error}`` for the cells whose baseline
    failed (``BaselineError``: training diverged)."""
    from prunetax.benchmarks.training import train_baseline

    failed: dict[tuple, str] = {}
    seen = set()
    for c in cells:
        key = (c.network, c.dataset, c.seed, c.epochs, c.train_limit)
        if key not in seen:
            seen.add(key)
            try:
                train_baseline(c.network, c.dataset, c.seed, epochs=c.epochs, device=env.device, cache_dir=env.cache,
                               data_root=env.data_root, progress=progress, limit=c.train_limit)
            except BaselineError as exc:
                failed[key] = str(exc)
    return {c.id: failed[k] for c in cells if (k := (c.network, c.dataset, c.seed, c.epochs, c.train_limit)) in failed}


class _Stopped(KeyboardInterrupt):
    """SIGTERM reached the client: stop the grid as Ctrl-C would (its tasks are cancelled on the
    way out, a cell running here saves its state first; the CLI exits 130)."""


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Turn SIGTERM into an exception in the client's main thread, so that leaving the backend's
    context cancels the grid's tasks instead of leaving them to run on the cluster."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Stopped("terminated (SIGTERM)")
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _workers(n_jobs: int) -> int:
    return (os.cpu_count() or 1) if n_jobs == -1 else n_jobs


def _check_address(address: str, what: str) -> None:
    """A TCP connection to ``host:port`` within SCHEDULER_TIMEOUT_S, else a one-line error."""
    import socket
    import urllib.parse

    parsed = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise PrunetaxError(f"{what} address {address!r} is not HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=SCHEDULER_TIMEOUT_S).close()
    except OSError as exc:
        raise PrunetaxError(f"{what} at {address} does not answer within {SCHEDULER_TIMEOUT_S:g} s "
                            f"({exc.strerror or type(exc).__name__}); start it or give another address") from None


@contextlib.contextmanager
def _loky(n_jobs: int, scheduler):
    """Cells in joblib's loky worker processes (``n_jobs`` 1: in this process)."""
    import joblib

    def submit(cells, job, kw):
        if n_jobs == 1:
            return (job(c, **kw) for c in cells)
        return joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            joblib.delayed(job)(c, **kw) for c in cells)
    yield submit


@contextlib.contextmanager
def _dask(n_jobs: int, scheduler):
    """Cells as dask futures: on ``scheduler`` (an address), or on a local cluster of ``n_jobs``
    single-threaded worker processes on 127.0.0.1. A worker lost mid-cell makes dask run the task
    again elsewhere (the cell resumes from its saved state); leaving cancels what is left."""
    import logging

    from dask.distributed import Client, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if scheduler:
            _check_address(scheduler, "dask scheduler")
            try:
                client = stack.enter_context(Client(scheduler, timeout=SCHEDULER_TIMEOUT_S))
            except (OSError, TimeoutError) as exc:
                raise PrunetaxError(f"dask scheduler at {scheduler} does not answer within "
                                    f"{SCHEDULER_TIMEOUT_S:g} s ({type(exc).__name__})") from None
        else:
            cluster = stack.enter_context(LocalCluster(
                n_workers=_workers(n_jobs), threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        futures: list = []

        def submit(cells, job, kw):
            futures.extend(client.submit(job, c, pure=False, **kw) for c in cells)
            for fut in as_completed(futures):
                yield fut.result()
        try:
            yield submit
        finally:
            if futures:
                client.cancel(futures)


@contextlib.contextmanager
def _ray(n_jobs: int, scheduler):
    """Cells as ray tasks (one CPU each, retried when a worker dies): on ``scheduler`` (a ray
    address), or on a local ray started for this grid with ``n_jobs`` CPUs on 127.0.0.1 and shut
    down afterwards. Leaving cancels what is left."""
    import logging

    import ray

    started = not ray.is_initialized()
    if started:   # ray's own start-up notices stay out of the grid's output (errors still show)
        if scheduler:
            if scheduler != "auto" and not scheduler.startswith("ray://"):
                _check_address(scheduler, "ray cluster")
            ray.init(address=scheduler, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(num_cpus=_workers(n_jobs), include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1", logging_level=logging.ERROR)
    left: list = []           # tasks not yet finished (cancelling a finished one upsets ray)
    try:
        def submit(cells, job, kw):
            remote = ray.remote(num_cpus=1, max_retries=3)(job)
            left.extend(remote.remote(c, **kw) for c in cells)
            while left:
                done, rest = ray.wait(left, num_returns=1)
                left[:] = rest
                yield ray.get(done[0])
        yield submit
    finally:
        for ref in left:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


_BACKEND_CONTEXTS = {"loky": _loky, "dask": _dask, "ray": _ray}


def run_grid(cells: Sequence[Cell], results, backend: str = "loky", n_jobs: int = 1, device=None,
             scheduler: str | None = None, cache_dir=None, data_root=None, progress: bool = True,
             env: Env | None = None, checkpoint_every: float = CHECKPOINT_EVERY_S,
             runner: Callable | None = None, pretrain: bool = True, plugins: Sequence[str] = (),
             allow_weak_baseline: bool = False) -> GridSummary:
    """Run every cell not yet complete under ``results``; each writes its files on completion.

    ``n_jobs`` workers (loky processes, dask workers of a local cluster, local ray CPUs; -1 =
    all cores; with ``scheduler`` the cluster's own workers run the cells, ``n_jobs`` only bounds
    nothing). ``env``: where the cells run (``prunetax.benchmarks.setup.Env``; its paths are made
    absolute here, on the client, and the client's cache root is used when it names none);
    ``device``, ``cache_dir`` and ``data_root``, when given, set its fields. A running cell saves
    its state every ``checkpoint_every`` seconds (and on SIGTERM/SIGINT) under ``results/state``,
    and a rerun resumes it. ``progress``: bars on a terminal (a bar over cells; at ``n_jobs`` 1
    also the cell's bar over steps); otherwise one plain line per baseline trained and per cell
    completed, and at ``n_jobs`` 1 a line on the running cell at most once a minute. Two runs on
    one results root are safe: a cell may be computed twice, never written half.

    ``pretrain``: with workers, train every missing baseline here first, so that each is trained
    once, on the client's device and thread count (False: each cell trains or reads its own).
    ``runner``: what runs a cell (default ``protocol.run_cell``; tests pass stand-ins).
    ``plugins``: modules or .py files the workers import first (``--import``; docs/plugins.md),
    which the caller has imported already. ``allow_weak_baseline``: prune baselines whose
    accuracy target is not above chance (by default such a cell stops with a one-line error).
    A cell whose baseline fails (``BaselineError``: that error, or training diverged) is reported
    and the other cells run; then ``BaselineError`` counts the failed cells, naming the first.
    """
    from prunetax.benchmarks.results import cell_done, check_done_recipe

    start = time.perf_counter()
    results, env = preflight(results, backend, n_jobs, scheduler,
                             Env.of(env, device=device, cache_dir=cache_dir, data_root=data_root))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise PrunetaxError("the grid lists the same cell twice")
    pending = [c for c in cells if not cell_done(results, c)]
    skipped = [c.id for c in cells if c not in pending]
    for c in cells:
        if c not in pending:
            check_done_recipe(results, c)
    inline = backend == "loky" and n_jobs == 1
    # one cell per worker gets the machine's cores shared out (loky and local clusters), so the
    # cells compute with the same thread count whatever runs them
    threads = None if inline or scheduler else max(1, (os.cpu_count() or 1) // _workers(n_jobs))
    kw = dict(results=str(results), env=env, runner=runner or _run_cell, threads=threads,
              checkpoint_every=float(checkpoint_every), progress=(progress or "lines") if inline else False,
              plugins=resolve_imports(plugins), plugin_cwd=os.getcwd(), allow_weak_baseline=allow_weak_baseline)
    ran: list[str] = []
    failed: dict[str, str] = {}
    if not pending:
        return GridSummary(ran, skipped, results, time.perf_counter() - start)
    with _sigterm_stops(), _BACKEND_CONTEXTS[backend](n_jobs, scheduler) as submit:
        if pretrain and not inline:
            failed = _train_baselines(pending, env, progress)
            pending = [c for c in pending if c.id not in failed]
        bar = _CellProgress(len(cells), len(skipped), progress)
        try:
            for cell_id, error in failed.items():
                bar.failed(cell_id, error)
            for cell_id, seconds, *error in submit(pending, _job, kw):
                if error:
                    failed[cell_id] = error[0]
                    bar.failed(cell_id, error[0])
                else:
                    ran.append(cell_id)
                    bar.done(cell_id, seconds)
        finally:
            bar.close()
    if failed:
        first_id, first = next(iter(failed.items()))
        raise BaselineError(
            f"{len(failed)} of {len(cells)} cells could not run, their baselines failed (first: {first_id}: {first}); "
            f"the other {len(ran) + len(skipped)} are written under {results}")
    return GridSummary(ran, skipped, results, time.perf_counter() - start)


class _CellProgress:
    """A bar over cells on a terminal; otherwise one plain line per cell completed."""

    def __init__(self, total: int, initial: int, bar: bool):
        self.total, self.count = total, initial
        self.bar = None
        if bar:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc="cells", unit="cell", file=sys.stderr)

    def done(self, cell_id: str, seconds: float) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        else:
            print(f"cell {self.count}/{self.total} done: {cell_id} ({seconds:.0f} s)", file=sys.stderr, flush=True)

    def failed(self, cell_id: str, error: str) -> None:
        self.count += 1
        line = f"cell {self.count}/{self.total} failed: {cell_id}: {error}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
