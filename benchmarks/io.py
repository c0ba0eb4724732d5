"""Output files that are never half-written: write to a temporary name beside the target, then rename."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from prunetax.taxonomy.errors import PrunetaxError

FORMATS = ("table", "json", "csv", "parquet")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only on success."""
    target = Path(path)
    if target.is_dir():
        raise PrunetaxError(f"output path {str(target)!r} is a folder; give a file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"
