"""prunetax plot on a hand-built results folder: every figure in PNG and SVG, readable files."""
from __future__ import annotations

import json

import pytest

from prunetax.benchmarks.cell import Cell, CellResult, Protocol
from prunetax.benchmarks.cli import main as cli_main
from prunetax.benchmarks.results import ROW_COLUMNS, write_cell_result

import matplotlib  # noqa: E402,F401  (the test extra installs it: a broken import must fail, not skip)

SPECS = [(b, p, r, s, t) for b in ("weight", "activation") for p in ("value", "taylor")
         for r in ("l1", "l2") for s in ("none", "elements") for t in ("channel", "domino_io")]


def _results(root):
    for seed in (0, 1):
        ids = ["-".join(x for x in sp if x != "channel") for sp in SPECS] + ["random"]
        c = Cell("lenet5", "mnist", seed, tuple(ids), Protocol())
        rows, traj = [], []
        for i, (mid, sp) in enumerate(zip(ids, SPECS + [None])):
            rate = 10.0 + 2 * i + seed
            r = dict.fromkeys(ROW_COLUMNS)
            r.update(cell_id=c.id, metric_id=mid, kind="spec" if sp else "reference", network="lenet5",
                     dataset="mnist", seed=seed, threshold=5.0, threshold_mode="absolute", baseline_accuracy=95.0,
                     conv_weights_removed_pct=rate, protocol=json.dumps(c.protocol.to_dict()))
            if sp:
                r.update(zip(("base_input", "pointwise", "reduction", "scaling", "structure"), sp))
                r["aggregation"] = "per_image"
            rows.append(r)
            traj += [{"cell_id": c.id, "metric_id": mid, "network": "lenet5", "dataset": "mnist", "seed": seed,
                      "step": s, "unit": s, "conv_weights_removed_pct": rate * s / 5,
                      "channels_removed_pct": s, "macs_removed_pct": s,
                      "accuracy": 95.0 - (s / 5) ** 3 * 5} for s in range(9)]
        write_cell_result(root, CellResult(c, rows, traj, 1.0))


def test_plot_all_figures(tmp_path, capsys):
    _results(tmp_path / "res")
    rc = cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "fig")])
    assert rc == 0
    out = capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "fig").iterdir())
    stems = ["accuracy", "domino", "pointwise_input", "reduction_scaling"]
    assert names == sorted(f"{s}_lenet5_mnist.{f}" for s in stems for f in ("png", "svg"))
    assert out.startswith("plot: wrote 8 files (png, svg)")
    for p in (tmp_path / "fig").iterdir():
        head = p.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else b"<svg" in p.read_bytes()[:2000]
    svg = (tmp_path / "fig" / "reduction_scaling_lenet5_mnist.svg").read_text()
    assert "reduction x scaling" in svg or "reduction" in svg


def test_plot_chosen_metrics_and_errors(tmp_path, capsys):
    _results(tmp_path / "res")
    assert cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "f"), "--metrics",
                     "weight-value-l1-none,random", "--format", "svg"]) == 0
    assert all(p.suffix == ".svg" for p in (tmp_path / "f").iterdir())
    capsys.readouterr()
    assert cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "g"), "--metrics", "nope"]) == 2
    assert "metric 'nope' is not in" in capsys.readouterr().err
    assert cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "g"), "--format", "jpg"]) == 2
    assert cli_main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "g")]) == 2
    assert not (tmp_path / "g").exists()


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys):
    import builtins
    real = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real(name, *a, **kw)

    _results(tmp_path / "res")
    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert cli_main(["plot", str(tmp_path / "res"), "--out", str(tmp_path / "g")]) == 2
    assert "pip install prunetax[plot]" in capsys.readouterr().err
