"""Results datasets and leaderboards, on hand-built CellResults with written numbers."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prunetax.benchmarks as benchmarks
from prunetax.benchmarks.cell import SCHEMA_VERSION, Cell, CellResult, Protocol
from prunetax.benchmarks.training import recipe_for
from prunetax.benchmarks.results import (LEADERBOARD_COLUMNS, ROW_COLUMNS, SCORES_SCHEMA, TRAJECTORIES_SCHEMA,
                                         TRAJECTORY_COLUMNS, RowFacts, cell_done, cell_path, leaderboard,
                                         read_scores, read_trajectories, recipe_hash, row_protocol, score_row,
                                         trajectory_rows, write_cell_result)
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
              ("protocol", S), ("prunetax_version", S), ("torch_version", S), ("device", S), ("wall_seconds", F),
              ("baseline_digest", S), ("recipe_hash", S), ("recipe", S),
              ("test_images_evaluated", I), ("test_images_exhaustive", I)]
    trajectories = [("cell_id", S), ("metric_id", S), ("network", S), ("dataset", S), ("seed", I), ("step", I),
                    ("unit", I), ("conv_weights_removed_pct", F), ("channels_removed_pct", F),
                    ("macs_removed_pct", F), ("accuracy", F), ("test_images", I), ("test_correct", I)]
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
    r = score_row(c, named, (25.0, 12.5, 17.0), 2, 90.0, RowFacts("cpu", 3.5))
    assert list(r) == list(ROW_COLUMNS)
    assert (r["kind"], r["base_input"], r["structure"], r["ran_as"]) == ("named", "weight", "channel",
                                                                       "weight-value-l1-none")
    assert (r["threshold"], r["threshold_mode"], r["baseline_accuracy"]) == (2.0, "relative", 90.0)
    assert (r["conv_weights_removed_pct"], r["channels_removed_pct"], r["macs_removed_pct"]) == (25.0, 12.5, 17.0)
    assert (r["steps"], r["crossed"], r["final_accuracy"], r["device"], r["wall_seconds"]) == (2, True, 80.0, "cpu", 3.5)
    assert json.loads(r["protocol"]) == c.protocol.to_dict() and r["cell_id"] == c.id
    assert (r["baseline_digest"], r["recipe_hash"], r["recipe"]) == (None, None, None)  # no info given
    recipe = recipe_for("lenet5", "mnist", 2, limit=256)
    info = {"recipe": dataclasses.asdict(recipe), "digest": "ab" * 32, "cached": True}  # train_baseline's info
    rr = score_row(c, ref, (0.0, 0.0, 0.0), 0, 90.0, RowFacts("cpu", 3.5, info=info))
    assert rr["kind"] == "reference" and rr["base_input"] is None and rr["final_accuracy"] is None
    assert list(rr) == list(ROW_COLUMNS) and rr["baseline_digest"] == "ab" * 32
    assert json.loads(rr["recipe"]) == dataclasses.asdict(recipe) and rr["recipe_hash"] == recipe_hash(recipe)
    facts = RowFacts("cuda:0", 1.25, work={"test_images": 7000, "test_images_exhaustive": 9000})
    rw = score_row(c, ref, (0.0, 0.0, 0.0), 0, 90.0, facts)   # the cell's image-passes
    assert (rw["device"], rw["wall_seconds"], rw["test_images_evaluated"], rw["test_images_exhaustive"]) == \
        ("cuda:0", 1.25, 7000, 9000)
    assert (r["test_images_evaluated"], r["test_images_exhaustive"]) == (None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.device = "cpu"
    assert row_protocol(r) == c.protocol and row_protocol(r).target(90.0) == 90.0 - 2.0 * 0.9
    rows = trajectory_rows(c, named)
    assert [list(x) for x in rows] == [list(TRAJECTORY_COLUMNS)] * 2
    assert [(x["step"], x["unit"], x["conv_weights_removed_pct"], x["accuracy"]) for x in rows] == \
        [(1, 4, 10.0, None), (2, 7, 30.0, 80.0)]               # unit: the step's first; accuracy when measured
    write_cell_result(tmp_path, CellResult(c, [r, rr], rows, 3.5))
    assert read_scores(tmp_path).num_rows == 2 and read_trajectories(tmp_path).num_rows == 2
    back = {x["metric_id"]: x for x in read_scores(tmp_path).to_pylist()}
    assert back["random"]["recipe_hash"] == rr["recipe_hash"] and back["filter_l1"]["recipe"] is None


def test_recipe_hash_is_short_stable_and_ignores_unset_later_fields():
    r = dataclasses.replace(recipe_for("cifar10_quick", "mnist", 3), clip_grad_norm=None)  # a recipe of 0.1.0
    h = recipe_hash(r)
    assert len(h) == 16 and int(h, 16) >= 0 and h == recipe_hash(dataclasses.asdict(r))
    assert h == recipe_hash(json.loads(json.dumps(dataclasses.asdict(r))))  # as read back from info.json
    assert h != recipe_hash(dataclasses.replace(r, epochs=4)) and h != recipe_hash(dataclasses.replace(r, lr=0.01))
    # clip_grad_norm (added after 0.1.0) counts only when set: recipes from before it hash as they did
    unset = {k: v for k, v in dataclasses.asdict(r).items() if k != "clip_grad_norm"}
    assert h == recipe_hash(unset) and h != recipe_hash(dataclasses.replace(r, clip_grad_norm=5.0))


def test_scores_written_before_the_baseline_columns_still_read(tmp_path):
    """A results folder of an older version, without baseline_digest / recipe_hash / recipe: read
    with nulls there, and its leaderboard still works (those rows group together)."""
    old = [f for f in SCORES_SCHEMA if f.name not in ("network", "dataset", "baseline_digest", "recipe_hash",
                                                        "recipe", "test_images_evaluated", "test_images_exhaustive")]
    assert old[-1].name == "wall_seconds"
    for seed, rate in ((0, 40.0), (1, 50.0)):
        c = cell(seed=seed)
        r = row(c, "random", rate)
        folder = tmp_path / "scores" / "network=lenet5" / "dataset=mnist"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({f.name: pa.array([r[f.name]], f.type) for f in old}, schema=pa.schema(old)),
                       folder / f"{c.id}.parquet")
    scores = read_scores(tmp_path)
    assert scores.column_names == list(ROW_COLUMNS) and scores.num_rows == 2
    for name in ("baseline_digest", "recipe_hash", "recipe"):
        assert scores.column(name).to_pylist() == [None, None] and scores.schema.field(name).type == pa.string()
    for name in ("test_images_evaluated", "test_images_exhaustive"):
        assert scores.column(name).to_pylist() == [None, None] and scores.schema.field(name).type == pa.int64()
    assert sorted(scores.column("conv_weights_removed_pct").to_pylist()) == [40.0, 50.0]
    (board,) = leaderboard(tmp_path).to_pylist()
    assert board["n_seeds"] == 2 and board["mean"] == pytest.approx(45.0) and board["recipe_hash"] is None


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


def test_leaderboard_one_seed_has_no_spread(tmp_path):
    write_cell_result(tmp_path, result(cell(), {"weight-value-l1-none": 33.0, "random": 11.0}))
    by = {r["metric_id"]: r for r in leaderboard(tmp_path).to_pylist()}
    assert by["random"]["std"] is None and by["random"]["pm2sigma"] is None and by["random"]["n_seeds"] == 1


def test_leaderboard_keeps_protocols_apart(tmp_path):
    write_cell_result(tmp_path, result(cell(threshold=5.0), {"random": 10.0}))
    write_cell_result(tmp_path, result(cell(threshold=2.0), {"random": 30.0}))
    rows = leaderboard(tmp_path).to_pylist()
    assert sorted((r["threshold"], r["mean"]) for r in rows) == [(2.0, 30.0), (5.0, 10.0)]


def test_leaderboard_never_pools_two_recipes(tmp_path):
    """Same network, data set, metric and protocol, baselines of two recipes (2 and 4 epochs): two
    groups, each ranked on its own seeds, each naming its recipe_hash."""
    assert LEADERBOARD_COLUMNS[LEADERBOARD_COLUMNS.index("protocol") + 1] == "recipe_hash"
    hashes = {}
    for epochs, rates in ((2, (10.0, 20.0)), (4, (50.0, 70.0))):
        recipe = recipe_for("lenet5", "mnist", epochs)
        hashes[epochs] = recipe_hash(recipe)
        for seed, rate in enumerate(rates):
            c = Cell("lenet5", "mnist", seed, ("random",), Protocol(), epochs=epochs)
            r = row(c, "random", rate, recipe_hash=hashes[epochs], baseline_digest=f"{epochs}{seed}" * 32,
                    recipe=json.dumps(dataclasses.asdict(recipe), sort_keys=True))
            write_cell_result(tmp_path, CellResult(c, [r], traj(c, "random"), 1.0))
    board = leaderboard(tmp_path)
    assert board.column_names == ["network", "dataset", *LEADERBOARD_COLUMNS]
    got = sorted((r["recipe_hash"], r["mean"], r["n_seeds"], r["rank"]) for r in board.to_pylist())
    assert got == sorted([(hashes[2], 15.0, 2, 1), (hashes[4], 60.0, 2, 1)])


def test_leaderboard_errors(tmp_path):
    with pytest.raises(PrunetaxError, match="does not exist"):
        leaderboard(tmp_path / "nope")
    with pytest.raises(PrunetaxError, match="cannot group by 'colour'"):
        leaderboard(tmp_path, by=("colour",))
    with pytest.raises(PrunetaxError, match="no results in"):
        leaderboard(tmp_path)


def test_row_protocol_reads_the_protocol_column_else_the_threshold():
    """A row's protocol: its ``protocol`` column; where that is null or holds an option this
    version does not know, its threshold columns (all the target needs); None without either."""
    p = Protocol(threshold=7.5, relative=True, units_per_step=4)
    row = {"protocol": json.dumps(p.to_dict(), sort_keys=True), "threshold": 7.5, "threshold_mode": "relative"}
    assert row_protocol(row) == p
    for text in (None, json.dumps({**p.to_dict(), "from_the_future": 1}), "not json"):
        got = row_protocol({**row, "protocol": text})
        assert got == Protocol(threshold=7.5, relative=True) and got.target(92.4) == p.target(92.4)
    assert row_protocol({"protocol": None, "threshold": 2.0, "threshold_mode": None}) == Protocol(threshold=2.0)
    assert row_protocol({"protocol": None, "threshold": None, "threshold_mode": None}) is None
