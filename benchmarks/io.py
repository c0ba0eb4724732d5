"""Output files that are never half-written: write to a temporary name beside the target, fsync, then rename."""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Iterator, Sequence

from prunetax.taxonomy.errors import PrunetaxError

FORMATS = ("table", "json", "csv", "parquet")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only on success.

    The temporary file is created here (empty), under a unique name starting with '.' (which
    Parquet dataset readers skip), with mode 0o666 less the process's umask, as ``open`` would
    create ``path`` itself: others can read what the user's umask lets them read (mkstemp's 0600
    hid results and cached baselines from other accounts). The caller writes it by path; on a
    clean exit it is fsynced (reopened by path, so whatever the caller wrote through any handle
    is on disk before the rename), renamed onto ``path`` with ``os.replace`` and the folder is
    fsynced (best effort). On an exception the temporary file is removed and ``path`` untouched.
    """
    target = Path(path)
    if target.is_dir():
        raise PrunetaxError(f"output path {str(target)!r} is a folder; give a file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(target)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(target.parent)


def _create_temporary(target: Path) -> Path:
    """Create an empty file ``.<name>.<random>.tmp`` beside ``target`` (O_EXCL: never someone else's)."""
    raw = os.fsencode(target.name)  # the suffix must not push the name past the usual limit of 255 bytes
    stem = raw[:200].decode(errors="ignore") if len(raw) > 200 else target.name
    for _ in range(100):
        tmp = target.parent / f".{stem}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise PrunetaxError(f"cannot create a temporary file beside {str(target)!r}: 100 names taken")


# fsync errors meaning "this file system does not sync that way", not "your data is lost".
_NO_SYNC = {errno.EINVAL, errno.EBADF,  # EBADF: Windows will not fsync a read-only handle
            getattr(errno, "ENOTSUP", errno.EINVAL), getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def _fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk; a real write error (EIO, ENOSPC) propagates."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except PermissionError:  # the caller made it unreadable to itself: nothing to sync through
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_SYNC:
            raise
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Best effort: make the rename itself durable (not possible on every platform / file system)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_rows(rows: Sequence[dict], fmt: str, out: str | None, columns: Sequence[str]) -> None:
    """Write dict rows as table/json/csv/parquet to ``out`` (atomically) or to stdout."""
    if fmt not in FORMATS:
        raise PrunetaxError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        if not out:
            raise PrunetaxError("--format parquet needs --out FILE.parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(list(rows), schema=None) if rows else pa.table(
            {c: pa.array([], pa.string()) for c in columns})
        with atomic_path(out) as tmp:
            pq.write_table(table.select(list(columns)), tmp)
        return
    if out:
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
            _write_text(rows, fmt, fh, columns)
    else:
        _write_text(rows, fmt, sys.stdout, columns)


def _write_text(rows, fmt, fh, columns) -> None:
    if fmt == "json":
        json.dump(list(rows), fh, indent=1)
        fh.write("\n")
    elif fmt == "csv":
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        fh.write(format_table(rows, columns))


def jsonable(value):
    """``value`` (rows, dicts, lists, numbers) with NaN and infinities as None, so that the
    JSON written is standard (``json.dumps`` would write ``NaN``, which JSON parsers refuse)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text(text: str, out: str | None) -> None:
    """``text`` to ``out`` (atomically) or, without ``out``, to stdout."""
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def write_parquet(table, out: str | None, metadata: dict | None = None) -> None:
    """A pyarrow ``table`` to ``out`` (atomically; required), with string ``metadata`` added to its schema."""
    if not out:
        raise PrunetaxError("--format parquet needs --out FILE.parquet")
    import pyarrow.parquet as pq

    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k: str(v) for k, v in metadata.items()}})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def format_markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown (GitHub) table; None as an empty cell, '|' escaped."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(("" if r.get(c) is None else str(r.get(c))).replace("|", "\\|") for c in columns)
              + " |" for r in rows]
    return "\n".join(lines) + "\n"


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"
