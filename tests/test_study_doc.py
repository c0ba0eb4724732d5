"""docs/study.md quotes numbers from the committed study results (results/study/): every table
of it is recomputed here, from those results, with the leaderboard, the component effects and
the similarity analysis, so that a change to the code or to the results that moves a quoted
number fails here instead of leaving the page wrong."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from prunetax.benchmarks.analysis import alike, component_effects
from prunetax.benchmarks.ranking import rank_scores
from prunetax.benchmarks.results import read_scores

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "study.md").read_text(encoding="utf-8").replace("\u2212", "-")
SCALINGS = ("none", "elements", "weights_removed", "layer_l1", "layer_l2")
DATASETS = {"MNIST": "mnist", "Fashion-MNIST": "fashion-mnist", "F-MNIST": "fashion-mnist"}
NUM = r"[+-]?\d+\.\d+"
DIFF = re.compile(rf"({NUM}) \[({NUM}), ({NUM})\]")


def section(start: str, end: str) -> str:
    a = DOC.index(start)
    return DOC[a:DOC.index(end, a)]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``text``, as lists of stripped cells."""
    lines = text.splitlines()
    return [[c.strip() for c in line.strip().strip("|").split("|")] for i, line in enumerate(lines)
            if line.startswith("|") and not line.startswith("|---")
            and not (i + 1 < len(lines) and lines[i + 1].startswith("|---"))]   # not a header


def board(grid: str, versus: str) -> dict:
    table = rank_scores(read_scores(ROOT / "results" / "study" / grid), by=("network", "dataset"), versus=versus)
    return {(r["network"], r["dataset"], r["metric_id"]): r for r in table.to_pylist()}


def same_diff(text: str, row: dict, places: int) -> None:
    m = DIFF.search(text)
    assert m, text
    got = tuple(float(v) for v in m.groups())
    want = (row["vs_mean"], row["vs_ci_low"], row["vs_ci_high"])
    assert got == tuple(round(v, places) for v in want), (text, want)


@pytest.mark.parametrize("grid, title", [("lenet5", "LeNet-5"), ("cifar10_quick", "cifar10_quick")])
def test_question_1_scaling_tables(grid, title):
    lb = board(grid, "scaling=none")
    mnist, fashion = f"{title} / MNIST (", f"{title} / Fashion-MNIST:"
    for start, end, data in ((mnist, fashion, "mnist"), (fashion, "Pooled over", "fashion-mnist")):
        rows = table_rows(section(start, end))
        assert len(rows) == 6, rows
        for cells in rows:
            base = cells[0].strip("`")
            for scaling, cell in zip(SCALINGS, cells[1:]):
                r = lb[(grid, data, f"{base}-{scaling}")]
                if scaling == "none":
                    mean, sigma = re.match(rf"({NUM}) ± ({NUM})", cell).groups()
                    assert (float(mean), float(sigma)) == (round(r["mean"], 1), round(r["pm2sigma"], 1)), cell
                else:
                    assert float(cell.split(":")[0]) == round(r["mean"], 1), cell
                    same_diff(cell.split(":", 1)[1], r, 1)


BASES = ("weight-value-l1-*,weight-value-l2-*,activation-value-l1-*,activation-taylor-abs_sum-*,"
         "activation-taylor-sqr_sum-*,activation-gradient-abs_sum-*")


@pytest.mark.parametrize("grid, start", [("lenet5", "Pooled over these 30 metrics (`prunetax effects results/study/lenet5"),
                                         ("cifar10_quick", "Pooled over these 30 metrics on cifar10_quick")])
def test_question_1_pooled_scaling_effects(grid, start):
    """The sentence after each network's scaling tables: each scaling against none, pooled over
    the 30 metrics (``prunetax effects --metrics``), with the interval over cells."""
    from prunetax.benchmarks.ranking import match_metrics, metric_patterns

    rows = read_scores(ROOT / "results" / "study" / grid).to_pylist()
    chosen = match_metrics([r["metric_id"] for r in rows], metric_patterns(BASES))
    assert len(chosen) == 30
    eff = {(e["dataset"], e["level_b"], e["level_a"]): e for e in component_effects(
        [r for r in rows if r["metric_id"] in chosen], by=("dataset",)) if e["axis"] == "scaling"}
    text = section(start, ".\n\n").replace("\n", " ")
    d = rf"({NUM}) \[({NUM}), ({NUM})\]"
    for scaling in ("weights_removed", "layer_l1", "layer_l2"):
        m = re.search(rf"`{scaling} - none` (?:is )?{d} (?:on MNIST )?and {d}", text)
        assert m, (scaling, text)
        for data, got in zip(("mnist", "fashion-mnist"), (m.groups()[:3], m.groups()[3:])):
            e, sign = (eff[(data, scaling, "none")], 1.0) if (data, scaling, "none") in eff else \
                (eff[(data, "none", scaling)], -1.0)
            want = [round(sign * e["mean_diff"], 2)] + [round(v, 2) for v in sorted(
                [sign * e["cell_ci_low"], sign * e["cell_ci_high"]])]
            assert [float(v) for v in got] == want, (scaling, data, got, want)


def test_question_2_effects_table():
    rows = read_scores(ROOT / "results" / "study" / "lenet5").to_pylist()
    eff = {(e["dataset"], e["axis"], e["level_b"], e["level_a"]): e for e in component_effects(rows, by=("dataset",))}
    axes = {"pointwise": "pointwise", "reduction": "reduction", "scaling": "scaling", "base input": "base_input"}
    body = table_rows(section("## 2. Do reduction", "(`indicator`"))
    assert len(body) == 5
    pattern = re.compile(rf"`(\w+) - (\w+)` ({NUM}) \[({NUM}), ({NUM})\]")
    for cells in body:
        axis = axes[cells[0].split(",")[0].strip()]
        for cell, data in zip(cells[1:], ("mnist", "fashion-mnist")):
            b, a, *nums = pattern.match(cell).groups()
            e = eff[(data, axis, b, a)] if (data, axis, b, a) in eff else None
            sign = 1.0
            if e is None:     # quoted as b - a where the effects table has a - b
                e, sign = eff[(data, axis, a, b)], -1.0
            want = sorted([sign * e["cell_ci_low"], sign * e["cell_ci_high"]])
            assert [float(v) for v in nums] == [round(sign * e["mean_diff"], 2)] + [round(v, 2) for v in want], cell


@pytest.mark.parametrize("net, start, end, n", [("resnet20", "resnet20 / MNIST (baselines", "Pooled over the five", 6),
                                                ("alexnet_cifar", "alexnet_cifar / MNIST (baselines", "Pooled over the two", 3)])
def test_question_3_domino_tables(net, start, end, n):
    lb = board("domino", "structure=channel")
    body = table_rows(section(start, end))
    assert len(body) == n
    for cells in body:
        metric = cells[0].strip("`")
        r = lb[(net, "mnist", metric)]
        mean, sigma = re.match(rf"({NUM}) ± ({NUM})", cells[1]).groups()
        assert (float(mean), float(sigma)) == (round(r["mean"], 2), round(r["pm2sigma"], 2)), cells
        if metric != "random":
            for structure, cell in zip(("domino_o", "domino_io"), cells[2:]):
                same_diff(cell, lb[(net, "mnist", f"{metric}-{structure}")], 2)


@pytest.mark.parametrize("grid, start, end", [
    ("lenet5", "## 4. The authors' best", "![accuracy while pruning, LeNet-5"),
    ("cifar10_quick", "On cifar10_quick (", "![accuracy while pruning, cifar10_quick")])
def test_question_4_best_against_the_literature(grid, start, end):
    lb = board(grid, "random")
    body = table_rows(section(start, end))
    assert len(body) == 15
    for cells in body:
        metric = cells[0].replace(" (best)", "")
        for data, (rank, stats, diff) in zip(("mnist", "fashion-mnist"), (cells[1:4], cells[4:7])):
            r = lb[(grid, data, metric)]
            mean, sigma = re.match(rf"({NUM}) ± ({NUM})", stats).groups()
            assert (int(rank), float(mean), float(sigma)) == (r["rank"], round(r["mean"], 2), round(r["pm2sigma"], 2))
            if metric != "random":
                same_diff(diff, r, 2)


@pytest.mark.parametrize("net, n_metrics, start, end", [
    ("lenet5", 308, "Against what the grid shows", "Across all"),
    ("cifar10_quick", 33, "Against the grid, by band of", "Across its 528")])
@pytest.mark.parametrize("data", ["mnist", "fashion-mnist"])
def test_question_5_bands_from_the_committed_similarity(data, net, n_metrics, start, end):
    t = pq.read_table(ROOT / "docs" / "study" / f"q5_similarity_{net}_{data}" / f"similarity_{net}_{data}.parquet")
    ids = list(dict.fromkeys(t.column("metric_a").to_pylist()))
    M = len(ids)
    assert M == n_metrics

    def square(col):
        return np.array([np.nan if v is None else v for v in t.column(col).to_pylist()]).reshape(M, M)

    bands, corr = alike(square("spearman"), square("overlap_first_n"), square("rate_gap"))
    body = table_rows(section(start, end))
    assert len(body) == 4
    for b, cells in zip(bands, body):
        pairs, overlap, gap = cells[1:4] if data == "mnist" else cells[4:7]
        assert (int(pairs.replace(",", "")), float(overlap), float(gap)) == (
            b["pairs"], round(b["mean_overlap"], 3), round(b["mean_gap"], 2)), cells
    quoted = re.search(r"overlap is ([+-]\d\.\d+) \(MNIST\) and ([+-]\d\.\d+) \(Fashion-MNIST\); with the rate gap, "
                       r"([+-]\d\.\d+) and ([+-]\d\.\d+)", DOC[DOC.index(end):].replace("\n", " "))
    k = 0 if data == "mnist" else 1
    assert float(quoted.group(1 + k)) == round(corr["rho_vs_overlap"], 3)
    assert float(quoted.group(3 + k)) == round(corr["rho_vs_gap"], 3)


def test_question_5_the_pair_that_ranks_alike_and_prunes_apart():
    """filter_l1 against its weights_removed form on cifar10_quick: rho, the overlap of the first
    10 removals and the rate gap, read from the committed similarity tables."""
    text = section("One pair shows what", "![metric similarity, cifar10_quick").replace("\n", " ")
    m = re.search(r"\(ρ (\d\.\d+) and (\d\.\d+), .*? share (\d+) % and (\d+) % of their first 10 removals, "
                  r"yet their rates differ by (\d+\.\d+) and (\d+\.\d+) points", text)
    assert m, text
    for k, data in enumerate(("mnist", "fashion-mnist")):
        t = pq.read_table(ROOT / "docs" / "study" / f"q5_similarity_cifar10_quick_{data}"
                          / f"similarity_cifar10_quick_{data}.parquet").to_pylist()
        r = next(r for r in t if (r["metric_a"], r["metric_b"]) == ("filter_l1", "weight-value-l1-weights_removed"))
        assert float(m.group(1 + k)) == round(r["spearman"], 3)
        assert int(m.group(3 + k)) == round(100 * r["overlap_first_n"])
        assert float(m.group(5 + k)) == round(r["rate_gap"], 2)
