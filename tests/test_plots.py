"""prunetax plot on hand-built results folders: every figure in PNG, SVG and PDF, readable files,
one set per (network, data set, recipe, protocol), the command in the metadata, and the numbers
behind the bars and curves checked against values computed here."""
from __future__ import annotations

import json

import numpy as np
import pytest

from prunetax.benchmarks.cell import Cell, CellResult, Protocol
from prunetax.benchmarks.cli import main as cli_main
from prunetax.benchmarks.results import ROW_COLUMNS, write_cell_result

import matplotlib  # noqa: E402,F401  (the test extra installs it: a broken import must fail, not skip)

SPECS = [(b, p, r, s, t) for b in ("weight", "activation") for p in ("value", "taylor")
         for r in ("l1", "l2") for s in ("none", "elements") for t in ("channel", "domino_o", "domino_io")]
COMPONENTS = ("base_input", "pointwise", "reduction", "scaling", "structure")


def mid(sp) -> str:
    return "-".join(x for x in sp if x != "channel")


def rate_of(sp, seed: int) -> float:
    """A written formula: activation +10, taylor +4, l2 +2, elements +6, domino_o as channel, domino_io +3."""
    b, p, r, s, t = sp
    return (20.0 + 10 * (b == "activation") + 4 * (p == "taylor") + 2 * (r == "l2") + 6 * (s == "elements")
            + 3 * (t == "domino_io") + seed)


def write(root, net="lenet5", data="mnist", seeds=(0, 1), baseline=95.0, protocol=Protocol(), censored=(),
          identical=("activation-taylor-l2-elements-domino_io",)):
    """Cells of SPECS + random + oracle under ``protocol``. ``identical``: metrics given the curve
    of the best one."""
    best = mid(SPECS[-1])
    for seed in seeds:
        ids = [mid(sp) for sp in SPECS] + ["random", "oracle"]
        c = Cell(net, data, seed, tuple(ids), protocol)
        rows, traj = [], []
        for m, sp in zip(ids, SPECS + [None, None]):
            rate = rate_of(sp, seed) if sp else (5.0 + seed if m == "random" else 60.0 + seed)
            curve_of = best if m in identical else m
            r = dict.fromkeys(ROW_COLUMNS)
            r.update(cell_id=c.id, metric_id=m, kind="spec" if sp else "reference", network=net, dataset=data,
                     seed=seed, threshold=protocol.threshold,
                     threshold_mode="relative" if protocol.relative else "absolute", baseline_accuracy=baseline + seed,
                     conv_weights_removed_pct=rate, crossed=m not in censored,
                     protocol=json.dumps(c.protocol.to_dict(), sort_keys=True), ran_as=m)
            if sp:
                r.update(zip(COMPONENTS, sp))
                r["aggregation"] = "per_image"
                if sp[4] == "domino_o":  # on a chain, domino_o is the channel metric
                    r["ran_as"] = mid(sp[:4] + ("channel",))
            rows.append(r)
            crate = rate_of(SPECS[-1], seed) if curve_of == best else rate
            traj += [{"cell_id": c.id, "metric_id": m, "network": net, "dataset": data, "seed": seed,
                      "step": s, "unit": s, "conv_weights_removed_pct": crate * s / 5,
                      "channels_removed_pct": s, "macs_removed_pct": s,
                      "accuracy": None if s % 2 else baseline + seed - (s / 5) ** 3 * 5} for s in range(1, 9)]
        write_cell_result(root, CellResult(c, rows, traj, 1.0))


def test_plot_all_figures_formats_and_metadata(tmp_path, capsys):
    from PIL import Image

    write(tmp_path / "res")
    rc = cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "fig")])
    assert rc == 0
    out = capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "fig").iterdir())
    stems = ["accuracy", "domino", "pointwise_input", "reduction_scaling"]
    assert names == sorted(f"{s}_lenet5_mnist.{f}" for s in stems for f in ("png", "svg", "pdf"))
    assert out.startswith("plot: wrote 12 files (4 figures x png, svg, pdf)")
    command = f"prunetax plot {tmp_path / 'res'} --out {tmp_path / 'fig'} --format png,svg,pdf"
    for p in (tmp_path / "fig").iterdir():
        data = p.read_bytes()
        if p.suffix == ".png":
            img = Image.open(p)
            assert img.text["Source"] == command and img.text["Software"].startswith("prunetax")
            assert "lenet5 / mnist" in img.text["Description"]
        elif p.suffix == ".svg":
            assert b"<svg" in data[:2000] and command.encode() in data
        else:
            assert data.startswith(b"%PDF") and b"prunetax" in data
    svg = (tmp_path / "fig" / "reduction_scaling_lenet5_mnist.svg").read_text()
    for text in ("reduction", "scaling", "conv weights removed at the threshold", "n=4", "+-1 sd"):
        assert text in svg, text
    acc = (tmp_path / "fig" / "accuracy_lenet5_mnist.svg").read_text()
    for text in ("seed 0", "seed 1", "target: baseline - 5 points (per seed)", "identical curves"):
        assert text in acc, text
    dom = (tmp_path / "fig" / "domino_lenet5_mnist.svg").read_text()
    assert "hatched: the Domino variant ran as the channel metric" in dom


def test_bar_numbers_by_hand():
    """Bars of reduction x scaling: the mean over the 8 channel metrics of each (reduction, scaling)
    (2 base inputs x 2 pointwise x 1 aggregation, each its mean over seeds 0, 1), sd over them."""
    from prunetax.benchmarks.plots import component_cells
    board = []
    for sp in SPECS:
        vals = [rate_of(sp, s) for s in (0, 1)]
        board.append({"metric_id": mid(sp), "kind": "spec", **dict(zip(COMPONENTS, sp)), "aggregation": "per_image",
                      "mean": float(np.mean(vals)), "censored": False})
    groups, series, cells, notes = component_cells(board, "reduction", "scaling")
    assert groups == ["l1", "l2"] and series == ["none", "elements"]  # the taxonomy's order
    for r in ("l1", "l2"):
        for s in ("none", "elements"):
            means = [np.mean([rate_of((b, p, r, s, "channel"), seed) for seed in (0, 1)])
                     for b in ("weight", "activation") for p in ("value", "taylor")]
            m, sd, n = cells[(r, s)]
            assert m == pytest.approx(np.mean(means)) and sd == pytest.approx(np.std(means, ddof=1)) and n == 4
    assert cells[("l2", "none")][0] - cells[("l1", "none")][0] == pytest.approx(2.0)
    assert not any("unbalanced" in n or "balanced:" in n for n in notes)
    # drop one metric: the context it belonged to is left out of every bar (balanced)
    lost = board[:]
    lost = [b for b in lost if b["metric_id"] != "weight-value-l1-none"]
    _, _, cells2, notes2 = component_cells(lost, "reduction", "scaling")
    assert any(n.startswith("balanced: averaged over the 3 combinations") for n in notes2)
    assert all(c[2] == 3 for c in cells2.values())


def test_groups_split_by_protocol_and_chance_warning(tmp_path, capsys):
    write(tmp_path / "res", protocol=Protocol(threshold=5.0))
    write(tmp_path / "res", protocol=Protocol(threshold=2.0), seeds=(0,))
    write(tmp_path / "res", net="cifar10_quick", data="cifar10", baseline=12.4, seeds=(0,))
    assert cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "f"), "--format", "svg",
                     "--metrics", "weight-value-l1-none,random"]) == 0
    names = sorted(p.name for p in (tmp_path / "f").iterdir())
    acc = [n for n in names if n.startswith("accuracy_lenet5_mnist_r")]
    assert len(acc) == 2 and "accuracy_cifar10_quick_cifar10.svg" in names   # two protocols: two figures
    texts = {n: (tmp_path / "f" / n).read_text() for n in acc}
    assert sorted("threshold 2 points" in t for t in texts.values()) == [False, True]
    chance = (tmp_path / "f" / "accuracy_cifar10_quick_cifar10.svg").read_text()
    assert "within the threshold of chance (10 %)" in chance
    assert "chance" not in texts[acc[0]]


def test_plot_errors(tmp_path, capsys):
    write(tmp_path / "res", seeds=(0,))
    assert cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "g"), "--metrics", "nope"]) == 2
    assert "metric 'nope' is not in" in capsys.readouterr().err
    assert cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "g"), "--format", "jpg"]) == 2
    (tmp_path / "empty").mkdir()
    assert cli_main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "no results in" in err
    assert not (tmp_path / "g").exists()


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    import builtins
    real = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real(name, *a, **kw)

    write(tmp_path / "res", seeds=(0,))
    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "g")]) == 2
    assert "pip install prunetax[plot]" in capsys.readouterr().err


def test_curves_draw_partial_tests_at_their_partial_accuracy(tmp_path):
    """A step the sequential test decided early (accuracy null, 150 of 250 right) is drawn at 60 %,
    a whole-set step at its accuracy, an untested step not at all; the figure says how many
    points are partial."""
    from prunetax.benchmarks.plots import accuracy_curves, partial_points

    rows = [{"metric_id": "m", "seed": 0, "step": 1, "conv_weights_removed_pct": 10.0, "accuracy": None,
             "test_images": 250, "test_correct": 150},
            {"metric_id": "m", "seed": 0, "step": 2, "conv_weights_removed_pct": 20.0, "accuracy": None,
             "test_images": None, "test_correct": None},
            {"metric_id": "m", "seed": 0, "step": 3, "conv_weights_removed_pct": 30.0, "accuracy": 41.5,
             "test_images": 1000, "test_correct": 415},
            {"metric_id": "m", "seed": 0, "step": 4, "conv_weights_removed_pct": 40.0, "accuracy": 30.0}]  # old folder
    assert accuracy_curves(rows, {0: 99.0}, "m") == {0: [(0.0, 99.0), (10.0, 60.0), (30.0, 41.5), (40.0, 30.0)]}
    assert partial_points(rows, ["m"]) == 1 and partial_points(rows, ["other"]) == 0


def test_target_lines_are_the_protocols_targets(tmp_path, monkeypatch):
    """Each seed's target line is ``Protocol.target`` of its baseline, to the bit: with a relative
    threshold too (95 - 3 % of 95 is 92.15; 95 * (1 - 0.03), the plots' own formula before, is
    92.14999999999999), and the legend says what the threshold is."""
    from matplotlib.axes import Axes

    drawn = []
    real = Axes.axhline
    monkeypatch.setattr(Axes, "axhline", lambda self, y=0, *a, **k: (drawn.append(y), real(self, y, *a, **k))[1])
    protocol = Protocol(threshold=3.0, relative=True)
    write(tmp_path / "res", protocol=protocol)
    assert cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "f"), "--format", "svg"]) == 0
    assert drawn == [protocol.target(95.0), protocol.target(96.0)] and drawn[0] == 92.15
    assert "target: baseline - 3 % of baseline (per seed)" in (tmp_path / "f" / "accuracy_lenet5_mnist.svg").read_text()


def test_chance_warning_reads_the_protocols_target():
    """The chance warning compares ``Protocol.target`` with chance: 10.5 % less 5 % of it is at
    chance on CIFAR-10, 12 % less 5 % of it is not, 12 % less 5 points is."""
    from prunetax.benchmarks.plots import chance_warning

    relative, absolute = Protocol(threshold=5.0, relative=True), Protocol(threshold=5.0)
    assert "within the threshold of chance (10 %)" in chance_warning("cifar10", [10.5], relative)
    assert chance_warning("cifar10", [12.0], relative) is None
    assert chance_warning("cifar10", [12.0], absolute).startswith("baseline accuracy 12.0 %")
    assert chance_warning("cifar10", [12.0], None) is None and chance_warning("imagenet", [12.0], absolute) is None
