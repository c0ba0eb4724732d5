"""The leaderboard on hand-built results folders: two protocols, two recipes, a metric that never
crossed, a group of one seed; every number and label checked against values computed here, in
every format, and the errors (empty or foreign folder, bad --top)."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics

import pyarrow.parquet as pq
import pytest

from prunetax.benchmarks.cell import Cell, CellResult, Protocol
from prunetax.benchmarks.cli import main as cli_main
from prunetax.benchmarks.ranking import parse_top
from prunetax.benchmarks.results import LEADERBOARD_COLUMNS, ROW_COLUMNS, leaderboard, recipe_hash, write_cell_result
from prunetax.benchmarks.training import recipe_for
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.vocab import AXES

W, A, NEVER, LATE = ("weight-value-l1-none", "activation-value-l2-elements", "weight-taylor-l2-none",
                     "activation-taylor-l1-none")
COMPS = {W: ("weight", "value", "l1", "none"), A: ("activation", "value", "l2", "elements"),
         NEVER: ("weight", "taylor", "l2", "none"), LATE: ("activation", "taylor", "l1", "none")}
R2, R4 = recipe_for("lenet5", "mnist", 2), recipe_for("lenet5", "mnist", 4)
RQ = recipe_for("cifar10_quick", "mnist", 1)
P5, P2 = Protocol(), Protocol(threshold=2.0)
# (network, recipe, protocol) -> seed -> metric -> (rate, crossed). NEVER never crosses (its final
# rate, 99.9); LATE does not cross on seed 1 of the first group only.
GRID = {
    ("lenet5", R2, P5): {0: {W: (40.0, True), A: (50.0, True), "random": (10.0, True), "oracle": (70.0, True),
                             NEVER: (99.9, False), LATE: (30.0, True)},
                         1: {W: (44.0, True), A: (52.0, True), "random": (20.0, True), "oracle": (71.0, True),
                             NEVER: (99.9, False), LATE: (60.0, False)},
                         2: {W: (45.0, True), A: (60.0, True), "random": (30.0, True), "oracle": (75.0, True),
                             NEVER: (99.9, False), LATE: (33.0, True)}},
    ("lenet5", R2, P2): {0: {W: (20.0, True), A: (25.0, True), "random": (5.0, True)}},   # one seed
    ("lenet5", R4, P5): {0: {W: (41.0, True), A: (49.0, True)}, 3: {W: (43.0, True), A: (58.0, True)}},
    ("cifar10_quick", RQ, P5): {0: {W: (12.0, True), A: (11.0, True)}},
}


def baseline(net, seed):
    return (90.0 if net == "lenet5" else 60.0) + seed / 2


def write_results(root, grid=None):
    for (net, recipe, proto), seeds in (GRID if grid is None else grid).items():
        for seed, rates in seeds.items():
            c = Cell(net, "mnist", seed, tuple(rates), proto, epochs=recipe.epochs)
            rows = []
            for m, (rate, crossed) in rates.items():
                r = dict.fromkeys(ROW_COLUMNS)
                comps = COMPS.get(m) or (tuple(m.split("-")) if m.count("-") == 3 else None)
                r.update(cell_id=c.id, metric_id=m, kind="spec" if comps else "reference",
                         **(dict(zip(AXES, comps + ("channel", "per_image"))) if comps else {}),
                         network=net, dataset="mnist", seed=seed, threshold=proto.threshold,
                         threshold_mode="absolute", baseline_accuracy=baseline(net, seed),
                         conv_weights_removed_pct=rate, crossed=crossed, ran_as=m,
                         protocol=json.dumps(proto.to_dict(), sort_keys=True), recipe_hash=recipe_hash(recipe),
                         recipe=json.dumps(dataclasses.asdict(recipe), sort_keys=True), baseline_digest="ab" * 32)
                rows.append(r)
            write_cell_result(root, CellResult(c, rows, [], 1.0))


def expected():
    """Every leaderboard row, computed here from GRID: group label -> metric -> row."""
    labels = {("lenet5", R2, P5): "lenet5 / mnist | recipe epochs=2 | protocol threshold 5 points, mode none, schedule fast",
              ("lenet5", R2, P2): "lenet5 / mnist | recipe epochs=2 | protocol threshold 2 points, mode none, schedule fast",
              ("lenet5", R4, P5): "lenet5 / mnist | recipe epochs=4 | protocol threshold 5 points, mode none, schedule fast",
              ("cifar10_quick", RQ, P5): "cifar10_quick / mnist | recipe epochs=1 | protocol threshold 5 points, "
                                         "mode none, schedule fast"}
    out = {}
    for key, seeds in GRID.items():
        net, recipe, proto = key
        metrics = {m for rates in seeds.values() for m in rates}
        rows = {}
        for m in metrics:
            runs = [(s, rates[m]) for s, rates in seeds.items() if m in rates]
            vals = [v for _, (v, _) in runs]
            n = len(vals)
            std = statistics.stdev(vals) if n > 1 else None
            rows[m] = {"mean": statistics.mean(vals), "std": std, "pm2sigma": None if std is None else 2 * std,
                       "min": min(vals), "max": max(vals), "n_runs": n, "n_seeds": n,
                       "n_crossed": sum(c for _, (_, c) in runs), "censored": not all(c for _, (_, c) in runs),
                       "baseline_accuracy": statistics.mean(baseline(net, s) for s, _ in runs),
                       "threshold": proto.threshold, "recipe_hash": recipe_hash(recipe), "n_metrics": len(metrics)}
        oracle = rows.get("oracle", {}).get("mean")
        order = sorted(rows, key=lambda m: (rows[m]["censored"], -rows[m]["mean"], m))
        for rank, m in enumerate(order, 1):
            rows[m]["rank"] = rank
            rows[m]["gap_to_oracle"] = None if oracle is None else oracle - rows[m]["mean"]
        out[labels[key]] = rows
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("lb") / "R"
    write_results(root)
    return root


def test_every_number_and_label_by_hand(results):
    board = leaderboard(results)
    assert board.column_names == ["network", "dataset", *LEADERBOARD_COLUMNS]
    rows = board.to_pylist()
    want = expected()
    # groups in order (network, data set, recipe, protocol), each ranked 1..n
    assert list(dict.fromkeys(r["group"] for r in rows)) == sorted(want, key=lambda g: (g.split(" | ")[0], g))
    assert len(rows) == sum(len(v) for v in want.values()) == 13
    for r in rows:
        w = want[r["group"]][r["metric_id"]]
        for col in ("rank", "n_runs", "n_seeds", "n_crossed", "censored", "threshold", "recipe_hash", "n_metrics"):
            assert r[col] == w[col], (r["group"], r["metric_id"], col)
        for col in ("mean", "std", "pm2sigma", "min", "max", "gap_to_oracle", "baseline_accuracy"):
            assert r[col] == (None if w[col] is None else pytest.approx(w[col])), (r["metric_id"], col)
        assert r["group"].startswith(f"{r['network']} / {r['dataset']} | recipe epochs=")
        assert r["protocol_label"] == r["group"].split(" | protocol ")[1]
        assert r["recipe_label"] == r["group"].split(" | recipe ")[1].split(" | ")[0]
        assert r["threshold_mode"] == "absolute" and r["ran_as"] == r["metric_id"]
        assert (r["base_input"], r["kind"]) == ((COMPS[r["metric_id"]][0], "spec") if r["metric_id"] in COMPS
                                                else (None, "reference"))
    by = {(r["group"].split(" | ")[1], r["group"].split(" | ")[2], r["metric_id"]): r for r in rows}
    five, two = "protocol threshold 5 points, mode none, schedule fast", "protocol threshold 2 points, mode none, schedule fast"
    g = {m: by[("recipe epochs=2", five, m)] for m in ("oracle", A, W, "random", LATE, NEVER)}
    # ranks: crossed first by mean (oracle 72, A 54, W 43, random 20), then the censored: NEVER 99.9 > LATE 41
    assert [g[m]["rank"] for m in ("oracle", A, W, "random", NEVER, LATE)] == [1, 2, 3, 4, 5, 6]
    assert g[W]["mean"] == pytest.approx(43.0) and g[W]["std"] == pytest.approx(statistics.stdev([40, 44, 45]))
    assert (g[NEVER]["n_crossed"], g[NEVER]["censored"], g[NEVER]["mean"]) == (0, True, pytest.approx(99.9))
    assert (g[LATE]["n_crossed"], g[LATE]["censored"]) == (2, True)
    assert g["oracle"]["gap_to_oracle"] == 0.0 and g[W]["gap_to_oracle"] == pytest.approx(72.0 - 43.0)
    one = by[("recipe epochs=2", two, W)]
    assert (one["n_runs"], one["std"], one["pm2sigma"], one["min"], one["max"]) == (1, None, None, 20.0, 20.0)
    assert one["gap_to_oracle"] is None and one["threshold"] == 2.0
    four = by[("recipe epochs=4", five, A)]
    assert four["mean"] == pytest.approx(53.5) and four["pm2sigma"] == pytest.approx(2 * statistics.stdev([49, 58]))
    assert four["recipe_hash"] == recipe_hash(R4) != g[A]["recipe_hash"]
    # the authors' rate: lenet5 / mnist is 84.9 (mode characterise); cifar10_quick / mnist has none
    assert g[W]["authors_rate"] == 84.9
    assert g[W]["authors_note"] == "theirs: mode characterise, threshold 5 points; here: mode none"
    assert one["authors_note"] == "theirs: mode characterise, threshold 5 points; here: mode none, threshold 2"
    quick = [r for r in rows if r["network"] == "cifar10_quick"]
    assert [r["metric_id"] for r in quick] == [W, A] and quick[0]["authors_rate"] is None
    assert quick[0]["authors_note"] == "no authors' rate for cifar10_quick / mnist"


def test_top(results):
    rows = leaderboard(results, top=2).to_pylist()
    assert [(r["network"], r["rank"]) for r in rows] == [("cifar10_quick", 1), ("cifar10_quick", 2)] + \
        [("lenet5", k) for _ in range(3) for k in (1, 2)]
    assert leaderboard(results, top=0).num_rows == 0
    with pytest.raises(PrunetaxError, match="non-negative"):
        leaderboard(results, top=-1)
    assert parse_top("all") is None and parse_top("0") == 0 and parse_top("7") == 7
    for bad in ("-1", "x"):
        with pytest.raises(Exception, match="non-negative integer"):
            parse_top(bad)


def test_group_by_components_parquet_json_csv(results, tmp_path, capsys):
    f = tmp_path / "f.parquet"
    assert cli_main(["leaderboard", str(results), "--by", "base_input,scaling", "--format", "parquet",
                     "--out", str(f)]) == 0
    t = pq.read_table(f)
    assert t.column_names[:2] == ["base_input", "scaling"] and len(set(t.column_names)) == len(t.column_names)
    rows = t.to_pylist()
    w = [r for r in rows if r["metric_id"] == W and "epochs=2" in r["group"] and r["threshold"] == 5.0]
    assert len(w) == 1 and w[0]["group"].startswith("lenet5 / mnist | base_input=weight, scaling=none | recipe")
    assert w[0]["mean"] == pytest.approx(43.0) and w[0]["rank"] == 1 and w[0]["n_metrics"] == 2  # W and NEVER
    assert "leaderboard: 13 rows in 11 groups" in capsys.readouterr().out
    assert cli_main(["leaderboard", str(results), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    want = expected()
    assert len(data) == 13
    for r in data:
        assert r["mean"] == pytest.approx(want[r["group"]][r["metric_id"]]["mean"])
        assert r["rank"] == want[r["group"]][r["metric_id"]]["rank"]
    assert any(r["pm2sigma"] is None for r in data)      # null, not 0 and not NaN
    assert cli_main(["leaderboard", str(results), "--format", "csv", "--top", "1"]) == 0
    got = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [g["metric_id"] for g in got] == [W, A, "oracle", A] and got[0]["pm2sigma"] == ""


def test_table_markdown_html_say_what_they_show(results, tmp_path, capsys):
    assert cli_main(["leaderboard", str(results)]) == 0
    out = capsys.readouterr()
    text = out.out
    assert "== lenet5 / mnist | recipe epochs=2 | protocol threshold 2 points, mode none, schedule fast" in text
    assert ("authors' rate for lenet5 / mnist: 84.9 % (theirs: mode characterise, threshold 5 points; here: "
            "mode none)") in text
    assert ">=99.90" in text and ">=41.00" in text and "n/a" in text and "2/3" in text
    assert "never crossed the threshold" in text and "n/a: fewer than two runs, no spread." in text
    assert "leaderboard: 13 rows in 4 groups of" in out.err
    assert cli_main(["leaderboard", str(results), "--format", "markdown", "--top", "2"]) == 0
    md = capsys.readouterr().out
    assert md.count("### ") == 4 and md.count("Top 2 of 6 metrics shown.") == 1 and "| ±2σ |" in md
    assert "| 2 | n/a | weight-value-l1-none | 1 | 1/1 | 20.00 | n/a | 20.00 | 20.00 |" in md   # one seed: no rank interval
    assert cli_main(["leaderboard", str(results), "--format", "html", "--out", str(tmp_path / "b.html")]) == 0
    html = (tmp_path / "b.html").read_text()
    assert html.count("<h3>") == 4 and html.count("<tr>") == 4 + 13 and "≥99.90" in html
    assert cli_main(["leaderboard", str(results), "--top", "0"]) == 0
    text = capsys.readouterr().out
    assert text.count("== ") == 4 and text.count("top 0: no metrics shown") == 4


def test_empty_foreign_and_missing_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not results")
    for name in ("empty", "foreign"):
        assert cli_main(["leaderboard", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"no results in {tmp_path / name}: expected score files scores/" in err
    assert cli_main(["leaderboard", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["leaderboard", str(tmp_path / "empty"), "--top", "-2"])
    assert e.value.code == 2 and "non-negative integer (0 = none) or 'all'" in capsys.readouterr().err


def test_bench_top_is_the_same_option(results, capsys):
    from prunetax.benchmarks.cli import build_parser
    from prunetax.benchmarks.commands.bench import print_top

    p = build_parser()
    assert p.parse_args(["bench", "--top", "0"]).top == 0 and p.parse_args(["bench", "--top", "all"]).top is None
    assert p.parse_args(["bench"]).top == 5
    print_top(results, 1)
    out = capsys.readouterr().out
    assert out.count("== ") == 4 and "(top 1 of 6 metrics shown)" in out
    assert out.endswith(f"(every metric: prunetax leaderboard {results})\n")
    print_top(results, None)
    assert "every metric" not in capsys.readouterr().out


def test_pooled_networks_are_named(tmp_path):
    """Rows without a recipe (older folders) of two networks, grouped by data set only: one group
    per protocol, its label naming both networks; n_runs counts runs, not distinct seeds."""
    for net, rate in (("lenet5", 10.0), ("nin", 30.0)):
        c = Cell(net, "mnist", 0, ("random",), Protocol())
        r = dict.fromkeys(ROW_COLUMNS)
        r.update(cell_id=c.id, metric_id="random", network=net, dataset="mnist", seed=0, threshold=5.0,
                 conv_weights_removed_pct=rate, crossed=True, protocol=json.dumps(Protocol().to_dict(), sort_keys=True))
        write_cell_result(tmp_path, CellResult(c, [r], [], 1.0))
    (row,) = leaderboard(tmp_path, by=("dataset",)).to_pylist()
    assert row["group"] == "lenet5+nin / mnist | recipe unknown | protocol threshold 5 points, mode none, schedule fast"
    assert (row["n_runs"], row["n_seeds"], row["mean"]) == (2, 1, 20.0)
    assert row["std"] == pytest.approx(statistics.stdev([10.0, 30.0]))
    assert row["authors_note"] == "pooled over networks or data sets: no authors' rate"


def test_authors_note_when_the_protocol_is_not_recorded():
    from prunetax.benchmarks.ranking import authors_rate
    assert authors_rate({"lenet5"}, {"mnist"}, {}) == (84.9, "theirs: mode characterise, threshold 5 points; "
                                                             "here: protocol not recorded")
    assert authors_rate({"lenet5"}, {"mnist"}, {"mode": "characterise", "threshold": 5.0, "relative": False}) == \
        (84.9, "theirs: mode characterise, threshold 5 points, as here")
    assert authors_rate({"nin"}, {"cifar100"}, None)[0] == 59.2


# t quantiles from a printed table (two-sided 95 %): df 1 and 2
T95 = {1: 12.706204736174707, 2: 4.302652729912954}


def test_versus_a_metric_by_hand(results):
    from prunetax.benchmarks.ranking import rank_scores
    from prunetax.benchmarks.results import read_scores

    board = rank_scores(read_scores(results), versus=W)
    assert board.column_names[-14:] == ["versus", "vs_n", "vs_censored", "vs_mean", "vs_ci_low", "vs_ci_high",
                                        "vs_better", "vs_p", "vs_correction", "vs_family", "vs_p_adj", "vs_adj_level",
                                        "vs_adj_low", "vs_adj_high"]
    g = {r["metric_id"]: r for r in board.to_pylist() if "epochs=2" in r["group"] and r["threshold"] == 5.0}
    # A - W on seeds 0, 1, 2: 10, 8, 15
    d = [10.0, 8.0, 15.0]
    half = T95[2] * statistics.stdev(d) / 3 ** 0.5
    assert (g[A]["versus"], g[A]["vs_n"], g[A]["vs_censored"]) == (W, 3, 0)
    assert g[A]["vs_mean"] == pytest.approx(11.0)
    assert (g[A]["vs_ci_low"], g[A]["vs_ci_high"]) == (pytest.approx(11.0 - half), pytest.approx(11.0 + half))
    assert g[A]["vs_better"] == 1.0
    # LATE did not cross on seed 1: left out; -10 and -12 remain
    half = T95[1] * statistics.stdev([-10.0, -12.0]) / 2 ** 0.5
    assert (g[LATE]["vs_n"], g[LATE]["vs_censored"], g[LATE]["vs_mean"]) == (2, 1, pytest.approx(-11.0))
    assert g[LATE]["vs_ci_low"] == pytest.approx(-11.0 - half) and g[LATE]["vs_better"] == 0.0
    assert (g[NEVER]["vs_n"], g[NEVER]["vs_censored"], g[NEVER]["vs_mean"], g[NEVER]["vs_ci_low"]) == (0, 3, None, None)
    assert g["random"]["vs_mean"] == pytest.approx((10 + 20 + 30 - 40 - 44 - 45) / 3)
    # a group of one seed: a difference, no interval
    one = [r for r in board.to_pylist() if r["threshold"] == 2.0 and r["metric_id"] == A][0]
    assert (one["vs_n"], one["vs_mean"], one["vs_ci_low"]) == (1, pytest.approx(5.0), None)
    with pytest.raises(PrunetaxError, match="no such metric"):
        rank_scores(read_scores(results), versus="weight-value-l2-none")


def test_versus_an_axis_level_and_selection(tmp_path, capsys):
    from prunetax.benchmarks.ranking import rank_scores
    from prunetax.benchmarks.results import read_scores

    l2, el = "weight-value-l1-layer_l2", "weight-value-l1-elements"
    grid = {("lenet5", R2, P5): {0: {W: (40.0, True), l2: (45.0, True), el: (30.0, True), "random": (9.0, True)},
                                 1: {W: (44.0, True), l2: (50.0, True), el: (30.0, False), "random": (8.0, True)}}}
    write_results(tmp_path / "R", grid)
    g = {r["metric_id"]: r for r in rank_scores(read_scores(tmp_path / "R"), versus="scaling=none").to_pylist()}
    half = T95[1] * statistics.stdev([5.0, 6.0]) / 2 ** 0.5
    assert (g[l2]["versus"], g[l2]["vs_n"], g[l2]["vs_mean"]) == (W, 2, pytest.approx(5.5))
    assert (g[l2]["vs_ci_low"], g[l2]["vs_ci_high"]) == (pytest.approx(5.5 - half), pytest.approx(5.5 + half))
    assert (g[el]["vs_n"], g[el]["vs_censored"], g[el]["vs_mean"], g[el]["vs_ci_low"]) == (1, 1, -10.0, None)
    assert g[W]["versus"] == W and g[W]["vs_mean"] == 0.0
    assert g["random"]["versus"] is None and g["random"]["vs_n"] == 0      # no components: no partner
    # the command line: selection by id, glob and name, ranks of the whole group, the columns shown
    assert cli_main(["leaderboard", str(tmp_path / "R"), "--metrics", "weight-value-l1-l*,filter_l1",
                     "--versus", "scaling=none"]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith(("1 ", "2 ", "3 ", "4 "))]
    assert [ln.split()[:4] for ln in lines] == [["1", "[1,", "1]", l2], ["2", "[2,", "2]", W]]
    assert f"{5.5:+.2f}" in lines[0] and f"[{5.5 - half:+.2f}, {5.5 + half:+.2f}]" in lines[0]
    assert "(2 of 4 metrics shown; rank among all 4)" in text and "diff: mean over the cells" in text
    for args, words in ((["--metrics", "weight-value-l1-nine"], "did you mean 'weight-value-l1-none'"),
                        (["--metrics", "activation-*"], "metric 'activation-*' is not in"),
                        (["--metrics", ","], "--metrics is empty"),
                        (["--versus", "scale=none"], "'scale' is not an axis"),
                        (["--versus", "scaling=half"], "'half' is not a scaling level"),
                        (["--versus", "oracle"], "no such metric")):
        assert cli_main(["leaderboard", str(tmp_path / "R"), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (args, err)


def test_versus_interval_is_named_by_its_confidence(results):
    """The versus interval's header and note name the confidence the table was ranked at (they
    said "95% ci" whatever was asked), in a table cut to some metrics too."""
    from prunetax.benchmarks.ranking import rank_scores, render, select_metrics
    from prunetax.benchmarks.results import read_scores

    at90 = rank_scores(read_scores(results), versus=W, confidence=0.9)
    g = {r["metric_id"]: r for r in at90.to_pylist() if "epochs=2" in r["group"] and r["threshold"] == 5.0}
    half = 2.919985580355516 * statistics.stdev([10.0, 8.0, 15.0]) / 3 ** 0.5     # t(0.95; 2): a 90 % interval
    assert (g[A]["vs_ci_low"], g[A]["vs_ci_high"]) == (pytest.approx(11.0 - half), pytest.approx(11.0 + half))
    for fmt in ("table", "markdown", "html"):
        for table in (at90, select_metrics(at90, [A])):
            text = render(table, fmt)
            assert "90% ci" in text and "95% ci" not in text, fmt
            assert "90% ci: t interval over those cells" in text, fmt


def test_the_table_records_its_confidence(results):
    """A leaderboard with versus columns records the level of its interval in its schema metadata
    (read back by ``confidence_of``; 0.95 for a table that does not say), through ``leaderboard``
    and its Parquet file too; without versus it records none."""
    import pyarrow.parquet as pq

    from prunetax.benchmarks.io import write_parquet
    from prunetax.benchmarks.ranking import CONFIDENCE, confidence_of, rank_scores, render
    from prunetax.benchmarks.results import read_scores

    scores = read_scores(results)
    assert CONFIDENCE == 0.95 and confidence_of(rank_scores(scores, versus=W)) == 0.95
    assert rank_scores(scores).schema.metadata is None
    board = leaderboard(results, versus=W, confidence=0.999)
    assert confidence_of(board) == 0.999 and "99.9% ci" in render(board, "markdown")
    write_parquet(board, str(results.parent / "lb.parquet"))
    back = pq.read_table(results.parent / "lb.parquet")
    assert confidence_of(back) == 0.999 and "99.9% ci: t interval" in render(back, "table")
    assert "95% ci" in render(back.replace_schema_metadata(None), "html")
    with pytest.raises(PrunetaxError, match=r"confidence must be in \(0, 1\)"):
        leaderboard(results, versus=W, confidence=1.0)


# ------------------------------------------------------------------ distinct metrics and rank intervals

def test_aliases_are_one_entry_and_ties_share_a_rank(tmp_path, capsys):
    """``filter_l1`` ran as weight-value-l1-none: one entry, listed under the spec id with its alias;
    weight-value-l2-elements has weight-value-l2-none's rates but is another metric: a tie, one rank."""
    from prunetax.benchmarks.ranking import rank_scores
    from prunetax.benchmarks.results import read_scores
    from test_correction import RATES, write_board

    l2e = "weight-value-l2-elements"
    write_board(tmp_path / "R", {**RATES, l2e: RATES["weight-value-l2-none"]})
    rows = {r["metric_id"]: r for r in rank_scores(read_scores(tmp_path / "R")).to_pylist()}
    # means by hand: A 54.25, weight-value-l2-none = l2e 43.5, W = filter_l1 42.5, C 31.5, random 18.75
    want = {A: 1, "weight-value-l2-none": 2, l2e: 2, W: 4, "filter_l1": 4, "activation-taylor-l1-none": 5,
            "random": 6}
    assert {m: r["distinct_rank"] for m, r in rows.items()} == want
    assert {r["n_distinct"] for r in rows.values()} == {6} and {r["n_metrics"] for r in rows.values()} == {7}
    assert (rows[W]["entry"], rows[W]["aliases"]) == (W, "filter_l1")
    assert (rows["filter_l1"]["entry"], rows["filter_l1"]["aliases"]) == (W, W)
    assert rows[l2e]["aliases"] == "" and rows[l2e]["entry"] == l2e
    # rank (every id, ties broken by id) is unchanged: filter_l1 4 before W 5
    assert [rows[m]["rank"] for m in (A, l2e, "weight-value-l2-none", "filter_l1", W)] == [1, 2, 3, 4, 5]
    # the text: one line per distinct metric, the alias after '='
    assert cli_main(["leaderboard", str(tmp_path / "R"), "--resamples", "0"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln[:1].isdigit()]
    assert len(lines) == 6 and not any(ln.split()[2] == "filter_l1" for ln in lines)
    assert any(ln.split()[:2] == ["4", "n/a"] and f"{W} (= filter_l1)" in ln for ln in lines)
    assert [ln.split()[0] for ln in lines] == ["1", "2", "2", "4", "5", "6"]
    # --top counts distinct metrics, ties included: top 2 is A and the two tied at 2; top 4 adds W and its alias
    assert cli_main(["leaderboard", str(tmp_path / "R"), "--top", "2", "--format", "json"]) == 0
    top2 = sorted(r["metric_id"] for r in json.loads(capsys.readouterr().out))
    assert top2 == sorted([A, l2e, "weight-value-l2-none"])
    assert {r["metric_id"] for r in rank_scores(read_scores(tmp_path / "R"), top=4).to_pylist()} == \
        {A, l2e, "weight-value-l2-none", W, "filter_l1"}
    assert cli_main(["leaderboard", str(tmp_path / "R"), "--top", "4", "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert "Top 4 of 6 distinct metrics shown." in md and f"| {W} (= filter_l1) |" in md


def _naive_rank_interval(grid_seeds: dict, resamples: int) -> dict[str, tuple[int, int, int]]:
    """The bootstrap by its definition, loop by loop: draw the seeds (the documented generator
    call), each metric's mean and censoring over the drawn runs, its rank (1 + the metrics that
    are uncensored where it is censored, or of the same kind with a higher mean), percentiles
    2.5 / 97.5 as the ranks at sorted positions floor(0.025 (B - 1)) and ceil(0.975 (B - 1))."""
    import math

    import numpy as np

    seeds = sorted(grid_seeds)
    metrics = sorted({m for rates in grid_seeds.values() for m in rates})

    def ranks(drawn):
        stat = {}
        for m in metrics:
            runs = [grid_seeds[s][m] for s in drawn]
            stat[m] = (not all(c for _, c in runs), sum(v for v, _ in runs) / len(runs))
        return {m: 1 + sum(1 for o in metrics if stat[o][0] < stat[m][0] or
                           (stat[o][0] == stat[m][0] and stat[o][1] > stat[m][1])) for m in metrics}

    draws = np.random.default_rng(0).integers(0, len(seeds), size=(resamples, len(seeds)))
    got = {m: [] for m in metrics}
    for row in draws:
        for m, r in ranks([seeds[j] for j in row]).items():
            got[m].append(r)
    point = ranks(seeds)
    lo, hi = math.floor(0.025 * (resamples - 1)), math.ceil(0.975 * (resamples - 1))
    return {m: (point[m], sorted(v)[lo], sorted(v)[hi]) for m, v in got.items()}


def test_rank_intervals_against_a_naive_bootstrap(tmp_path):
    from prunetax.benchmarks.ranking import rank_scores
    from prunetax.benchmarks.results import read_scores

    seeds = {0: {W: (40.0, True), A: (50.0, True), LATE: (30.0, True), "random": (10.0, True)},
             1: {W: (44.0, True), A: (41.0, True), LATE: (60.0, False), "random": (46.0, True)},
             2: {W: (45.0, True), A: (43.0, True), LATE: (47.0, True), "random": (20.0, True)},
             3: {W: (41.0, True), A: (47.0, True), LATE: (44.0, True), "random": (42.0, True)}}
    write_results(tmp_path / "R", {("lenet5", R2, P5): seeds})
    scores = read_scores(tmp_path / "R")
    for resamples in (200, 1000):
        rows = rank_scores(scores, resamples=resamples).to_pylist()
        want = _naive_rank_interval(seeds, resamples)
        assert {r["metric_id"]: (r["distinct_rank"], r["rank_low"], r["rank_high"]) for r in rows} == want
        assert len({w[1:] for w in want.values()}) > 1          # the intervals differ: the test can fail
        for r in rows:
            assert r["rank_low"] <= r["distinct_rank"] <= r["rank_high"]
    assert rank_scores(scores).to_pylist() == rank_scores(scores).to_pylist()      # a fixed generator seed
    assert {(r["rank_low"], r["rank_high"]) for r in rank_scores(scores, resamples=0).to_pylist()} == {(None, None)}


@pytest.mark.parametrize("grid, distinct", [("lenet5", 311), ("cifar10_quick", 35), ("domino", None)])
def test_the_committed_study_results_rank_and_render(grid, distinct):
    """results/study/ loads and renders; "rank r of N" counts distinct metrics (LeNet-5 318 ids,
    311 metrics; cifar10_quick 42 and 35); every rank interval holds its point rank."""
    from pathlib import Path

    from prunetax.benchmarks.ranking import rank_scores, render
    from prunetax.benchmarks.results import read_scores

    board = rank_scores(read_scores(Path(__file__).resolve().parents[1] / "results" / "study" / grid),
                        versus="random")
    rows = board.to_pylist()
    if distinct is not None:
        assert {r["n_distinct"] for r in rows} == {distinct}
    assert all(r["rank_low"] <= r["distinct_rank"] <= r["rank_high"] for r in rows if r["rank_low"] is not None)
    for fmt in ("table", "markdown"):
        text = render(board, fmt)
        assert "p holm" in text and "(= fisher)" in text or grid == "domino"
