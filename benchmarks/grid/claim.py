"""A running cell's claim: an exclusive lock on a file beside its state file, so each cell runs once.

A worker's job (``runner._job``) takes the lock of its cell before it reads the cell's state or
computes anything, and holds it while the cell runs: ``RESULTS/state/<cell>.lock`` (``lock_path``),
locked with ``flock`` (exclusive, without waiting) and holding the holder's ``host pid`` line. A
process that finds the lock held skips the cell at once (``claim_cell`` yields the holder): two
``prunetax bench`` processes on one results folder, or a loky, dask or ray worker of each, never
compute one cell twice, and nobody resumes a state file a live process is writing. The kernel
drops the lock when its process ends, however it ends, so a killed cell is taken over by the
next run. The holder removes the file before it lets go; a process that locked a file removed
meanwhile opens the new one and tries again.

The lock holds across hosts where the results folder's file system makes ``flock`` locks
coherent between them (NFS does; Lustre with the ``flock`` mount option; a node-local lock, as
Lustre's ``localflock``, keeps the claim within one host). Without ``fcntl`` (Windows) no lock is
taken and a cell may be computed twice, never written half.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:         # Windows: no claims
    fcntl = None

__all__ = ["lock_path", "claim_cell"]


def lock_path(state) -> Path:
    """The lock file beside the state file ``state``."""
    return Path(state).with_suffix(".lock")


def _holder(fd: int) -> str:
    """What the lock's holder wrote: its ``host pid`` (empty if it has not written it yet)."""
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    return ""


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed or replaced since)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire(path: Path) -> tuple[int | None, str | None]:
    """(fd holding the lock on ``path``, None), or (None, the holder) when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None, holder or "another process"
            raise
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
            return fd, None
        os.close(fd)            # its holder removed it before letting go: lock the new one


@contextlib.contextmanager
def claim_cell(path) -> Iterator[str | None]:
    """Hold the exclusive lock on ``path`` (``lock_path`` of a cell's state file) for the body
    and yield None; when another process holds it, yield its holder (``host pid``) at once,
    holding nothing. The file is removed on leaving, before the lock is let go."""
    if fcntl is None:
        yield None
        return
    path = Path(path)
    fd, holder = _acquire(path)
    if fd is None:
        yield holder
        return
    try:
        yield None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
