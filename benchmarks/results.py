"""Results datasets: one Parquet file per cell in two hive-partitioned datasets, and leaderboards.

Layout (docs/results.md)::

    RESULTS/scores/network=<n>/dataset=<d>/<cell>.parquet        one row per metric
    RESULTS/trajectories/network=<n>/dataset=<d>/<cell>.parquet  one row per step of each metric

``network`` and ``dataset`` live in the folder names only (hive partitions), so pyarrow, pandas,
polars and DuckDB read either folder as one table with those columns added. Each file is written
under a temporary name starting with '.' (which every Parquet dataset reader skips) and renamed;
the trajectories file is written first and the scores file last, so a cell is complete iff its
scores file exists.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pyarrow as pa

from prunetax.benchmarks.cell import SCHEMA_VERSION, Cell, CellResult, Protocol
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.vocab import AXES

if TYPE_CHECKING:
    import torch

__all__ = ["SCORE_FIELDS", "TRAJECTORY_FIELDS", "ROW_COLUMNS", "TRAJECTORY_COLUMNS", "SCORES_SCHEMA",
           "TRAJECTORIES_SCHEMA", "RowFacts", "score_row", "trajectory_rows", "row_protocol", "write_cell_result",
           "read_scores", "read_trajectories", "cell_done", "cell_path", "leaderboard", "LEADERBOARD_COLUMNS",
           "recipe_hash"]

PARTITIONS = ("network", "dataset")
_STR, _INT, _FLT, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()

# The two tables, column by column, in their order: a column is added here and in the row builder
# below (``score_row`` / ``trajectory_rows``), nowhere else. Existing results folders must keep
# reading: append new columns, never reorder or retype these.
SCORE_FIELDS: tuple[tuple[str, pa.DataType], ...] = (       # one row per metric of a cell
    ("cell_id", _STR), ("metric_id", _STR), ("kind", _STR),
    ("base_input", _STR), ("pointwise", _STR), ("reduction", _STR), ("scaling", _STR), ("structure", _STR),
    ("aggregation", _STR),
    ("network", _STR), ("dataset", _STR), ("seed", _INT),
    ("threshold", _FLT), ("threshold_mode", _STR), ("baseline_accuracy", _FLT),
    ("conv_weights_removed_pct", _FLT), ("channels_removed_pct", _FLT), ("macs_removed_pct", _FLT),
    ("steps", _INT), ("crossed", _BOOL), ("final_accuracy", _FLT), ("ran_as", _STR),
    ("schedule", _STR), ("mode", _STR), ("protocol", _STR),
    ("prunetax_version", _STR), ("torch_version", _STR), ("device", _STR), ("wall_seconds", _FLT),
    ("baseline_digest", _STR), ("recipe_hash", _STR), ("recipe", _STR),  # null in folders written before them
    ("test_images_evaluated", _INT), ("test_images_exhaustive", _INT),   # the cell's test image-passes
)
TRAJECTORY_FIELDS: tuple[tuple[str, pa.DataType], ...] = (  # one row per pruning step of each metric
    ("cell_id", _STR), ("metric_id", _STR), ("network", _STR), ("dataset", _STR), ("seed", _INT),
    ("step", _INT), ("unit", _INT),
    ("conv_weights_removed_pct", _FLT), ("channels_removed_pct", _FLT), ("macs_removed_pct", _FLT),
    ("accuracy", _FLT),
    ("test_images", _INT), ("test_correct", _INT),     # null in folders written before them
)
ROW_COLUMNS = tuple(name for name, _ in SCORE_FIELDS)
TRAJECTORY_COLUMNS = tuple(name for name, _ in TRAJECTORY_FIELDS)

# Full schemas of the datasets as read back (partition columns included, in the order above).
SCORES_SCHEMA = pa.schema(SCORE_FIELDS)
TRAJECTORIES_SCHEMA = pa.schema(TRAJECTORY_FIELDS)
# Schemas of the files themselves: the partition columns live in the folder names.
_FILE_SCORES = pa.schema([f for f in SCORES_SCHEMA if f.name not in PARTITIONS])
_FILE_TRAJ = pa.schema([f for f in TRAJECTORIES_SCHEMA if f.name not in PARTITIONS])
_PARTITION_SCHEMA = pa.schema([(p, _STR) for p in PARTITIONS])


def recipe_hash(recipe) -> str:
    """First 16 hex of the sha256 of the recipe's sorted JSON (``recipe``: a Recipe or its dict).

    A field added to Recipe later counts only when set (as in ``training.cache_key``), so the
    hash of a recipe does not change when the Recipe type grows."""
    from prunetax.benchmarks.recipes import KEYED_WHEN_SET

    fields = dataclasses.asdict(recipe) if dataclasses.is_dataclass(recipe) else dict(recipe)
    fields = {k: v for k, v in fields.items() if not (k in KEYED_WHEN_SET and v == KEYED_WHEN_SET[k])}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _baseline_columns(info: dict | None) -> dict:
    """``baseline_digest``, ``recipe_hash``, ``recipe`` of a baseline's info (None where unknown)."""
    info = info or {}
    recipe = info.get("recipe")
    if dataclasses.is_dataclass(recipe):
        recipe = dataclasses.asdict(recipe)
    return {"baseline_digest": info.get("digest"),
            "recipe_hash": recipe_hash(recipe) if recipe is not None else None,
            "recipe": json.dumps(recipe, sort_keys=True) if recipe is not None else None}


@dataclasses.dataclass(frozen=True)
class RowFacts:
    """What the scores rows of one cell record besides its trajectories: where and how long it ran,
    on which baseline, with how many image-passes.

    ``device``: the device the cell ran on (its ``str`` fills ``device``); ``wall_seconds``: the
    cell's wall time; ``info``: the baseline's info (``train_baseline``'s: its ``digest`` and
    ``recipe`` fill ``baseline_digest``, ``recipe_hash`` and ``recipe``; None leaves them null);
    ``work``: the cell's image-passes (its ``test_images`` and ``test_images_exhaustive`` fill
    ``test_images_evaluated`` and ``test_images_exhaustive``; None leaves them null).
    """
    device: torch.device | str
    wall_seconds: float
    info: dict | None = None
    work: dict | None = None


def score_row(cell: Cell, trajectory, crossing, steps: int, baseline: float, facts: RowFacts) -> dict:
    """The scores row of one metric of ``cell``: ``trajectory`` (``protocol.Trajectory``) read at
    ``crossing`` (conv %, channels %, MACs % where accuracy crossed the target, or the final rate),
    reached at step ``steps``; ``baseline``: the baseline's test accuracy; ``facts``: the cell's
    device, wall time, baseline info and image-passes (``RowFacts``)."""
    import torch

    from prunetax.benchmarks._version import __version__
    from prunetax.taxonomy.expr import MetricExpr
    from prunetax.taxonomy.spec import MetricSpec

    t, p, work = trajectory, cell.protocol, facts.work
    comps = dict.fromkeys(AXES)
    if isinstance(t.metric, MetricSpec):
        kind = "spec"
        comps = dict(zip(AXES, t.metric.components()))
    elif isinstance(t.metric, MetricExpr):
        kind = "expression"
    else:
        kind = "reference"
    if kind != "reference" and "-" not in t.name and "*" not in t.name:
        kind = "named"
    last = max(t.accuracy) if t.accuracy else 0
    row = {"cell_id": cell.id, "metric_id": t.name, "kind": kind, **comps,
           "network": cell.network, "dataset": cell.dataset, "seed": cell.seed,
           "threshold": p.threshold, "threshold_mode": "relative" if p.relative else "absolute",
           "baseline_accuracy": baseline, "conv_weights_removed_pct": crossing[0],
           "channels_removed_pct": crossing[1], "macs_removed_pct": crossing[2], "steps": steps,
           "crossed": t.crossed, "final_accuracy": t.accuracy.get(last), "ran_as": t.ran_as,
           "schedule": p.schedule, "mode": p.mode, "protocol": json.dumps(p.to_dict(), sort_keys=True),
           "prunetax_version": __version__, "torch_version": torch.__version__,
           "device": str(facts.device), "wall_seconds": facts.wall_seconds, **_baseline_columns(facts.info),
           "test_images_evaluated": None if work is None else work["test_images"],
           "test_images_exhaustive": None if work is None else work["test_images_exhaustive"]}
    return _in_order(row, ROW_COLUMNS)


def trajectory_rows(cell: Cell, trajectory) -> list[dict]:
    """The trajectories rows of one metric of ``cell``: one per pruning step (``unit``: the step's
    first unit, -1 if none). ``accuracy``: on the whole test set, None on steps the schedule did
    not test or the sequential test decided on part of it; ``test_images`` / ``test_correct``:
    the images the step's test read and how many it got right (None when not tested)."""
    t = trajectory
    tested = getattr(t, "tested", {})
    out = []
    for s in range(1, len(t.rates)):
        units = t.removed[t.step_end[s - 1]:t.step_end[s]]
        out.append(_in_order({
            "cell_id": cell.id, "metric_id": t.name, "network": cell.network, "dataset": cell.dataset,
            "seed": cell.seed, "step": s, "unit": units[0] if units else -1,
            "conv_weights_removed_pct": t.rates[s][0], "channels_removed_pct": t.rates[s][1],
            "macs_removed_pct": t.rates[s][2], "accuracy": t.accuracy.get(s),
            "test_images": tested.get(s, (None, None))[1], "test_correct": tested.get(s, (None, None))[0]},
            TRAJECTORY_COLUMNS))
    return out


def _in_order(row: dict, columns: tuple[str, ...]) -> dict:
    """``row`` with exactly ``columns``, in their order (a builder that misses one fails here)."""
    if row.keys() != set(columns):
        raise AssertionError(f"row columns {sorted(set(row) ^ set(columns))} differ from the table's")
    return {c: row[c] for c in columns}


def _segment(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")  # hive readers decode URI escapes (pyarrow's default)


def _file_name(cell_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", cell_id).lstrip(".") + ".parquet"


def cell_path(root, cell: Cell, which: str = "scores") -> Path:
    """Where ``cell``'s ``scores`` or ``trajectories`` file lives under ``root``."""
    if which not in ("scores", "trajectories"):
        raise PrunetaxError(f"unknown results dataset {which!r}; choose scores or trajectories")
    return (Path(root) / which / f"network={_segment(cell.network)}" / f"dataset={_segment(cell.dataset)}"
            / _file_name(cell.id))


def cell_done(root, cell: Cell) -> bool:
    """True when ``cell``'s scores file (written last) exists under ``root``."""
    return cell_path(root, cell, "scores").is_file()


def check_done_recipe(root, cell: Cell) -> None:
    """A done cell's scores were computed on a baseline of the recipe its model has now, or say
    which file to remove. ``Cell.id`` holds the grid's epochs and train_limit, not the recipe a
    model declares (``register_model(recipe=...)``), so a changed recipe (a new rate, clipping)
    would otherwise leave an old cell counted as done beside new ones. Files written before the
    ``recipe_hash`` column, or with it null, are not checked."""
    import pyarrow.parquet as pq

    from prunetax.benchmarks.baseline import recipe_for

    path = cell_path(root, cell, "scores")
    try:
        column = pq.read_table(path, columns=["recipe_hash"]).column("recipe_hash")
        recorded = {h for h in column.to_pylist() if h}
    except (KeyError, pa.ArrowInvalid):  # no such column: an older file
        return
    limit = {"limit": cell.train_limit} if cell.train_limit is not None else {}
    recipe = recipe_for(cell.network, cell.dataset, cell.epochs, **limit)
    now = recipe_hash(recipe)
    if recorded and recorded != {now}:
        raise PrunetaxError(
            f"{path} was computed on a {cell.network} baseline of another recipe (hash {', '.join(sorted(recorded))}) "
            f"than its recipe now (hash {now}: {_recipe_words(recipe)}); remove that file and its trajectories "
            f"to recompute the cell, or give a new --results folder")


def _recipe_words(recipe) -> str:
    return ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(recipe).items()
                     if k in ("epochs", "lr", "clip_grad_norm", "limit") and v is not None)


def _table(records: Sequence[dict], schema: pa.Schema, cell: Cell, what: str) -> pa.Table:
    cols = {}
    for f in schema:
        try:
            cols[f.name] = pa.array([_clean(r.get(f.name)) for r in records], f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise PrunetaxError(f"cell {cell.id}: {what} column {f.name!r} does not fit {f.type}: {exc}") from None
    meta = {"prunetax_schema_version": SCHEMA_VERSION, "prunetax_cell": json.dumps(cell.to_dict(), sort_keys=True)}
    return pa.table(cols, schema=schema.with_metadata(meta))


def _clean(v):
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):  # numpy / torch scalars
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def write_cell_result(root, result: CellResult) -> tuple[Path, Path]:
    """Write ``result`` atomically: trajectories first, scores last. Returns both paths."""
    import pyarrow.parquet as pq

    from prunetax.benchmarks.io import atomic_path

    cell = result.cell
    for r in list(result.rows) + list(result.trajectories):
        for key, want in (("network", cell.network), ("dataset", cell.dataset)):
            if r.get(key, want) != want:
                raise PrunetaxError(f"cell {cell.id}: a row has {key}={r.get(key)!r}, the cell {want!r}")
    traj = _table(result.trajectories, _FILE_TRAJ, cell, "trajectory")
    scores = _table(result.rows, _FILE_SCORES, cell, "score")
    paths = cell_path(root, cell, "trajectories"), cell_path(root, cell, "scores")
    for table, path in zip((traj, scores), paths):
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    return paths


def _read(root, which: str, schema: pa.Schema, file_schema: pa.Schema) -> pa.Table:
    import pyarrow.dataset as ds

    folder = Path(root) / which
    if not folder.is_dir() and Path(root).exists() and not Path(root).is_dir():
        raise PrunetaxError(f"results folder {str(root)!r} is a file; give the folder bench wrote")
    if not folder.is_dir():
        if not Path(root).is_dir():
            raise PrunetaxError(f"results folder {str(root)!r} does not exist")
        return schema.empty_table()
    part = ds.partitioning(_PARTITION_SCHEMA, flavor="hive")
    full = pa.schema(list(file_schema) + list(_PARTITION_SCHEMA))
    try:
        table = ds.dataset(folder, format="parquet", partitioning=part, schema=full).to_table()
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrunetaxError(f"cannot read {folder}: {str(exc).splitlines()[0]}") from None
    return table.select(schema.names).cast(schema)


def read_scores(root) -> pa.Table:
    """Every complete cell's rows under ``root`` (columns ``ROW_COLUMNS``)."""
    return _read(root, "scores", SCORES_SCHEMA, _FILE_SCORES)


def read_trajectories(root) -> pa.Table:
    """Every written trajectory row under ``root`` (columns ``TRAJECTORY_COLUMNS``)."""
    return _read(root, "trajectories", TRAJECTORIES_SCHEMA, _FILE_TRAJ)


def row_protocol(row: dict) -> Protocol | None:
    """The protocol a scores row (or a leaderboard row) was computed under: its ``protocol``
    column read back, or, where that is null or holds options this version does not know, a
    protocol of its ``threshold`` and ``threshold_mode`` (all the accuracy target needs); None
    when neither is recorded."""
    text = row.get("protocol")
    if text is not None:
        try:
            return Protocol.from_dict(json.loads(text))
        except (ValueError, TypeError, PrunetaxError):
            pass
    if row.get("threshold") is None:
        return None
    return Protocol(threshold=row["threshold"], relative=row.get("threshold_mode") == "relative")


# The leaderboard lives in benchmarks/ranking/ (which reads no files: this reads them for it).
from prunetax.benchmarks.ranking import CONFIDENCE, LEADERBOARD_COLUMNS, rank_scores  # noqa: E402


def leaderboard(results_dir, by: Sequence[str] = ("network", "dataset"), top: int | None = None,
                versus: str | None = None, confidence: float = CONFIDENCE) -> pa.Table:
    """The metrics of ``results_dir`` ranked per group (``prunetax.benchmarks.ranking.rank_scores``;
    ``versus``: each metric's paired difference against a reference, its t interval at
    ``confidence``, as there)."""
    return rank_scores(read_scores(results_dir), by, top, source=str(results_dir), versus=versus,
                       confidence=confidence)
