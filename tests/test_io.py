"""atomic_path: files get the user's umask, a failure leaves nothing, and every writer goes through it."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import stat

import pytest

from prunetax.benchmarks.io import atomic_path, write_rows
from prunetax.taxonomy.errors import PrunetaxError


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_file_gets_the_umask(tmp_path, mask, want):
    target = tmp_path / "out" / "table.csv"
    with umask(mask):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".") and tmp.exists()
            assert mode(tmp) == want  # already while the caller writes it
            tmp.write_text("a,b\n")
    assert target.read_text() == "a,b\n" and mode(target) == want
    assert os.listdir(target.parent) == ["table.csv"]  # no temporary left


def test_write_rows_and_overwrite_keep_the_umask(tmp_path):
    target = tmp_path / "rows.json"
    target.write_text("old")
    os.chmod(target, 0o600)  # the old file's mode is not inherited: the new one is created fresh
    with umask(0o022):
        write_rows([{"a": 1}], "json", str(target), ["a"])
    assert mode(target) == 0o644 and '"a": 1' in target.read_text()


def test_exception_leaves_no_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.parquet"
    with pytest.raises(ValueError, match="half"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("half written")
    assert list(tmp_path.iterdir()) == []
    target.write_text("before")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("after")
            raise KeyboardInterrupt
    assert target.read_text() == "before" and os.listdir(tmp_path) == ["x.parquet"]


def test_temporary_names_are_unique_and_hidden(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_path(target) as t1, atomic_path(target) as t2:
        assert t1 != t2 and t1.name.startswith(".a.txt.") and t2.name.startswith(".a.txt.")
        t1.write_text("one")
        t2.write_text("two")
    assert target.read_text() == "one" and os.listdir(tmp_path) == ["a.txt"]  # the last rename (outer) wins
    long = tmp_path / ("n" * 250)
    with atomic_path(long) as tmp:  # the temporary name stays under the 255-byte limit
        tmp.write_text("x")
    assert long.read_text() == "x"


def test_fsync_before_rename(tmp_path, monkeypatch):
    """The data is fsynced (through a reopened handle) before the rename, then the folder."""
    import prunetax.benchmarks.io as io_mod
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io_mod.os, "fsync", lambda fd: (events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode))),
                                                         real_fsync(fd))[1])
    monkeypatch.setattr(io_mod.os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b))[1])
    with atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("data")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]


def test_folder_target_is_an_error(tmp_path):
    with pytest.raises(PrunetaxError, match="is a folder"):
        with atomic_path(tmp_path):
            pass


def test_results_parquet_is_readable_by_others(tmp_path):
    from prunetax.benchmarks.cell import Cell, CellResult
    from prunetax.benchmarks.results import ROW_COLUMNS, cell_path, read_scores, write_cell_result

    c = Cell("lenet5", "mnist", 0, ("random",))
    row = {**dict.fromkeys(ROW_COLUMNS), "cell_id": c.id, "metric_id": "random", "network": "lenet5",
           "dataset": "mnist", "seed": 0, "conv_weights_removed_pct": 12.0}
    with umask(0o022):
        write_cell_result(tmp_path, CellResult(c, [row], [], 1.0))
    assert mode(cell_path(tmp_path, c, "scores")) == 0o644 and mode(cell_path(tmp_path, c, "trajectories")) == 0o644
    assert mode(cell_path(tmp_path, c).parent) == 0o755
    assert read_scores(tmp_path).column("conv_weights_removed_pct").to_pylist() == [12.0]


def test_cached_baseline_is_readable_by_others(tmp_path):
    """model.pt and info.json of a tiny baseline (256 images, one epoch) are 0644 under umask 022."""
    from prunetax.benchmarks.data import load_dataset
    from prunetax.benchmarks.setup import Env
    from prunetax.benchmarks.training import train_baseline

    full = load_dataset("mnist")
    small = dataclasses.replace(full, test_x=full.test_x[:200], test_y=full.test_y[:200],
                                eval_x=full.eval_x[:200], eval_y=full.eval_y[:200])
    with umask(0o022):
        _, info = train_baseline("lenet5", small, 0, epochs=1, env=Env(device="cpu", cache_dir=tmp_path),
                                 progress=False, limit=256)
    entry = os.path.dirname(info["path"])
    assert sorted(os.listdir(entry)) == ["info.json", "model.pt"]
    assert mode(os.path.join(entry, "model.pt")) == 0o644 and mode(os.path.join(entry, "info.json")) == 0o644
    assert mode(entry) == 0o755
