"""Multiple-comparison correction (``--correction holm|none``) of ``leaderboard --versus`` and
``effects``: Holm's adjusted p-values against a by-hand computation and a naive step-down test,
the raw p-values and corrected intervals against scipy on hand-built results, the family (one
per distinct metric; ``--metrics`` chooses it), and the one-line errors."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pyarrow.parquet as pq
import pytest
from scipy import stats

from prunetax.benchmarks.cell import Cell, CellResult, Protocol
from prunetax.benchmarks.cli import main as cli_main
from prunetax.benchmarks.ranking import holm, rank_scores
from prunetax.benchmarks.ranking.correction import adjust
from prunetax.benchmarks.results import ROW_COLUMNS, read_scores, recipe_hash, write_cell_result
from prunetax.benchmarks.training import recipe_for
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.vocab import AXES

# ------------------------------------------------------------------------------- Holm by hand


def test_holm_adjusted_p_values_by_hand():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # ties, and the cap at 1: 0.2 x 3 = 0.6; 0.5 x 2 = 1.0; 0.5 x 1 -> 1.0
    assert holm([0.5, 0.5, 0.2]) == pytest.approx([1.0, 1.0, 0.6])
    assert holm([0.3]) == [0.3] and holm([]) == []


def test_holm_levels_of_the_corrected_intervals_by_hand():
    # alpha 0.05, m = 4: 0.005 <= 0.05/4 rejected at step 1, 0.01 <= 0.05/3 at step 2, 0.03 > 0.05/2: Holm
    # stops after r = 2; the two left get the level it stopped at, 0.05 / (4 - 2)
    got = adjust([0.01, 0.04, 0.03, 0.005], "holm", 0.05)
    assert [a for a, _ in got] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [lv for _, lv in got] == pytest.approx([0.05 / 3, 0.05 / 2, 0.05 / 2, 0.05 / 4])
    # tied p-values that are rejected take the first (smaller) step's level
    assert [lv for _, lv in adjust([0.004, 0.004, 0.5], "holm", 0.05)] == pytest.approx([0.05 / 3, 0.05 / 3, 0.05])
    assert adjust([0.01, 0.2], "none", 0.05) == [(0.01, 0.05), (0.2, 0.05)]


def _step_down_rejects(p: list[float], alpha: float) -> set[int]:
    """Holm's test as its definition states it: walk the sorted p-values, stop at the first
    p_(k) > alpha / (m - k + 1)."""
    m, out = len(p), set()
    for k, i in enumerate(sorted(range(m), key=lambda i: p[i]), 1):
        if p[i] > alpha / (m - k + 1):
            break
        out.add(i)
    return out


def test_holm_agrees_with_a_naive_step_down_test():
    """The adjusted p-value is <= alpha exactly when the step-down test at alpha rejects, for
    every alpha (checked just below and at each candidate level (m - k + 1) p_(k))."""
    import numpy as np

    rng = np.random.default_rng(7)
    for _ in range(40):
        p = [float(v) for v in rng.uniform(0, 0.2, size=rng.integers(1, 9))]
        adj = holm(p)
        m = len(p)
        for cut in sorted({(m - k) * v for k, v in enumerate(sorted(p))} | {0.05, 0.1}):
            for alpha in (cut * (1 - 1e-9), cut * (1 + 1e-9)):
                assert {i for i, a in enumerate(adj) if a <= alpha} == _step_down_rejects(p, alpha)


# ---------------------------------------------------------------------- leaderboard --versus

W, B, A, C = "weight-value-l1-none", "weight-value-l2-none", "activation-value-l2-elements", "activation-taylor-l1-none"
RATES = {W: [40.0, 44.0, 45.0, 41.0], "filter_l1": [40.0, 44.0, 45.0, 41.0],     # filter_l1 ran as W
         A: [50.0, 52.0, 60.0, 55.0], B: [41.0, 47.0, 44.0, 42.0], C: [30.0, 35.0, 28.0, 33.0],
         "random": [10.0, 20.0, 30.0, 15.0]}


def write_board(root, rates=RATES, ran_as=None):
    """One group (lenet5 / mnist, one recipe and protocol), a cell per seed; ``ran_as``: metric ->
    what it ran as (``filter_l1`` runs as W, a named metric with W's components)."""
    ran_as = {"filter_l1": W, **(ran_as or {})}
    recipe, proto = recipe_for("lenet5", "mnist", 2), Protocol()
    for seed in range(len(next(iter(rates.values())))):
        c = Cell("lenet5", "mnist", seed, tuple(rates), proto, epochs=recipe.epochs)
        rows = []
        for m, vals in rates.items():
            ran = ran_as.get(m, m)
            comps = tuple(ran.split("-")) + ("channel", "per_image") if ran.count("-") == 3 else None
            r = dict.fromkeys(ROW_COLUMNS)
            kind = "spec" if m == ran and comps else "named" if comps else "reference"
            r.update(cell_id=c.id, metric_id=m, kind=kind,
                     **(dict(zip(AXES, comps)) if comps else {}), network="lenet5", dataset="mnist", seed=seed,
                     threshold=5.0, threshold_mode="absolute", baseline_accuracy=95.0,
                     conv_weights_removed_pct=vals[seed], crossed=True, ran_as=ran,
                     protocol=json.dumps(proto.to_dict(), sort_keys=True), recipe_hash=recipe_hash(recipe),
                     recipe=json.dumps(dataclasses.asdict(recipe), sort_keys=True), baseline_digest=f"{seed}" * 64)
            rows.append(r)
        write_cell_result(root, CellResult(c, rows, [], 1.0))


def expected_family(metrics, ref="random", confidence=0.95):
    """Per metric: raw p (scipy's t test), Holm's adjusted p and corrected interval, by hand."""
    alpha = 1 - confidence
    diffs = {m: [a - b for a, b in zip(RATES[m], RATES[ref])] for m in metrics}
    p = {m: stats.ttest_1samp(d, 0.0).pvalue for m, d in diffs.items()}
    order = sorted(metrics, key=lambda m: p[m])
    k = len(order)
    adj, running = {}, 0.0
    for i, m in enumerate(order):
        running = max(running, min(1.0, (k - i) * p[m]))
        adj[m] = running
    rejected = [m for m in order if adj[m] <= alpha]
    out = {}
    for i, m in enumerate(order):
        level = 1 - (alpha / (k - i) if m in rejected else alpha / (k - len(rejected)))
        d = diffs[m]
        n, mean, sd = len(d), sum(d) / len(d), statistics.stdev(d)
        half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
        out[m] = {"p": p[m], "p_adj": adj[m], "level": level, "low": mean - half, "high": mean + half}
    return out


def test_versus_holm_by_hand(tmp_path):
    write_board(tmp_path / "R")
    rows = {r["metric_id"]: r for r in rank_scores(read_scores(tmp_path / "R"), versus="random").to_pylist()}
    want = expected_family([W, A, B, C])
    for m in (W, A, B, C):
        r, w = rows[m], want[m]
        assert r["vs_p"] == pytest.approx(w["p"], rel=1e-7), m
        assert r["vs_p_adj"] == pytest.approx(w["p_adj"], rel=1e-7), m
        assert r["vs_adj_level"] == pytest.approx(w["level"], rel=1e-12), m
        assert (r["vs_adj_low"], r["vs_adj_high"]) == (pytest.approx(w["low"], rel=1e-7),
                                                       pytest.approx(w["high"], rel=1e-7)), m
        assert (r["vs_correction"], r["vs_family"]) == ("holm", 4)      # filter_l1 = W counts once
    # the alias: W's comparison, in the family once; random against itself is no comparison
    for col in ("vs_p", "vs_p_adj", "vs_adj_low", "vs_adj_high", "vs_adj_level"):
        assert rows["filter_l1"][col] == rows[W][col]
    assert rows["random"]["vs_p"] == 1.0 and rows["random"]["vs_p_adj"] == 1.0 and rows["random"]["vs_adj_low"] == 0.0
    # the corrected interval excludes 0 exactly when the adjusted p is <= 0.05
    for m in (W, A, B, C):
        assert (rows[m]["vs_adj_low"] > 0 or rows[m]["vs_adj_high"] < 0) == (rows[m]["vs_p_adj"] <= 0.05)
    # none: the raw test and interval
    raw = {r["metric_id"]: r for r in rank_scores(read_scores(tmp_path / "R"), versus="random",
                                                  correction="none").to_pylist()}
    for m in (W, A, B, C):
        r = raw[m]
        assert (r["vs_p_adj"], r["vs_adj_low"], r["vs_adj_high"], r["vs_adj_level"]) == \
            (r["vs_p"], r["vs_ci_low"], r["vs_ci_high"], 0.95)
        assert r["vs_correction"] == "none" and r["vs_p"] == pytest.approx(want[m]["p"], rel=1e-7)


def test_versus_family_is_what_metrics_chooses(tmp_path, capsys):
    write_board(tmp_path / "R")
    assert cli_main(["leaderboard", str(tmp_path / "R"), "--versus", "random", "--metrics", f"{A},{C},random",
                     "--format", "json"]) == 0
    rows = {r["metric_id"]: r for r in json.loads(capsys.readouterr().out)}
    want = expected_family([A, C])
    assert set(rows) == {A, C, "random"}
    for m in (A, C):
        assert rows[m]["vs_family"] == 2 and rows[m]["vs_p_adj"] == pytest.approx(want[m]["p_adj"], rel=1e-7)
        assert rows[m]["vs_adj_low"] == pytest.approx(want[m]["low"], rel=1e-7)
    # text: the columns name the correction, the note says which family
    assert cli_main(["leaderboard", str(tmp_path / "R"), "--versus", "random"]) == 0
    text = capsys.readouterr().out
    assert "p holm" in text and "holm ci" in text and "Holm's correction within each group's comparisons" in text
    assert cli_main(["leaderboard", str(tmp_path / "R"), "--versus", "random", "--correction", "none"]) == 0
    text = capsys.readouterr().out
    assert "p holm" not in text and "uncorrected for multiple comparisons (correction none)" in text


# ---------------------------------------------------------------------------------- effects

def test_effects_holm_by_hand(tmp_path):
    """test_analysis's effects folder: per comparison the cells' mean differences are known by
    hand; the family is the four comparisons not 0 by construction (structure domino_o ran as
    channel is left out)."""
    from test_analysis import write_effects

    write_effects(tmp_path / "R")
    assert cli_main(["effects", str(tmp_path / "R"), "--out", str(tmp_path / "E"), "--format", "png"]) == 0
    got = {(e["axis"], e["level_b"]): e for e in pq.read_table(tmp_path / "E" / "effects.parquet").to_pylist()}
    cells = {("base_input", "activation"): [10.0, 10.5], ("reduction", "l2"): [2.0, 2.5],
             ("scaling", "elements"): [6.0, 6.5], ("pointwise", "taylor"): [3.0, 3.0]}
    p = {k: stats.ttest_1samp(v, 0.0).pvalue for k, v in cells.items() if k[0] != "pointwise"}
    p[("pointwise", "taylor")] = 0.0      # no spread, mean 3: the t statistic is infinite
    order = sorted(p, key=p.get)
    adj = dict(zip(order, [min(1.0, max((4 - j) * p[order[j]] for j in range(i + 1))) for i in range(4)]))
    # two cells, one degree of freedom: p = 1 - 2/pi atan(|t|), t = mean / (sd / sqrt 2) = 41, 25, 9 for
    # base_input, scaling, reduction: 0.0155 x 3, 0.0255 x 2, 0.0704 x 1; 2 of the 4 survive
    assert [round(adj[k], 4) for k in order] == [0.0, 0.0466, 0.0509, 0.0704]
    for k, t in (((("base_input", "activation"), 41.0)), (("scaling", "elements"), 25.0), (("reduction", "l2"), 9.0)):
        assert p[k] == pytest.approx(1 - 2 / math.pi * math.atan(t))
    for k, v in cells.items():
        e = got[k]
        assert e["cell_p"] == pytest.approx(p[k], rel=1e-7, abs=1e-12)
        assert e["cell_p_adj"] == pytest.approx(adj[k], rel=1e-7, abs=1e-12)
        assert (e["correction"], e["n_cell_family"]) == ("holm", 4)
        level = 1 - (0.05 / (4 - order.index(k)) if adj[k] <= 0.05 else 0.05 / 2)
        half = stats.t.ppf(0.5 + level / 2, 1) * statistics.stdev(v) / math.sqrt(2)
        mean = sum(v) / 2
        assert e["cell_adj_level"] == pytest.approx(level)
        assert (e["cell_adj_ci_low"], e["cell_adj_ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    s = got[("structure", "domino_o")]
    assert (s["cell_p"], s["cell_p_adj"], s["cell_adj_ci_low"], s["cell_adj_ci_high"]) == (1.0, 1.0, 0.0, 0.0)
    # over the pairs: scaling elements - none, 7 pairs of 6 and one of 8
    d = [6.0] * 7 + [8.0]
    assert got[("scaling", "elements")]["p"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue, rel=1e-6)
    assert got[("scaling", "elements")]["n_family"] == 4
    md = (tmp_path / "E" / "effects.md").read_text()
    assert "| cell_p | cell_p_holm | cell_ci_holm |" in md and "Holm-adjusted" in md
    assert cli_main(["effects", str(tmp_path / "R"), "--out", str(tmp_path / "N"), "--format", "png",
                     "--correction", "none"]) == 0
    raw = {(e["axis"], e["level_b"]): e for e in pq.read_table(tmp_path / "N" / "effects.parquet").to_pylist()}
    assert raw[("scaling", "elements")]["cell_p_adj"] == raw[("scaling", "elements")]["cell_p"]
    assert "--correction none" in (tmp_path / "N" / "effects.md").read_text()


# ----------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("command, args, words", [
    ("leaderboard", ["--versus", "random", "--correction", "bonferroni"],
     "--correction 'bonferroni' is not known; choose holm"),
    ("leaderboard", ["--correction", "Holm"], "--correction 'Holm' is not known; choose holm"),
    ("leaderboard", ["--resamples", "-1"], "--resamples '-1': give a non-negative integer"),
    ("leaderboard", ["--resamples", "many"], "--resamples 'many': give a non-negative integer"),
    ("effects", ["--correction", "bh"], "--correction 'bh' is not known; choose holm"),
])
def test_bad_correction_or_resamples_is_one_line(tmp_path, capsys, command, args, words):
    write_board(tmp_path / "R")
    out = ["--out", str(tmp_path / "E")] if command == "effects" else []
    assert cli_main([command, str(tmp_path / "R"), *out, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "E").exists()


def test_bad_correction_from_python(tmp_path):
    write_board(tmp_path / "R")
    scores = read_scores(tmp_path / "R")
    with pytest.raises(PrunetaxError, match="correction 'sidak' is not known"):
        rank_scores(scores, versus="random", correction="sidak")
    with pytest.raises(PrunetaxError, match="resamples must be a non-negative integer"):
        rank_scores(scores, resamples=-5)
    from prunetax.benchmarks.analysis import component_effects
    with pytest.raises(PrunetaxError, match="correction 'x' is not known"):
        component_effects(scores.to_pylist(), correction="x")
