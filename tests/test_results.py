"""Results datasets and leaderboards, on hand-built CellResults with written numbers."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prunetax.benchmarks as benchmarks
from prunetax.benchmarks.cell import SCHEMA_VERSION, Cell, CellResult, Protocol
from prunetax.benchmarks.results import (ROW_COLUMNS, SCORES_SCHEMA, TRAJECTORIES_SCHEMA, TRAJECTORY_COLUMNS,
                                         cell_done, cell_path, leaderboard, read_scores, read_trajectories,
                                         score_row, trajectory_rows, write_cell_result)
from prunetax.taxonomy.errors import PrunetaxError

COMPONENTS = {"weight-value-l1-none": ("weight", "value", "l1", "none", "channel", "per_image"),
              "activation-value-l2-elements": ("activation", "value", "l2", "elements", "channel", "per_image")}


def row(cell: Cell, metric: str, rate: float | None, **kw) -> dict:
    comp = COMPONENTS.get(metric, (None,) * 6)
    r = {c: None for c in ROW_COLUMNS}
    r.update(cell_id=cell.id, metric_id=metric, kind="spec" if metric in COMPONENTS else "reference",
             base_input=comp[0], pointwise=comp[1], reduction=comp[2], scaling=comp[3], structure=comp[4],
             aggregation=comp[5], network=cell.network, dataset=cell.dataset, seed=cell.seed,
             threshold=cell.protocol.threshold, threshold_mode="absolute", baseline_accuracy=90.0 + cell.seed,
             conv_weights_removed_pct=rate, channels_removed_pct=None if rate is None else rate / 2,
             macs_removed_pct=None if rate is None else rate / 3, steps=7, crossed=rate is not None,
             final_accuracy=80.5, ran_as=metric, schedule="fast", mode="none",
             protocol=json.dumps(cell.protocol.to_dict(), sort_keys=True), prunetax_version="0.1.0",
             torch_version="2.x", device="cpu", wall_seconds=1.25)
    r.update(kw)
    return r


def traj(cell: Cell, metric: str, steps: int = 3) -> list[dict]:
    return [{"cell_id": cell.id, "metric_id": metric, "network": cell.network, "dataset": cell.dataset,
             "seed": cell.seed, "step": s, "unit": 10 + s, "conv_weights_removed_pct": 5.0 * s,
             "channels_removed_pct": 2.0 * s, "macs_removed_pct": 3.0 * s,
             "accuracy": None if s == 1 else 90.0 - s} for s in range(steps)]


def result(cell: Cell, rates: dict[str, float | None]) -> CellResult:
    return CellResult(cell, [row(cell, m, v) for m, v in rates.items()],
                      [t for m in rates for t in traj(cell, m)], 2.5)


def cell(net="lenet5", data="mnist", seed=0, metrics=("weight-value-l1-none", "random"), **proto) -> Cell:
    return Cell(net, data, seed, tuple(metrics), Protocol(**proto))


# Written numbers: rate of each metric per seed on lenet5/mnist.
RATES = {
    "weight-value-l1-none": [40.0, 44.0, 45.0],
    "activation-value-l2-elements": [50.0, 52.0, 60.0],
    "random": [10.0, 20.0, 30.0],
    "oracle": [70.0, 71.0, 75.0],
}


def write_grid(root, rates=RATES, net="lenet5", data="mnist"):
    for seed in range(3):
        c = cell(net, data, seed, metrics=tuple(rates))
        write_cell_result(root, result(c, {m: v[seed] for m, v in rates.items()}))


def test_write_read_round_trip_with_types_and_metadata(tmp_path):
    c = cell(seed=3)
    write_cell_result(tmp_path, result(c, {"weight-value-l1-none": 42.5, "random": None}))
    path = cell_path(tmp_path, c)
    assert path == tmp_path / "scores" / "network=lenet5" / "dataset=mnist" / f"{c.id}.parquet"
    meta = pq.read_schema(path).metadata
    assert meta[b"prunetax_schema_version"].decode() == SCHEMA_VERSION
    assert json.loads(meta[b"prunetax_cell"]) == c.to_dict()
    scores = read_scores(tmp_path)
    assert scores.column_names == list(ROW_COLUMNS)
    types = {f.name: f.type for f in scores.schema}
    assert types["seed"] == pa.int64() and types["steps"] == pa.int64() and types["crossed"] == pa.bool_()
    assert types["conv_weights_removed_pct"] == pa.float64() and types["network"] == pa.string()
    got = {r["metric_id"]: r for r in scores.to_pylist()}
    assert got["weight-value-l1-none"]["conv_weights_removed_pct"] == 42.5
    assert got["weight-value-l1-none"]["channels_removed_pct"] == 21.25
    assert got["random"]["conv_weights_removed_pct"] is None and got["random"]["crossed"] is False
    assert got["random"]["network"] == "lenet5" and got["random"]["dataset"] == "mnist" and got["random"]["seed"] == 3
    t = read_trajectories(tmp_path)
    assert t.column_names == list(TRAJECTORY_COLUMNS) and t.num_rows == 6
    assert sorted(t.column("accuracy").to_pylist(), key=lambda v: -1 if v is None else v) == \
        [None, None, 88.0, 88.0, 90.0, 90.0]


def test_schemas_are_the_published_ones():
    """Column names, order and types as written by every earlier version (docs/results.md):
    existing results folders must keep reading. New columns go at the end."""
    S, I, F, B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    scores = [("cell_id", S), ("metric_id", S), ("kind", S), ("base_input", S), ("pointwise", S),
              ("reduction", S), ("scaling", S), ("structure", S), ("aggregation", S), ("network", S),
              ("dataset", S), ("seed", I), ("threshold", F), ("threshold_mode", S), ("baseline_accuracy", F),
              ("conv_weights_removed_pct", F), ("channels_removed_pct", F), ("macs_removed_pct", F),
              ("steps", I), ("crossed", B), ("final_accuracy", F), ("ran_as", S), ("schedule", S), ("mode", S),
              ("protocol", S), ("prunetax_version", S), ("torch_version", S), ("device", S), ("wall_seconds", F)]
    trajectories = [("cell_id", S), ("metric_id", S), ("network", S), ("dataset", S), ("seed", I), ("step", I),
                    ("unit", I), ("conv_weights_removed_pct", F), ("channels_removed_pct", F),
                    ("macs_removed_pct", F), ("accuracy", F)]
    assert [(f.name, f.type) for f in SCORES_SCHEMA] == scores
    assert [(f.name, f.type) for f in TRAJECTORIES_SCHEMA] == trajectories
    assert ROW_COLUMNS == tuple(n for n, _ in scores) and TRAJECTORY_COLUMNS == tuple(n for n, _ in trajectories)


def test_row_builders_by_hand(tmp_path):
    from prunetax.benchmarks.protocol import Trajectory
    from prunetax.taxonomy import parse_metric

    c = cell(metrics=("filter_l1", "random"), threshold=2.0, relative=True)
    named = Trajectory("filter_l1", parse_metric("filter_l1"), "weight-value-l1-none")
    named.removed, named.step_end = [4, 7, 9], [0, 1, 3]
    named.rates = [(0.0, 0.0, 0.0), (10.0, 5.0, 8.0), (30.0, 15.0, 20.0)]
    named.accuracy, named.crossed = {0: 90.0, 2: 80.0}, True
    ref = Trajectory("random", "random", "random")
    r = score_row(c, named, (25.0, 12.5, 17.0), 2, 90.0, "cpu", 3.5)
    assert list(r) == list(ROW_COLUMNS)
    assert (r["kind"], r["base_input"], r["structure"], r["ran_as"]) == ("named", "weight", "channel",
                                                                       "weight-value-l1-none")
    assert (r["threshold"], r["threshold_mode"], r["baseline_accuracy"]) == (2.0, "relative", 90.0)
    assert (r["conv_weights_removed_pct"], r["channels_removed_pct"], r["macs_removed_pct"]) == (25.0, 12.5, 17.0)
    assert (r["steps"], r["crossed"], r["final_accuracy"], r["device"], r["wall_seconds"]) == (2, True, 80.0, "cpu", 3.5)
    assert json.loads(r["protocol"]) == c.protocol.to_dict() and r["cell_id"] == c.id
    rr = score_row(c, ref, (0.0, 0.0, 0.0), 0, 90.0, "cpu", 3.5)
    assert rr["kind"] == "reference" and rr["base_input"] is None and rr["final_accuracy"] is None
    rows = trajectory_rows(c, named)
    assert [list(x) for x in rows] == [list(TRAJECTORY_COLUMNS)] * 2
    assert [(x["step"], x["unit"], x["conv_weights_removed_pct"], x["accuracy"]) for x in rows] == \
        [(1, 4, 10.0, None), (2, 7, 30.0, 80.0)]               # unit: the step's first; accuracy when measured
    write_cell_result(tmp_path, CellResult(c, [r, rr], rows, 3.5))
    assert read_scores(tmp_path).num_rows == 2 and read_trajectories(tmp_path).num_rows == 2


def test_pandas_reads_both_datasets(tmp_path):
    write_grid(tmp_path)
    df = pd.read_parquet(tmp_path / "scores")
    assert len(df) == 12 and set(df["network"].astype(str)) == {"lenet5"}
    mean = df[df.metric_id == "random"]["conv_weights_removed_pct"].mean()
    assert mean == pytest.approx(20.0)
    tdf = pd.read_parquet(tmp_path / "trajectories")
    assert len(tdf) == 12 * 3 and set(tdf["dataset"].astype(str)) == {"mnist"}


def test_odd_dataset_names_round_trip(tmp_path):
    c = cell(data="imagefolder:/data/my images")
    write_cell_result(tmp_path, result(c, {"random": 12.0}))
    assert cell_done(tmp_path, c)
    assert read_scores(tmp_path).column("dataset").to_pylist() == ["imagefolder:/data/my images"]
    assert pd.read_parquet(tmp_path / "scores")["dataset"].astype(str).tolist() == ["imagefolder:/data/my images"]


def test_temp_files_are_ignored(tmp_path):
    write_grid(tmp_path)
    folder = tmp_path / "scores" / "network=lenet5" / "dataset=mnist"
    (folder / ".half-written.parquet.abc.tmp").write_bytes(b"PAR1 not a parquet file")
    (folder / ".x.parquet").write_bytes(pq_bytes(pa.table({"cell_id": ["ghost"]})))
    assert read_scores(tmp_path).num_rows == 12
    assert len(pd.read_parquet(tmp_path / "scores")) == 12


def pq_bytes(table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_scores_written_last_and_failure_leaves_cell_incomplete(tmp_path, monkeypatch):
    c = cell()
    calls = []
    real = pq.write_table

    def flaky(table, where, **kw):
        calls.append(str(where))
        if len(calls) == 2:
            raise OSError("disk full")
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", flaky)
    with pytest.raises(OSError):
        write_cell_result(tmp_path, result(c, {"random": 1.0}))
    assert "trajectories" in calls[0] and "scores" in calls[1]
    assert not cell_done(tmp_path, c)
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # the temp file was removed
    monkeypatch.setattr(pq, "write_table", real)
    write_cell_result(tmp_path, result(c, {"random": 1.0}))
    assert cell_done(tmp_path, c)


def test_rewriting_a_cell_replaces_it(tmp_path):
    c = cell()
    write_cell_result(tmp_path, result(c, {"weight-value-l1-none": 10.0, "random": 5.0}))
    write_cell_result(tmp_path, result(c, {"weight-value-l1-none": 10.0, "random": 5.0}))
    assert read_scores(tmp_path).num_rows == 2
    assert read_trajectories(tmp_path).num_rows == 6


def test_bad_row_type_is_one_line_error(tmp_path):
    c = cell()
    r = result(c, {"random": 1.0})
    r.rows[0]["steps"] = "seven"
    with pytest.raises(PrunetaxError, match="steps"):
        write_cell_result(tmp_path, r)
    assert not (tmp_path / "scores").exists()


def test_leaderboard_statistics_by_hand(tmp_path):
    write_grid(tmp_path)
    board = benchmarks.leaderboard(tmp_path)  # the public name
    rows = board.to_pylist()
    assert [r["metric_id"] for r in rows] == ["oracle", "activation-value-l2-elements", "weight-value-l1-none",
                                              "random"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    by = {r["metric_id"]: r for r in rows}
    # hand computation: weight-value-l1-none 40, 44, 45
    mean = (40 + 44 + 45) / 3
    std = math.sqrt(((40 - mean) ** 2 + (44 - mean) ** 2 + (45 - mean) ** 2) / 2)
    w = by["weight-value-l1-none"]
    assert w["mean"] == pytest.approx(mean) and w["std"] == pytest.approx(std)
    assert w["pm2sigma"] == pytest.approx(2 * std) and w["n_seeds"] == 3
    assert w["gap_to_oracle"] == pytest.approx(72.0 - mean)
    assert by["oracle"]["gap_to_oracle"] == 0.0
    assert by["random"]["std"] == pytest.approx(10.0) and by["random"]["mean"] == pytest.approx(20.0)
    assert w["baseline_accuracy"] == pytest.approx(91.0)
    assert w["network"] == "lenet5" and w["dataset"] == "mnist"
    assert w["reduction"] == "l1" and w["kind"] == "spec"


def test_leaderboard_groups_top_and_no_oracle(tmp_path):
    write_grid(tmp_path)
    write_grid(tmp_path, {"random": [1.0, 2.0, 6.0], "weight-value-l1-none": [9.0, 9.0, 9.0]}, net="nin")
    rows = leaderboard(tmp_path, top=1).to_pylist()
    assert [(r["network"], r["metric_id"]) for r in rows] == [("lenet5", "oracle"),
                                                              ("nin", "weight-value-l1-none")]
    nin = leaderboard(tmp_path).filter(pa.compute.equal(pa.compute.field("network"), "nin")).to_pylist()
    assert all(r["gap_to_oracle"] is None for r in nin)
    assert nin[0]["std"] == 0.0 and nin[1]["mean"] == pytest.approx(3.0)
    assert nin[1]["std"] == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1))
    pooled = {r["metric_id"]: r for r in leaderboard(tmp_path, by=()).to_pylist()}
    assert pooled["random"]["mean"] == pytest.approx(np.mean([10, 20, 30, 1, 2, 6]))
    assert pooled["random"]["n_runs"] == 6 and pooled["random"]["n_seeds"] == 3


def test_leaderboard_one_seed_has_zero_spread(tmp_path):
    write_cell_result(tmp_path, result(cell(), {"weight-value-l1-none": 33.0, "random": 11.0}))
    by = {r["metric_id"]: r for r in leaderboard(tmp_path).to_pylist()}
    assert by["random"]["std"] == 0.0 and by["random"]["pm2sigma"] == 0.0 and by["random"]["n_seeds"] == 1


def test_leaderboard_keeps_protocols_apart(tmp_path):
    write_cell_result(tmp_path, result(cell(threshold=5.0), {"random": 10.0}))
    write_cell_result(tmp_path, result(cell(threshold=2.0), {"random": 30.0}))
    rows = leaderboard(tmp_path).to_pylist()
    assert sorted((r["threshold"], r["mean"]) for r in rows) == [(2.0, 30.0), (5.0, 10.0)]


def test_leaderboard_errors(tmp_path):
    with pytest.raises(PrunetaxError, match="does not exist"):
        leaderboard(tmp_path / "nope")
    with pytest.raises(PrunetaxError, match="cannot group by 'colour'"):
        leaderboard(tmp_path, by=("colour",))
    assert leaderboard(tmp_path).num_rows == 0
