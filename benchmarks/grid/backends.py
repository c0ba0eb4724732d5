"""Where a grid's cells run: loky, dask or ray, each behind one context manager.

``open_backend(backend, n_jobs, scheduler, device, gpus_per_cell)`` yields ``submit(cells, fn, arg)``,
which runs ``fn(cell, arg)`` for every cell and yields the return values in the order they complete:

- ``loky`` (one machine, through joblib; ``n_jobs`` 1: in this process);
- ``dask`` (``pip install prunetax[dask]``): dask futures on a local cluster of worker processes,
  or on the dask.distributed scheduler at ``scheduler``;
- ``ray`` (``pip install prunetax[ray]``): ray tasks on a local ray, or on the ray cluster at
  ``scheduler``.

GPUs: a cell task of a grid on CUDA asks for ``gpus_per_cell`` GPUs (``device`` ``cuda``, or
``auto`` where the cluster has GPUs): a ray task through ``num_gpus`` (``ray_task_options``; ray
then sets its CUDA_VISIBLE_DEVICES), a dask future through the ``GPU`` resource when workers
declare one (``dask_task_resources``; ``dask worker --resources GPU=1``). Loky runs on the GPUs
this machine shows.

Leaving the context cancels the tasks not yet finished; ``sigterm_stops`` turns SIGTERM into an
exception so that a stopped client leaves it, and cancels, too. A scheduler address must accept a
TCP connection within ``SCHEDULER_TIMEOUT_S`` seconds.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Callable, Iterable, Iterator

from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["BACKENDS", "EXTRAS", "SCHEDULER_TIMEOUT_S", "Stopped", "sigterm_stops", "worker_count",
           "check_address", "task_gpus", "ray_task_options", "dask_task_resources", "open_backend"]

BACKENDS = ("loky", "dask", "ray")
EXTRAS = {"dask": ("dask.distributed", "dask"), "ray": ("ray", "ray")}   # backend: (module, pip extra)
SCHEDULER_TIMEOUT_S = 10.0      # how long a --scheduler address may take to answer

Submit = Callable[[Iterable, Callable, object], Iterator]


class Stopped(KeyboardInterrupt):
    """SIGTERM reached the client: stop the grid as Ctrl-C would (its tasks are cancelled on the
    way out, a cell running here saves its state first; the CLI exits 130)."""


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """Turn SIGTERM into an exception in the client's main thread, so that leaving the backend's
    context cancels the grid's tasks instead of leaving them to run on the cluster."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped("terminated (SIGTERM)")
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def worker_count(n_jobs: int) -> int:
    """The workers ``n_jobs`` asks for: this machine's cores for -1."""
    return (os.cpu_count() or 1) if n_jobs == -1 else n_jobs


def check_address(address: str, what: str) -> None:
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


def task_gpus(device: str, gpus_per_cell: float, cluster_gpus: float) -> float:
    """The GPUs a cell task asks for: ``gpus_per_cell`` when the grid's ``device`` is ``cuda``
    (or ``cuda:N``), or ``auto`` on a cluster with GPUs (``cluster_gpus`` > 0, so that auto
    means cuda there, whatever the client sees); 0 otherwise."""
    kind = str(device).split(":", 1)[0]
    if kind == "cuda" or (kind == "auto" and cluster_gpus > 0):
        return float(gpus_per_cell)
    return 0.0


def ray_task_options(device: str, gpus_per_cell: float, cluster_gpus: float) -> dict:
    """The options of a cell's ray task on a cluster with ``cluster_gpus`` GPUs: one CPU, the
    GPUs of ``task_gpus`` (ray sets the task's CUDA_VISIBLE_DEVICES to those it gets), retried
    when a worker dies. A cuda grid on a cluster with fewer GPUs than a cell asks for (it would
    wait forever) is a one-line error."""
    gpus = task_gpus(device, gpus_per_cell, cluster_gpus)
    if gpus > cluster_gpus:
        raise PrunetaxError(f"device {device}: each cell asks ray for {gpus:g} GPU, the ray cluster has "
                            f"{cluster_gpus:g}; start its GPU nodes with ray start --num-gpus=N or give --device cpu")
    return {"num_cpus": 1, "num_gpus": gpus, "max_retries": 3}


def dask_task_resources(device: str, gpus_per_cell: float, declared: Iterable[dict]) -> dict | None:
    """The resources of a cell's dask future, given the resources each worker ``declared``:
    ``{"GPU": gpus_per_cell}`` when the cell wants GPUs (``task_gpus``) and some worker declares a
    ``GPU`` resource (the cell then runs only where one is free); None otherwise (dask places no
    GPUs: each worker runs its cells on the GPUs it sees)."""
    gpus = sum(float((d or {}).get("GPU", 0)) for d in declared)
    if gpus > 0 and task_gpus(device, gpus_per_cell, gpus) > 0:
        return {"GPU": float(gpus_per_cell)}
    return None


@contextlib.contextmanager
def _loky(n_jobs: int, scheduler, device: str, gpus_per_cell: float) -> Iterator[Submit]:
    """Cells in joblib's loky worker processes (``n_jobs`` 1: in this process)."""
    import joblib

    def submit(cells, fn, arg):
        if n_jobs == 1:
            return (fn(c, arg) for c in cells)
        return joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            joblib.delayed(fn)(c, arg) for c in cells)
    yield submit


@contextlib.contextmanager
def _dask(n_jobs: int, scheduler, device: str, gpus_per_cell: float) -> Iterator[Submit]:
    """Cells as dask futures: on ``scheduler`` (an address), or on a local cluster of ``n_jobs``
    single-threaded worker processes on 127.0.0.1. A worker lost mid-cell makes dask run the task
    again elsewhere (the cell resumes from its saved state); leaving cancels what is left. A cell
    of a grid on CUDA asks for the ``GPU`` resource where the workers there now declare one
    (``dask_task_resources``); where none does, one line says that each worker uses the GPUs it
    sees."""
    import logging

    from dask.distributed import Client, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if scheduler:
            check_address(scheduler, "dask scheduler")
            try:
                client = stack.enter_context(Client(scheduler, timeout=SCHEDULER_TIMEOUT_S))
            except (OSError, TimeoutError) as exc:
                raise PrunetaxError(f"dask scheduler at {scheduler} does not answer within "
                                    f"{SCHEDULER_TIMEOUT_S:g} s ({type(exc).__name__})") from None
        else:
            cluster = stack.enter_context(LocalCluster(
                n_workers=worker_count(n_jobs), threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        futures: list = []
        resources = _dask_resources(client, device, gpus_per_cell)

        def submit(cells, fn, arg):
            futures.extend(client.submit(fn, c, arg, pure=False, resources=resources) for c in cells)
            for fut in as_completed(futures):
                yield fut.result()
        try:
            yield submit
        finally:
            if futures:
                client.cancel(futures)


def _dask_resources(client, device: str, gpus_per_cell: float) -> dict | None:
    """``dask_task_resources`` for the workers connected to ``client`` now, after one line on
    stderr when the cells want GPUs that no worker declares."""
    import sys

    try:
        info = client.scheduler_info(n_workers=-1)     # every worker (some versions give 5 by default)
    except TypeError:                                  # older dask.distributed: every worker anyway
        info = client.scheduler_info()
    declared = [w.get("resources") for w in info.get("workers", {}).values()]
    resources = dask_task_resources(device, gpus_per_cell, declared)
    if resources is None and task_gpus(device, gpus_per_cell, 0.0) > 0:
        print(f"prunetax: no dask worker declares a GPU resource: each runs its cells on the GPUs it sees "
              f"(start one worker per GPU with --resources GPU=1 to give each cell {gpus_per_cell:g} GPU)",
              file=sys.stderr, flush=True)
    return resources


@contextlib.contextmanager
def _ray(n_jobs: int, scheduler, device: str, gpus_per_cell: float) -> Iterator[Submit]:
    """Cells as ray tasks (one CPU each, and the GPUs of ``ray_task_options``, retried when a
    worker dies): on ``scheduler`` (a ray address), or on a local ray started for this grid with
    ``n_jobs`` CPUs on 127.0.0.1 (and the GPUs ray finds there) and shut down afterwards. Leaving
    cancels what is left."""
    import logging

    import ray

    started = not ray.is_initialized()
    if started:   # ray's own start-up notices stay out of the grid's output (errors still show)
        if scheduler:
            if scheduler != "auto" and not scheduler.startswith("ray://"):
                check_address(scheduler, "ray cluster")
            ray.init(address=scheduler, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(num_cpus=worker_count(n_jobs), include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1", logging_level=logging.ERROR)
    left: list = []           # tasks not yet finished (cancelling a finished one upsets ray)
    try:
        options = ray_task_options(device, gpus_per_cell, float(ray.cluster_resources().get("GPU", 0)))

        def submit(cells, fn, arg):
            remote = ray.remote(**options)(fn)
            left.extend(remote.remote(c, arg) for c in cells)
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


_CONTEXTS = {"loky": _loky, "dask": _dask, "ray": _ray}


def open_backend(backend: str, n_jobs: int, scheduler: str | None, device: str = "cpu",
                 gpus_per_cell: float = 1.0):
    """The context manager of ``backend`` (one of ``BACKENDS``), yielding ``submit(cells, fn, arg)``:
    ``fn(cell, arg)`` run for each cell, the return values yielded as they complete. ``fn`` and
    ``arg`` must pickle (by reference for ``fn``) to reach loky, dask or ray workers. ``device``
    (the grid's: ``auto``, ``cpu``, ``cuda``...) and ``gpus_per_cell`` set the GPUs each dask or
    ray task asks for (``task_gpus``)."""
    return _CONTEXTS[backend](n_jobs, scheduler, str(device), gpus_per_cell)
