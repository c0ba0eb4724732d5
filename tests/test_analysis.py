"""Component effects and metric similarity, against numbers computed by hand on small inputs, and
``prunetax effects`` / ``prunetax similarity`` end to end on hand-built results and a small network."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pyarrow.parquet as pq
import pytest

from prunetax.benchmarks.analysis import (average_ranks, clusters, component_effects, rank_similarity,
                                          removal_overlap, t_quantile)
from prunetax.benchmarks.cell import Cell, CellResult, Protocol
from prunetax.benchmarks.cli import main as cli_main
from prunetax.benchmarks.results import ROW_COLUMNS, write_cell_result
from prunetax.taxonomy.vocab import AXES

T975 = {1: 12.706204736174694, 2: 4.302652729749462, 5: 2.5705818356363146, 7: 2.364624251592784,
        10: 2.228138851986274, 30: 2.0422724563012378}   # Student's t table, 97.5 % quantiles


# ---------------------------------------------------------------------------------- statistics

def test_t_quantile_against_the_table():
    for df, want in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert t_quantile(0.95, 4) == pytest.approx(2.1318467863266495, rel=1e-9)
    assert t_quantile(0.995, 3) == pytest.approx(5.840909309733355, rel=1e-9)
    assert t_quantile(0.025, 10) == pytest.approx(-T975[10], rel=1e-9)


def test_t_pvalue_and_interval_at_another_level_against_scipy():
    from scipy import stats

    from prunetax.benchmarks.analysis import mean_ci, t_interval_at, t_pvalue

    rng = np.random.default_rng(3)
    for n in (2, 3, 4, 8, 31):
        for shift in (0.0, 0.4, 2.0):
            v = list(rng.normal(shift, 1.0, size=n))
            assert t_pvalue(v) == pytest.approx(stats.ttest_1samp(v, 0.0).pvalue, rel=1e-8, abs=1e-14)
            _, lo, hi = mean_ci(v, 0.95)
            half = stats.t.ppf(1 - 0.01 / 2, n - 1) * stats.sem(v)
            assert t_interval_at(lo, hi, n, 0.95, 0.99) == pytest.approx((np.mean(v) - half, np.mean(v) + half))
    # one degree of freedom by hand: p = 1 - 2/pi atan(|t|); (2.5, 3.5): mean 3, sd sqrt(0.5), t = 3 / 0.5 = 6
    assert t_pvalue([2.5, 3.5]) == pytest.approx(1 - 2 / math.pi * math.atan(6.0))
    assert t_pvalue([1.0]) is None and t_pvalue([0.0, 0.0]) == 1.0 and t_pvalue([2.0, 2.0]) == 0.0


def test_average_ranks_by_hand():
    got = average_ranks(np.array([[3.0, 1.0, 2.0, 2.0, np.inf, np.inf]]))
    assert got.tolist() == [[4.0, 1.0, 2.5, 2.5, 5.5, 5.5]]


def test_rank_correlations_by_hand():
    # no ties: d = (-1, 1, -1, 1, 0), rho = 1 - 6 * 4 / (5 * 24) = 0.8; 2 of 10 pairs discordant: tau = 0.6
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    rho, tau = rank_similarity(np.array([x, [2.0, 1.0, 4.0, 3.0, 5.0], x[::-1], [7.0] * 5]))
    assert rho[0, 1] == pytest.approx(0.8) and tau[0, 1] == pytest.approx(0.6)
    assert rho[0, 2] == pytest.approx(-1.0) and tau[0, 2] == pytest.approx(-1.0)
    assert rho[0, 0] == pytest.approx(1.0) and tau[1, 1] == pytest.approx(1.0)
    assert np.isnan(rho[0, 3]) and np.isnan(tau[0, 3])          # a metric that ranks every unit alike
    assert np.allclose(rho[:3, :3], rho[:3, :3].T) and np.allclose(tau[:3, :3], tau[:3, :3].T)
    # ties: x = (1, 2, 2, 3), y = (1, 2, 3, 3). Pairs: (1,2) +, (1,3) +, (1,4) +, (2,3) x tied, (2,4) +,
    # (3,4) y tied: tau-b = 4 / sqrt(5 * 5) = 0.8. Ranks (1, 2.5, 2.5, 4) and (1, 2, 3.5, 3.5):
    # centred (-1.5, 0, 0, 1.5) and (-1.5, -0.5, 1, 1): rho = 3.75 / sqrt(4.5 * 4.5)
    rho, tau = rank_similarity(np.array([[1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 3.0]]), chunk=2)
    assert tau[0, 1] == pytest.approx(0.8) and rho[0, 1] == pytest.approx(3.75 / 4.5)


def test_kendall_chunks_agree_with_a_loop():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 6, size=(5, 23)).astype(float)   # many ties
    _, tau = rank_similarity(v, chunk=7)
    for a in range(5):
        for b in range(5):
            s = na = nb = 0
            for i in range(23):
                for j in range(i + 1, 23):
                    sa, sb = np.sign(v[a, i] - v[a, j]), np.sign(v[b, i] - v[b, j])
                    s, na, nb = s + sa * sb, na + abs(sa), nb + abs(sb)
            assert tau[a, b] == pytest.approx(s / math.sqrt(na * nb))


def test_clusters_by_hand():
    rho = np.array([[1.0, 0.95, 0.1, 0.2],
                    [0.95, 1.0, 0.15, 0.1],
                    [0.1, 0.15, 1.0, 0.92],
                    [0.2, 0.1, 0.92, 1.0]])
    order, label = clusters(rho, 0.9)
    assert label[0] == label[1] and label[2] == label[3] and label[0] != label[2]
    assert sorted(order) == [0, 1, 2, 3] and abs(order.index(0) - order.index(1)) == 1
    assert abs(order.index(2) - order.index(3)) == 1
    _, label = clusters(rho, 0.94)                 # C, D merge at distance 0.08 > 0.06: apart
    assert label[0] == label[1] and len({label[2], label[3], label[0]}) == 3


def test_removal_overlap_by_hand():
    t = [{"cell_id": c, "metric_id": m, "step": s + 1, "unit": u}
         for c, per in (("c1", {"a": [1, 2, 3], "b": [3, 2, 9]}), ("c2", {"a": [5, 6], "b": [5, 6]}))
         for m, units in per.items() for s, u in enumerate(units)]
    overlap, cells = removal_overlap(t, ["a", "b", "z"], 2)
    assert overlap[0, 1] == pytest.approx((1 / 2 + 2 / 2) / 2) and cells[0, 1] == 2   # {1,2}&{3,2}; {5,6}&{5,6}
    assert overlap[0, 0] == 1.0 and np.isnan(overlap[0, 2]) and cells[2, 2] == 0
    overlap, cells = removal_overlap(t, ["a", "b"], 3)                                # c2 has 2 steps only
    assert overlap[0, 1] == pytest.approx(2 / 3) and cells[0, 1] == 1


# ---------------------------------------------------------------------------------- effects

def spec_id(comps) -> str:
    b, p, r, s, t, g = comps
    return "-".join([b, p, r, s] + ([t] if t != "channel" else []) + ([g] if g != "per_image" else []))


def effect_rows(seed: int) -> list[tuple]:
    """(components, rate, crossed, ran_as) of one cell: activation +10, l2 +2, elements +6; in seed 1
    activation-value-l2-elements +2 more; a domino_o that ran as its channel metric; two taylor
    metrics, the weight one censored."""
    out = []
    for b in ("weight", "activation"):
        for r in ("l1", "l2"):
            for s in ("none", "elements"):
                comps = (b, "value", r, s, "channel", "per_image")
                rate = 20.0 + 10 * (b == "activation") + 2 * (r == "l2") + 6 * (s == "elements")
                rate += 2.0 if (seed == 1 and comps[:4] == ("activation", "value", "l2", "elements")) else 0.0
                out.append((comps, rate, True, spec_id(comps)))
    out.append((("weight", "value", "l1", "none", "domino_o", "per_image"), 20.0, True, "weight-value-l1-none"))
    out.append((("weight", "taylor", "l1", "none", "channel", "per_image"), 99.0, False, "weight-taylor-l1-none"))
    out.append((("activation", "taylor", "l1", "none", "channel", "per_image"), 33.0, True, "activation-taylor-l1-none"))
    return out


def write_effects(root):
    for seed in (0, 1):
        specs = effect_rows(seed)
        c = Cell("lenet5", "mnist", seed, tuple(spec_id(s[0]) for s in specs), Protocol())
        rows = []
        for comps, rate, crossed, ran_as in specs:
            r = dict.fromkeys(ROW_COLUMNS)
            r.update(cell_id=c.id, metric_id=spec_id(comps), kind="spec", **dict(zip(AXES, comps)), network="lenet5",
                     dataset="mnist", seed=seed, threshold=5.0, threshold_mode="absolute", baseline_accuracy=95.0,
                     conv_weights_removed_pct=rate, crossed=crossed, ran_as=ran_as,
                     protocol=json.dumps(c.protocol.to_dict(), sort_keys=True))
            rows.append(r)
        write_cell_result(root, CellResult(c, rows, [], 1.0))


def expect(diffs, cells):
    """mean, ci over pairs, ci over the cells' means, by hand (t table)."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    cm = [sum(v) / len(v) for v in cells]
    cmean = sum(cm) / len(cm)
    csd = math.sqrt(sum((m - cmean) ** 2 for m in cm) / (len(cm) - 1))
    chalf = T975[len(cm) - 1] * csd / math.sqrt(len(cm))
    return mean, sd, (mean - half, mean + half), (cmean - chalf, cmean + chalf)


def test_rate_gap_and_alike_by_hand():
    from prunetax.benchmarks.analysis import alike, rate_gap

    rows = [{"cell_id": "c1", "metric_id": "a", "crossed": True, "conv_weights_removed_pct": 10.0},
            {"cell_id": "c1", "metric_id": "b", "crossed": True, "conv_weights_removed_pct": 16.0},
            {"cell_id": "c1", "metric_id": "c", "crossed": False, "conv_weights_removed_pct": 90.0},
            {"cell_id": "c2", "metric_id": "a", "crossed": True, "conv_weights_removed_pct": 20.0},
            {"cell_id": "c2", "metric_id": "b", "crossed": True, "conv_weights_removed_pct": 18.0},
            {"cell_id": "c2", "metric_id": "c", "crossed": True, "conv_weights_removed_pct": 50.0},
            {"cell_id": "c2", "metric_id": "x", "crossed": True, "conv_weights_removed_pct": 1.0}]
    gap, cells = rate_gap(rows, ["a", "b", "c"])
    assert gap[0, 1] == gap[1, 0] == (6 + 2) / 2 and cells[0, 1] == 2        # |10-16|, |20-18|
    assert gap[0, 2] == 30.0 and cells[0, 2] == 1                               # c did not cross in c1
    assert gap[0, 0] == 0.0 and cells[2, 2] == 1
    # four metrics: rho of the pairs (01 .95, 02 .6, 03 .2, 12 -.5, 13 .7, 23 .91)
    rho = np.eye(4)
    for (i, j), v in {(0, 1): .95, (0, 2): .6, (0, 3): .2, (1, 2): -.5, (1, 3): .7, (2, 3): .91}.items():
        rho[i, j] = rho[j, i] = v
    ov = np.full((4, 4), np.nan)
    for (i, j), v in {(0, 1): .8, (0, 2): .5, (0, 3): .1, (1, 2): 0.0, (1, 3): .6}.items():   # (2, 3) unknown
        ov[i, j] = ov[j, i] = v
    bands, corr = alike(rho, ov, None)
    assert [b["pairs"] for b in bands] == [2, 2, 1, 1]
    assert bands[0]["mean_rho"] == pytest.approx((.95 + .91) / 2) and bands[0]["mean_overlap"] == .8
    assert bands[0]["overlap_pairs"] == 1 and bands[1]["mean_overlap"] == pytest.approx(.55)
    assert (bands[3]["rho_low"], bands[3]["rho_high"], bands[3]["mean_overlap"]) == (-1.0, 0.0, 0.0)
    assert bands[0]["mean_gap"] is None and corr["rho_vs_gap"] is None and corr["gap_pairs"] == 0
    # rho and overlap of the 5 known pairs rank identically: Spearman 1
    assert corr["rho_vs_overlap"] == pytest.approx(1.0) and corr["overlap_pairs"] == 5


def test_effects_by_hand(tmp_path, capsys):
    write_effects(tmp_path / "R")
    assert cli_main(["effects", str(tmp_path / "R"), "--out", str(tmp_path / "E"), "--format", "png,pdf"]) == 0
    out = capsys.readouterr().out
    assert "effects: 5 comparisons over 28 pairs from 2 cells" in out
    assert sorted(p.name for p in (tmp_path / "E").iterdir()) == ["effects.md", "effects.parquet", "effects.pdf",
                                                                  "effects.png"]
    got = {(e["axis"], e["level_a"], e["level_b"]): e for e in pq.read_table(tmp_path / "E" / "effects.parquet").to_pylist()}
    assert set(got) == {("base_input", "weight", "activation"), ("pointwise", "value", "taylor"),
                        ("reduction", "l1", "l2"), ("scaling", "none", "elements"),
                        ("structure", "channel", "domino_o")}
    # scaling: elements - none in 4 contexts x 2 cells: 6 everywhere but (activation, l2) in seed 1: 8
    for key, base in ((("scaling", "none", "elements"), 6.0), (("reduction", "l1", "l2"), 2.0),
                      (("base_input", "weight", "activation"), 10.0)):
        e = got[key]
        diffs = [base] * 7 + [base + 2]
        mean, sd, ci, cci = expect(diffs, [[base] * 4, [base] * 3 + [base + 2]])
        assert (e["n_pairs"], e["n_cells"]) == (8, 2)
        assert e["mean_diff"] == pytest.approx(mean) and e["sd"] == pytest.approx(sd)
        assert (e["ci_low"], e["ci_high"]) == pytest.approx(ci)
        assert (e["cell_ci_low"], e["cell_ci_high"]) == pytest.approx(cci)
        assert e["b_better"] == 1.0 and e["confidence"] == 0.95
    assert got[("scaling", "none", "elements")]["mean_diff"] == pytest.approx(6.25)
    assert got[("scaling", "none", "elements")]["ci_low"] == pytest.approx(6.25 - 2.364624251592784 * 0.25)
    # base_input also compares weight-taylor (censored) with activation-taylor: left out, counted
    assert got[("base_input", "weight", "activation")]["n_censored"] == 2
    # pointwise: activation-taylor-l1-none 33 - activation-value-l1-none 30 = 3 in each cell; weight's censored
    p = got[("pointwise", "value", "taylor")]
    assert (p["n_pairs"], p["mean_diff"], p["sd"], p["n_censored"]) == (2, 3.0, 0.0, 2)
    assert (p["ci_low"], p["ci_high"]) == (3.0, 3.0)
    # structure: domino_o ran as the channel metric: difference 0, counted as identical
    s = got[("structure", "channel", "domino_o")]
    assert (s["n_pairs"], s["mean_diff"], s["n_identical"], s["b_better"]) == (2, 0.0, 2, 0.0)
    md = (tmp_path / "E" / "effects.md").read_text()
    assert "| scaling | elements - none | 8 | 2 | +6.25 |" in md and "prunetax effects" in md
    # keep the censored pairs: weight-taylor 99 enters at its final rate
    rows = [dict(r) for r in __import__("prunetax.benchmarks.results", fromlist=["x"]).read_scores(
        tmp_path / "R").to_pylist()]
    kept = {(e["axis"], e["level_a"]): e for e in component_effects(rows, keep_censored=True)}
    assert kept[("pointwise", "value")]["n_pairs"] == 4
    assert kept[("pointwise", "value")]["mean_diff"] == pytest.approx((3 + 3 + 79 + 79) / 4)


def test_cells_on_one_baseline_count_once():
    """Two grids' cells of one seed share its baseline: one draw for the interval over cells."""
    def row(cell, digest, scaling, rate):
        return {"cell_id": cell, "metric_id": f"weight-value-l1-{scaling}", "kind": "spec", "base_input": "weight",
                "pointwise": "value", "reduction": "l1", "scaling": scaling, "structure": "channel",
                "aggregation": "per_image", "conv_weights_removed_pct": rate, "crossed": True, "ran_as": None,
                "baseline_digest": digest, "protocol": "{}"}
    # seed 0's baseline in two cells (differences 2 and 4), seed 1's in one (difference 9)
    rows = [row("a0", "d0", "none", 10.0), row("a0", "d0", "elements", 12.0),
            row("b0", "d0", "none", 10.0), row("b0", "d0", "elements", 14.0),
            row("a1", "d1", "none", 20.0), row("a1", "d1", "elements", 29.0)]
    e = next(e for e in component_effects(rows) if e["axis"] == "scaling")
    assert (e["n_pairs"], e["n_cells"], e["mean_diff"]) == (3, 2, 5.0)
    means = [3.0, 9.0]                                   # baseline d0: (2 + 4) / 2; d1: 9
    half = T975[1] * statistics.stdev(means) / math.sqrt(2)
    assert (e["cell_ci_low"], e["cell_ci_high"]) == (pytest.approx(6.0 - half), pytest.approx(6.0 + half))
    for r in rows:                                       # no digest (older folders): each cell counts
        r["baseline_digest"] = None
    assert next(e for e in component_effects(rows) if e["axis"] == "scaling")["n_cells"] == 3


def test_effects_among_chosen_metrics(tmp_path, capsys):
    write_effects(tmp_path / "R")
    assert cli_main(["effects", str(tmp_path / "R"), "--out", str(tmp_path / "E"), "--format", "png",
                     "--metrics", "weight-*"]) == 0
    got = {(e["axis"], e["level_a"], e["level_b"]): e for e in pq.read_table(tmp_path / "E" / "effects.parquet").to_pylist()}
    # weight metrics only: no base_input pair is left; scaling elements - none is 6 in each of 2 contexts x 2 cells
    assert not any(axis == "base_input" for axis, _, _ in got)
    sc = got[("scaling", "none", "elements")]
    assert (sc["n_pairs"], sc["n_cells"], sc["mean_diff"], sc["sd"]) == (4, 2, 6.0, 0.0)
    assert got[("reduction", "l1", "l2")]["n_pairs"] == 4 and got[("reduction", "l1", "l2")]["mean_diff"] == 2.0
    assert "6 metrics (weight-*)" in (tmp_path / "E" / "effects.md").read_text()
    assert "--metrics 'weight-*'" in (tmp_path / "E" / "effects.md").read_text()
    capsys.readouterr()
    assert cli_main(["effects", str(tmp_path / "R"), "--out", str(tmp_path / "F"), "--metrics", "bn_weight-*"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metric 'bn_weight-*' is not in" in err and not (tmp_path / "F").exists()


def test_effects_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["effects", str(tmp_path / "empty"), "--out", str(tmp_path / "E")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results in" in err
    write_effects(tmp_path / "R")
    assert cli_main(["effects", str(tmp_path / "R"), "--by", "colour"]) == 2
    assert "cannot split by 'colour'" in capsys.readouterr().err
    assert not (tmp_path / "E").exists()


# ---------------------------------------------------------------------------------- similarity

def test_similarity_command_end_to_end(tmp_path, capsys):
    """A random-init lenet5 (no training): the Spearman of two metrics equals a rank correlation
    computed here from ``prunetax saliency``'s values; overlaps from hand-built trajectories."""
    import torch

    from prunetax.benchmarks.models import create_model

    torch.manual_seed(0)
    ckpt = tmp_path / "lenet5.pt"
    torch.save(create_model("lenet5", 1, 10, 32).state_dict(), ckpt)
    ids = ["weight-value-l1-none", "weight-value-l2-none", "activation-taylor-l1-none",
           "activation-value-l2-elements"]
    res = tmp_path / "R"
    units = {ids[0]: [3, 1, 4, 15], ids[1]: [3, 4, 1, 2], ids[2]: [7, 8, 9, 10]}
    c = Cell("lenet5", "mnist", 0, tuple(units), Protocol())
    traj = [{"cell_id": c.id, "metric_id": m, "network": "lenet5", "dataset": "mnist", "seed": 0, "step": s + 1,
             "unit": u, "conv_weights_removed_pct": 1.0, "channels_removed_pct": 1.0, "macs_removed_pct": 1.0,
             "accuracy": None} for m, us in units.items() for s, u in enumerate(us)]
    rows = []
    for m, rate in zip(units, (10.0, 14.0, 30.0)):
        r = dict.fromkeys(ROW_COLUMNS)
        r.update(cell_id=c.id, metric_id=m, network="lenet5", dataset="mnist", seed=0, conv_weights_removed_pct=rate,
                 crossed=True)
        rows.append(r)
    write_cell_result(res, CellResult(c, rows, traj, 1.0))
    common = ["--model", "lenet5", "--checkpoint", str(ckpt), "--metrics", ",".join(ids), "--images", "32"]
    out = tmp_path / "S"
    assert cli_main(["similarity", *common, "--out", str(out), "--results", str(res), "--first", "3",
                     "--format", "png,svg"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("similarity: 4 metrics x 70 units of lenet5 / mnist")
    assert sorted(p.name for p in out.iterdir()) == [
        "clusters_lenet5_mnist.md", "clusters_lenet5_mnist.parquet", "similarity_lenet5_mnist.parquet",
        "similarity_lenet5_mnist.png", "similarity_lenet5_mnist.svg"]
    pairs = pq.read_table(out / "similarity_lenet5_mnist.parquet")
    assert b"prunetax similarity" in pairs.schema.metadata[b"prunetax_command"]
    got = {(r["metric_a"], r["metric_b"]): r for r in pairs.to_pylist()}
    assert len(got) == 16 and all(got[(m, m)]["spearman"] == pytest.approx(1.0) for m in ids)
    # overlap of the first 3 removals, by hand: {3,1,4} & {3,4,1} = 3; & {7,8,9} = 0; activation-value: no run
    assert got[(ids[0], ids[1])]["overlap_first_n"] == pytest.approx(1.0)
    assert got[(ids[0], ids[2])]["overlap_first_n"] == 0.0 and got[(ids[0], ids[2])]["overlap_cells"] == 1
    assert got[(ids[0], ids[3])]["overlap_first_n"] is None
    # rate gaps: |10 - 14|, |10 - 30|; activation-value-l2-elements never ran
    assert (got[(ids[0], ids[1])]["rate_gap"], got[(ids[1], ids[0])]["rate_gap"]) == (4.0, 4.0)
    assert got[(ids[0], ids[2])]["rate_gap"] == 20.0 and got[(ids[0], ids[2])]["rate_cells"] == 1
    assert got[(ids[0], ids[3])]["rate_gap"] is None and got[(ids[0], ids[3])]["rate_cells"] == 0
    assert "rank alike -> prune alike" in printed and "## Do metrics that rank alike prune alike?" in (
        out / "clusters_lenet5_mnist.md").read_text()
    # the same values through prunetax saliency, ranked here (lenet5 is a chain: one channel per unit)
    assert cli_main(["saliency", *common, "--out", str(tmp_path / "sal.parquet")]) == 0
    sal = pq.read_table(tmp_path / "sal.parquet").to_pylist()
    vec = {m: [r["value"] for r in sorted((r for r in sal if r["metric_id"] == m), key=lambda r: r["unit"])]
           for m in ids}

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        for pos, i in enumerate(order):
            out[i] = pos + 1.0
        return out

    for a, b in ((ids[0], ids[1]), (ids[0], ids[2]), (ids[2], ids[3])):
        assert len(set(vec[a])) == 70 and len(set(vec[b])) == 70          # no ties: the textbook formula holds
        d2 = sum((x - y) ** 2 for x, y in zip(ranks(vec[a]), ranks(vec[b])))
        rho = 1 - 6 * d2 / (70 * (70 ** 2 - 1))
        assert got[(a, b)]["spearman"] == pytest.approx(rho, abs=1e-12)
        assert got[(b, a)]["spearman"] == pytest.approx(rho, abs=1e-12)
    clusters_md = (out / "clusters_lenet5_mnist.md").read_text()
    assert "# Metric similarity: lenet5 / mnist" in clusters_md and "4 metrics ranking 70 units" in clusters_md
    cl = pq.read_table(out / "clusters_lenet5_mnist.parquet").to_pylist()
    assert sorted(r["metric_id"] for r in cl) == sorted(ids) and sorted(r["order"] for r in cl) == [0, 1, 2, 3]


def test_similarity_errors(capsys):
    assert cli_main(["similarity", "--model", "lenet5", "--metrics", "weight-value-l1-none"]) == 2
    assert "--metrics weight-value-l1-none: one metric; similarity compares two or more" in capsys.readouterr().err
    assert cli_main(["similarity", "--model", "lenet5", "--min-rho", "2"]) == 2
    assert "--min-rho 2: must be in [-1, 1]" in capsys.readouterr().err
