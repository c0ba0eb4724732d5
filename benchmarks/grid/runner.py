"""Running a grid: the cells not yet complete, on a backend, each written as it completes.

``run_grid(cells, results, backend, n_jobs, scheduler, env, options)`` checks what needs no
torch (``validate.preflight``), skips cells whose scores file exists (resume), trains each
distinct baseline once on the client before fanning out (``train_baselines``), then hands the
cells to a backend (``backends.open_backend``). Each worker runs ``_job``: the client's
plug-ins loaded, the cell claimed (``claim.claim_cell``: a lock beside its state file, held while
it runs; a cell another process holds is skipped, one done meanwhile too), the cell run through
``prunetax.benchmarks.protocol.run_cell`` with its state file under ``RESULTS/state/``
(``state_path``; a killed cell resumes from its last saved step), its files written
(``prunetax.benchmarks.results``), its state removed. ``GridOptions`` holds
how the grid runs; nothing in it enters the results.

``run`` (``prunetax.run``) is the older way to run one cell, kept as a deprecated shim.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from prunetax.benchmarks.cell import Cell, CellResult, RunOptions
from prunetax.benchmarks.grid.backends import open_backend, sigterm_stops, worker_count
from prunetax.benchmarks.grid.claim import claim_cell, lock_path
from prunetax.benchmarks.grid.validate import preflight
from prunetax.benchmarks.plugins import resolve_imports
from prunetax.benchmarks.setup import Env
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["CHECKPOINT_EVERY_S", "GridOptions", "GridSummary", "state_path", "train_baselines", "run_grid", "run"]

CHECKPOINT_EVERY_S = 300.0      # a running cell saves its state at most this often (and on SIGTERM/SIGINT)


@dataclass(frozen=True)
class GridOptions:
    """How a grid runs (``run_grid``); none of it enters the results.

    ``progress``: bars on a terminal (a bar over cells; at ``n_jobs`` 1 also the cell's bar over
    steps); otherwise one plain line per baseline trained and per cell completed, and at
    ``n_jobs`` 1 a line on the running cell at most once a minute. ``checkpoint_every``: a running
    cell saves its state at most this often, in seconds (and on SIGTERM/SIGINT). ``runner``: what
    runs a cell, called as ``runner(cell, env, options)`` with a ``RunOptions`` (None:
    ``prunetax.benchmarks.protocol.run_cell``; tests pass stand-ins); it must pickle by reference
    to reach workers. ``pretrain``: with workers, train every missing baseline on the client
    first, so that each is trained once, on the client's device and thread count (False: each
    cell trains or reads its own). ``plugins``: modules or .py files the workers import first
    (``--import``; docs/plugins.md), which the caller has imported already.
    ``allow_weak_baseline``: prune baselines whose accuracy target is not above chance (by
    default such a cell stops with a one-line error). ``gpus_per_cell``: the GPUs each cell's
    task asks ray or dask for when the grid runs on CUDA (``backends.task_gpus``): a fraction in
    (0, 1] (cells share a GPU) or a whole number.
    """
    progress: bool | str = True
    checkpoint_every: float = CHECKPOINT_EVERY_S
    runner: Callable[[Cell, Env, RunOptions], CellResult] | None = None
    pretrain: bool = True
    plugins: tuple[str, ...] = ()
    allow_weak_baseline: bool = False
    gpus_per_cell: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "plugins", tuple(self.plugins))
        object.__setattr__(self, "checkpoint_every", float(self.checkpoint_every))
        object.__setattr__(self, "gpus_per_cell", float(self.gpus_per_cell))
        if not self.checkpoint_every >= 0:
            raise PrunetaxError(f"checkpoint_every must be >= 0 seconds, got {self.checkpoint_every!r}")
        g = self.gpus_per_cell
        if not (0 < g <= 1 or (g > 1 and g == int(g))):   # ray's rule for num_gpus
            raise PrunetaxError(f"gpus_per_cell {g:g}: must be a fraction in (0, 1] or a whole number of GPUs")


@dataclass
class GridSummary:
    ran: list[str]          # cell ids computed by this call
    skipped: list[str]      # cell ids complete before it, or completed by another process meanwhile
    results: Path
    wall_seconds: float
    elsewhere: list[str] = dataclasses.field(default_factory=list)   # running in another process: left to it


# what a worker's job reports for its cell
RAN, DONE, ELSEWHERE, FAILED = "ran", "done", "elsewhere", "failed"


def state_path(results, cell: Cell) -> Path:
    """Where ``cell``'s running state is saved under the results root (removed once its results
    are written; the scores and trajectories readers never look in ``state/``)."""
    from prunetax.benchmarks.results import cell_path

    return Path(results) / "state" / cell_path(results, cell).with_suffix(".state").name


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs besides its cell (one picklable value): the results root and the
    Env (absolute paths), the cell's RunOptions (each cell adds its own state file), what runs the
    cell, torch's intra-op threads (None: the worker's default), and the client's plug-ins
    (``--import`` values, resolved against ``plugin_cwd``)."""
    results: str
    env: Env
    options: RunOptions
    runner: Callable[[Cell, Env, RunOptions], CellResult]
    threads: int | None = None
    plugins: tuple[str, ...] = ()
    plugin_cwd: str | None = None
    token: str = ""             # this run_grid call's, in the mark each cell it wrote leaves (ran_mark)


def _job(cell: Cell, job: _Job) -> tuple[str, float, str, str | None]:
    """What a worker runs: the client's plug-ins loaded (and the installed entry points), then one
    cell claimed (its lock held while it runs), resumed from its saved state if there is one,
    written on completion, then its state removed. Returns (cell id, seconds, outcome, detail):
    ``RAN``; ``DONE`` (written by another process before the claim); ``ELSEWHERE`` (another
    process holds it; detail: its ``host pid``); ``FAILED`` (its baseline failed, detail: the
    ``BaselineError``)."""
    from prunetax.benchmarks.baseline import BaselineError
    from prunetax.benchmarks.plugins import load_plugins
    from prunetax.benchmarks.results import cell_done, write_cell_result

    load_plugins(job.plugins, job.plugin_cwd)
    state = state_path(job.results, cell)
    with claim_cell(lock_path(state)) as holder:
        if holder is not None:
            return cell.id, 0.0, ELSEWHERE, holder
        if cell_done(job.results, cell):       # a lost result recomputed (dask): the mark says this grid wrote it
            return cell.id, 0.0, RAN if _marked(state, job.token) else DONE, None
        if job.threads is not None:
            import torch
            torch.set_num_threads(job.threads)
        start = time.perf_counter()
        try:
            result = job.runner(cell, job.env, dataclasses.replace(job.options, checkpoint=str(state)))
        except BaselineError as exc:     # this cell cannot run; the grid goes on with the others
            return cell.id, time.perf_counter() - start, FAILED, str(exc)
        write_cell_result(job.results, result)
        ran_mark(state).write_text(job.token)
        with contextlib.suppress(FileNotFoundError):
            state.unlink()
        return cell.id, time.perf_counter() - start, RAN, None


def ran_mark(state: Path) -> Path:
    """The mark a job leaves beside a cell's state file once it has written the cell: the token of
    its run_grid call. A backend that loses a finished task's result (a dask worker that dies
    after it) runs the task again; the new attempt finds the cell written and, by the mark, counts
    it as run by this grid, not by another process. run_grid removes its marks when it ends."""
    return state.with_suffix(".ran")


def _marked(state: Path, token: str) -> bool:
    try:
        return bool(token) and ran_mark(state).read_text() == token
    except OSError:
        return False


def train_baselines(cells: Sequence[Cell], env: Env, progress: bool | str) -> dict[str, str]:
    """Train the cells' missing baselines here (``prunetax.benchmarks.baseline.Baseline``), each
    distinct one once, in the cells' order; ``{cell id: error}`` for the cells whose baseline
    failed (``BaselineError``: training diverged)."""
    from prunetax.benchmarks.baseline import Baseline, BaselineError

    baselines = [Baseline.for_cell(c) for c in cells]
    failed: dict[Baseline, str] = {}
    for baseline in dict.fromkeys(baselines):
        try:
            baseline.get(env, progress=progress)
        except BaselineError as exc:
            failed[baseline] = str(exc)
    return {c.id: failed[b] for c, b in zip(cells, baselines) if b in failed}


_ENV_KEYWORDS = ("device", "cache_dir", "data_root")
_OPTION_KEYWORDS = tuple(f.name for f in dataclasses.fields(GridOptions))


def _with_legacy(legacy: dict, env, options: GridOptions | None) -> tuple[Env, GridOptions]:
    """``env`` and ``options`` with ``run_grid``'s older keywords on top (``device``, ``cache_dir``,
    ``data_root`` set the Env's fields; the others GridOptions'), after a DeprecationWarning naming
    them. An unknown keyword is a TypeError, as for any function."""
    unknown = [k for k in legacy if k not in _ENV_KEYWORDS + _OPTION_KEYWORDS]
    if unknown:
        raise TypeError(f"run_grid() got an unexpected keyword argument {unknown[0]!r}")
    options = options if options is not None else GridOptions()
    if legacy:
        warnings.warn(f"run_grid's keyword arguments {', '.join(legacy)} are deprecated: give "
                      f"env=Env(device, cache_dir, data_root) and options=GridOptions({', '.join(_OPTION_KEYWORDS)})",
                      DeprecationWarning, stacklevel=3)
        env = Env.of(env, **{k: v for k, v in legacy.items() if k in _ENV_KEYWORDS})
        options = dataclasses.replace(options, **{k: v for k, v in legacy.items() if k in _OPTION_KEYWORDS})
    return Env.of(env), options


def _default_runner() -> Callable[[Cell, Env, RunOptions], CellResult]:
    """``prunetax.benchmarks.protocol.run_cell``, looked up when the grid starts (on the client),
    so that whatever that name holds then is what the workers run."""
    from prunetax.benchmarks import protocol

    return protocol.run_cell


def run_grid(cells: Sequence[Cell], results, backend: str = "loky", n_jobs: int = 1, scheduler: str | None = None,
             env: Env | None = None, options: GridOptions | None = None, **legacy) -> GridSummary:
    """Run every cell not yet complete under ``results``; each writes its files on completion.

    ``n_jobs`` workers (loky processes, dask workers of a local cluster, local ray CPUs; -1 =
    all cores; with ``scheduler`` the cluster's own workers run the cells, ``n_jobs`` only bounds
    nothing). ``env``: where the cells run (``prunetax.benchmarks.setup.Env``; its paths are made
    absolute here, on the client, and the client's cache root is used when it names none).
    ``options``: how the grid runs (:class:`GridOptions`: progress, checkpoint interval, runner,
    pretraining, plug-ins, weak baselines). A running cell saves its state every
    ``options.checkpoint_every`` seconds (and on SIGTERM/SIGINT) under ``results/state``, and a
    rerun resumes it. Two runs on one results root are safe: a running cell holds a lock beside its
    state (``claim.claim_cell``), so each cell is computed once, by whoever claims it first; the
    others skip it (``GridSummary.elsewhere``) and never resume a live state. A cell whose
    baseline fails (``BaselineError``: a baseline not above chance, or training diverged) is
    reported and the other cells run; then ``BaselineError`` counts the failed cells, naming the
    first. ``options.gpus_per_cell`` and ``env.device`` set the GPUs each dask or ray task asks for.

    The older keywords ``device``, ``cache_dir``, ``data_root`` (the Env's fields) and
    ``progress``, ``checkpoint_every``, ``runner``, ``pretrain``, ``plugins``,
    ``allow_weak_baseline`` (GridOptions') are still accepted, with a DeprecationWarning.
    """
    from prunetax.benchmarks.results import cell_done, check_done_recipe

    env, options = _with_legacy(legacy, env, options)
    start = time.perf_counter()
    results, env = preflight(results, backend, n_jobs, scheduler, env)
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise PrunetaxError("the grid lists the same cell twice")
    pending = [c for c in cells if not cell_done(results, c)]
    skipped = [c.id for c in cells if c not in pending]
    for c in cells:
        if c not in pending:
            check_done_recipe(results, c)
    if not pending:
        return GridSummary([], skipped, results, time.perf_counter() - start)
    inline = backend == "loky" and n_jobs == 1
    # one cell per worker gets the machine's cores shared out (loky and local clusters), so the
    # cells compute with the same thread count whatever runs them
    threads = None if inline or scheduler else max(1, (os.cpu_count() or 1) // worker_count(n_jobs))
    cell_options = RunOptions(progress=(options.progress or "lines") if inline else False,
                              checkpoint_every=options.checkpoint_every,
                              allow_weak_baseline=options.allow_weak_baseline)
    job = _Job(str(results), env, cell_options, options.runner or _default_runner(), threads,
               resolve_imports(options.plugins), os.getcwd(), uuid.uuid4().hex)
    failed: dict[str, str] = {}
    try:
        with sigterm_stops(), open_backend(backend, n_jobs, scheduler, env.device, options.gpus_per_cell) as submit:
            if options.pretrain and not inline:
                failed = train_baselines(pending, env, options.progress)
                pending = [c for c in pending if c.id not in failed]
            bar = _CellProgress(len(cells), len(skipped), options.progress)
            outcome = _collect(bar, failed, functools.partial(submit, pending, _job, job))
    finally:
        for c in pending:
            if _marked(state_path(results, c), job.token):
                with contextlib.suppress(OSError):
                    ran_mark(state_path(results, c)).unlink()
    ran, skipped, elsewhere = outcome[RAN], skipped + outcome[DONE], outcome[ELSEWHERE]
    if failed:
        from prunetax.benchmarks.baseline import BaselineError

        first_id, first = next(iter(failed.items()))
        raise BaselineError(
            f"{len(failed)} of {len(cells)} cells could not run, their baselines failed (first: {first_id}: {first}); "
            f"the other {len(ran) + len(skipped)} are written under {results}"
            + (f", {len(elsewhere)} running in another process" if elsewhere else ""))
    return GridSummary(ran, skipped, results, time.perf_counter() - start, elsewhere)


def _collect(bar: "_CellProgress", failed: dict[str, str], outcomes: Callable) -> dict[str, list[str]]:
    """Report the cells that ``failed`` before they were submitted, then each of ``outcomes()``
    (the ``_job`` results, as they complete) on ``bar``; the failed cells are added to ``failed``.
    Returns the ids of the other cells by outcome (``RAN``, ``DONE``, ``ELSEWHERE``). The bar is
    closed on the way out, whatever happens."""
    out: dict[str, list[str]] = {RAN: [], DONE: [], ELSEWHERE: []}
    try:
        for cell_id, error in failed.items():
            bar.failed(cell_id, error)
        for cell_id, seconds, outcome, detail in outcomes():
            if outcome == FAILED:
                failed[cell_id] = detail
                bar.failed(cell_id, detail)
                continue
            out[outcome].append(cell_id)
            if outcome == RAN:
                bar.done(cell_id, seconds)
            else:
                bar.left(cell_id, f"is running elsewhere ({detail}): skipped" if outcome == ELSEWHERE
                         else "was completed by another process meanwhile: skipped")
    finally:
        bar.close()
    return out


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
        self._line(f"cell {self.count}/{self.total} failed: {cell_id}: {error}")

    def left(self, cell_id: str, why: str) -> None:
        """One line on a cell this grid leaves: ``cell ID WHY``."""
        self.count += 1
        self._line(f"cell {cell_id} {why}")

    def _line(self, line: str) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(cell: Cell, results=None, device=None, cache_dir=None, data_root=None, progress=False,
        env: Env | None = None) -> CellResult:
    """Run one cell; write its files under ``results`` if given. Deprecated: use
    ``prunetax.benchmarks.protocol.run_cell(cell, env, RunOptions(progress=...))`` and
    ``prunetax.benchmarks.results.write_cell_result(results, result)``, which this calls.

    ``env``: where it runs (``prunetax.benchmarks.setup.Env``; None: the defaults); ``device``,
    ``cache_dir`` and ``data_root``, when given, set its fields.
    """
    warnings.warn("prunetax.run is deprecated: use prunetax.benchmarks.protocol.run_cell(cell, env, "
                  "RunOptions(progress=...)), then prunetax.benchmarks.results.write_cell_result(results, result) "
                  "to write its files", DeprecationWarning, stacklevel=2)
    from prunetax.benchmarks import protocol

    env = Env.of(env, device=device, cache_dir=cache_dir, data_root=data_root)
    result = protocol.run_cell(cell, env, RunOptions(progress=progress))
    if results is not None:
        from prunetax.benchmarks.results import write_cell_result
        write_cell_result(results, result)
    return result
