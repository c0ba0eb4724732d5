"""A cell's state file: a cell stopped mid-way (killed, preempted, interrupted) continues from
its last saved step and ends with the results an uninterrupted run gives.

``run_cell(cell, env, RunOptions(checkpoint=path))`` keeps one through a :class:`CellCheckpoint`:
``load`` reads the file when it belongs to the cell (its id and its baseline), ``step_done`` keeps
the state of the step just completed in memory and writes it when ``every`` seconds have passed
since the last write, and ``saving_on_signals`` writes it at once on SIGTERM or SIGINT. Writes are atomic
(``prunetax.benchmarks.io.atomic_path``: a temporary file beside the target, fsynced, renamed
onto it): a reader finds the previous state or the new one, never a part of one. run_cell never
deletes the file; the caller does, with :func:`remove_state`, once the cell's results are written,
so that a kill between the two loses nothing.

The file is a ``torch.save`` of a dict (read back with ``weights_only=True``):

- ``format``: ``"prunetax cell state"``; ``version``: :data:`SCHEMA_VERSION`;
- ``cell_id``: ``Cell.id``; ``baseline``: :func:`baseline_digest` of the cell's baseline;
- ``step``: the current loop's last completed step; ``metric``: its metric group (0 in mode
  ``none``; the metric's index in the retraining modes);
- ``elapsed``: seconds the cell's runs spent up to that step; ``saved_at``: ``time.time()``;
- ``run``: ``protocol.CellPruning.state_dict()``.

See docs/protocol.md, "Resuming a cell".
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from prunetax.benchmarks.io import atomic_path

__all__ = ["SCHEMA_VERSION", "CellCheckpoint", "baseline_digest", "remove_state"]

SCHEMA_VERSION = 1
FORMAT = "prunetax cell state"


def baseline_digest(setup) -> str:
    """The identity of a prepared cell's baseline: the sha256 of its checkpoint file
    (``setup.info["digest"]``) when training recorded one, else a sha256 of its state_dict
    (each tensor's name, dtype, shape and bytes)."""
    digest = setup.info.get("digest")
    if digest:
        return str(digest)
    h = hashlib.sha256()
    for name, t in setup.model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def remove_state(path: str | os.PathLike) -> None:
    """Delete a state file (none there: nothing to do). The caller's step once the cell's
    results are safely written."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class CellCheckpoint:
    """The state file ``path`` of cell ``cell_id`` on baseline ``baseline`` (:func:`baseline_digest`),
    written every ``every`` seconds (0: after every step). ``log`` prints its one-line messages
    (default: stderr; a progress bar passes ``tqdm.write``)."""

    def __init__(self, path: str | os.PathLike, cell_id: str, baseline: str, every: float = 300.0,
                 log: Callable[[str], None] = _stderr):
        self.path, self.cell_id, self.baseline, self.every, self.log = Path(path), cell_id, baseline, every, log
        self.snapshot: dict | None = None      # the file's contents after the last completed step
        self.last_write = time.monotonic()
        self._writing: set[Path] = set()       # temporary files being written (a signal may cut one short)

    def load(self) -> dict | None:
        """The saved state when the file exists and is this cell's on this baseline; None when
        there is no file, and, after one line saying why, when it is another cell's, another
        baseline's, of another schema version or unreadable (the cell then starts from step 0)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:   # whatever a damaged or foreign file makes the unpickler raise
            self.ignore(f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            self.ignore("not a prunetax cell state")
        elif state.get("version") != SCHEMA_VERSION:
            self.ignore(f"schema version {state.get('version')!r}; this prunetax reads {SCHEMA_VERSION}")
        elif state.get("cell_id") != self.cell_id:
            self.ignore(f"it is the state of cell {state.get('cell_id')}")
        elif state.get("baseline") != self.baseline:
            self.ignore("it was saved on another baseline of this cell")
        else:
            return state
        return None

    def ignore(self, reason: str) -> None:
        """Say in one line that the file is not used, and why."""
        self.log(f"prunetax: ignoring the state file {self.path} ({reason}); {self.cell_id} starts from step 0")

    def step_done(self, run_state: dict, *, step: int, metric: int, elapsed: float) -> None:
        """Keep the state after the step just completed (``run_state``: ``CellPruning.state_dict()``)
        and write it when ``every`` seconds have passed since the last write."""
        self.snapshot = {"format": FORMAT, "version": SCHEMA_VERSION, "cell_id": self.cell_id,
                         "baseline": self.baseline, "step": step, "metric": metric, "elapsed": elapsed,
                         "run": run_state}
        if time.monotonic() - self.last_write >= self.every:
            self.write()

    def write(self) -> None:
        """Write the kept state (if a step has completed) atomically."""
        if self.snapshot is None:
            return
        with atomic_path(self.path) as tmp:
            self._writing.add(tmp)
            try:
                torch.save({**self.snapshot, "saved_at": time.time()}, tmp)
            finally:
                self._writing.discard(tmp)
        self.last_write = time.monotonic()

    @contextlib.contextmanager
    def saving_on_signals(self, signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
        """Inside: SIGTERM or SIGINT writes the last completed step's state at once (the step
        under way is not waited for; it is redone on resuming), then takes its usual course: the
        handler that was there before runs (Python's SIGINT handler raises KeyboardInterrupt), or,
        where that was the default action, the signal is sent again with it restored, so the
        process ends as killed by the signal (SIGTERM: status -15 to ``subprocess``, 143 in a
        shell). A second signal while the first is handled is not caught again. Handlers are only
        installed in the main thread (elsewhere Python cannot) and not for an ignored signal;
        the previous ones are back on leaving."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                old = signal.getsignal(sig)
                if old is not None and old != signal.SIG_IGN:   # None: installed outside Python
                    previous[sig] = old

        def handler(signum, frame):
            for sig, old in previous.items():
                signal.signal(sig, old)
            name = signal.Signals(signum).name
            if self.snapshot is None:
                self.log(f"prunetax: {name} before the first step of {self.cell_id}: nothing to save")
            else:
                try:
                    self.write()
                except Exception as exc:   # the signal still takes its course
                    self.log(f"prunetax: {name}: could not save the state of {self.cell_id}: {exc}")
                else:
                    self.log(f"prunetax: {name}: step {self.snapshot['step']} of {self.cell_id} saved to {self.path}")
            old = previous[signum]
            if callable(old):
                old(signum, frame)
                return
            for tmp in list(self._writing):   # a write the signal interrupted: nothing will remove it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            os.kill(os.getpid(), signum)
            raise SystemExit(128 + signum)    # only if the default action did not end the process

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
