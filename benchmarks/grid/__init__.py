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
address; ray tasks, which ask for GPUs when the grid runs on CUDA). Paths are resolved on the
client and sent as absolute paths; stopping the client cancels the grid's tasks. A running cell
holds a lock beside its state file, so each cell runs once, also with two ``prunetax bench``
processes on one results folder.

The modules:

- ``config``: the TOML grid file and its keys, the cells of a config, metric lists expanded;
- ``validate``: the checks before any work (``preflight`` without torch, ``validate_cells`` with);
- ``backends``: loky, dask and ray behind one interface, scheduler addresses, SIGTERM, the GPUs
  a task asks for;
- ``claim``: a running cell's lock, so that each cell runs once;
- ``runner``: ``run_grid`` and its ``GridOptions``, the worker's job, state files, progress.
"""
from prunetax.benchmarks.grid.backends import BACKENDS, SCHEDULER_TIMEOUT_S
from prunetax.benchmarks.grid.config import GRID_KEYS, expand_metrics, grid_cells, load_grid_file
from prunetax.benchmarks.grid.runner import (CHECKPOINT_EVERY_S, GridOptions, GridSummary, run, run_grid,
                                             state_path, train_baselines)
from prunetax.benchmarks.grid.validate import preflight, validate_cells, writable_folder
from prunetax.benchmarks.setup import Env

__all__ = ["GRID_KEYS", "BACKENDS", "load_grid_file", "grid_cells", "expand_metrics", "validate_cells",
           "preflight", "writable_folder", "state_path", "run", "run_grid", "GridSummary", "GridOptions", "Env",
           "CHECKPOINT_EVERY_S", "SCHEDULER_TIMEOUT_S", "train_baselines"]
