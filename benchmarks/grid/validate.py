"""The checks a grid passes before any work starts.

``preflight`` needs no torch and answers in about a second: the backend and its extra, ``n_jobs``,
a scheduler given only where one is meant, no ``cuda:N`` device for ray (ray picks each cell's
GPU), and results and cache roots this process can write (``writable_folder``); it returns the paths made absolute on the client. ``validate_cells`` then,
with torch: each network known and analysable on its data's images, each data set readable,
every metric computable on every network. Each failure is one line (PrunetaxError).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Sequence

from prunetax.benchmarks.cell import REFERENCES, Cell
from prunetax.benchmarks.grid.backends import BACKENDS, EXTRAS
from prunetax.benchmarks.setup import Env
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["validate_cells", "writable_folder", "preflight"]


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
    scheduler given only where one is meant, a device ray can place (``cuda``, not ``cuda:N``),
    and writable results and cache roots. Returns the
    results root and ``env`` with every path absolute (what crosses to a worker is never relative
    to its working folder); the cache root is the client's (``$PRUNETAX_CACHE`` or the default)
    when ``env`` names none."""
    if backend not in BACKENDS:
        raise PrunetaxError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
        raise PrunetaxError(f"n_jobs must be a positive integer or -1 (all cores or cluster slots), got {n_jobs!r}")
    if backend == "loky" and scheduler:
        raise PrunetaxError("--scheduler needs --backend dask or ray")
    if backend in EXTRAS:
        module, extra = EXTRAS[backend]
        try:
            __import__(module)
        except ImportError:
            raise PrunetaxError(f"backend '{backend}' needs {extra}; pip install prunetax[{extra}]") from None
    env = Env.of(env)
    if backend == "ray" and env.device.startswith("cuda:"):
        raise PrunetaxError(f"--device {env.device} with --backend ray: ray gives each cell its own GPUs, which it "
                            f"sees from cuda:0; give --device cuda")
    root = writable_folder(results, "results folder")
    cache = writable_folder(env.cache, "cache folder")
    data = str(Path(env.data_root).expanduser().absolute()) if env.data_root is not None else None
    return root, dataclasses.replace(env, cache_dir=str(cache), data_root=data)
