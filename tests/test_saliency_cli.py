"""``prunetax saliency`` end to end, in a subprocess, on a tiny LeNet-5 checkpoint made here.

Every run uses a temporary PRUNETAX_CACHE, so no baseline is trained or read from the user's
cache. Bad input (a BatchNorm metric on a network without BatchNorm, an unknown metric, a missing
or NaN checkpoint) must exit 2 with a one-line error and write nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def workdir(tmp_path):
    from prunetax.benchmarks.models import create_model

    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=1, num_classes=10, input_size=32)
    torch.save(model.state_dict(), tmp_path / "lenet5.pt")
    return tmp_path


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRUNETAX_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "prunetax", "saliency", "--model", "lenet5", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def one_line_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_paper_preset_writes_every_metric_and_channel(workdir):
    import pyarrow.parquet as pq

    out = workdir / "s.parquet"
    p = run(workdir, "--checkpoint", str(workdir / "lenet5.pt"), "--metrics", "paper", "--images", "16",
            "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip().splitlines()) == 1 and "21560 rows" in p.stdout, p.stdout
    table = pq.read_table(out)
    assert table.schema.names == ["metric", "metric_id", "layer", "channel", "unit", "value"]
    assert table.num_rows == 308 * 70
    rows = table.to_pydict()
    assert len(set(rows["metric_id"])) == 308
    assert rows["metric"] == rows["metric_id"]     # a preset's metrics are asked for by their ids
    per_metric = {}
    for m in rows["metric_id"]:
        per_metric[m] = per_metric.get(m, 0) + 1
    assert set(per_metric.values()) == {70}
    assert not list(workdir.glob("*.tmp*")) and not list(workdir.glob(".*.parquet*"))

    # one value by hand, from the checkpoint alone: the first conv's channel 0 under
    # weight-value-l1-none is sum |W[0]| + |b[0]| (nothing removed: every input is active)
    state = torch.load(workdir / "lenet5.pt", weights_only=True)
    first = next(k for k, v in state.items() if k.endswith(".weight") and v.dim() == 4)
    layer = first[: -len(".weight")]
    expected = float(state[first][0].abs().sum() + state[layer + ".bias"][0].abs())
    got = [v for m, lay, c, v in zip(rows["metric_id"], rows["layer"], rows["channel"], rows["value"])
           if m == "weight-value-l1-none" and lay == layer and c == 0]
    assert len(got) == 1
    assert got[0] == pytest.approx(expected, rel=1e-5)


def test_bn_metric_on_lenet5_is_one_line_error(workdir):
    out = workdir / "bn.parquet"
    p = run(workdir, "--checkpoint", str(workdir / "lenet5.pt"), "--metrics", "weight-value-l1-none,gfbs",
            "--out", str(out))
    one_line_error(p, "BatchNorm")
    assert not out.exists()


def test_nan_checkpoint_is_one_line_error_and_no_file(workdir):
    state = torch.load(workdir / "lenet5.pt", weights_only=True)
    first = next(k for k, v in state.items() if k.endswith(".weight") and v.dim() == 4)
    state[first][0, 0, 0, 0] = float("nan")
    torch.save(state, workdir / "nan.pt")
    out = workdir / "nan.parquet"
    p = run(workdir, "--checkpoint", str(workdir / "nan.pt"), "--metrics", "paper", "--images", "8", "--out", str(out))
    one_line_error(p, "NaN")
    assert not out.exists()
    assert not [f for f in workdir.iterdir() if f.name.startswith(("nan.parquet", ".nan.parquet"))]


def test_unknown_metric_is_one_line_error(workdir):
    out = workdir / "u.parquet"
    p = run(workdir, "--checkpoint", str(workdir / "lenet5.pt"), "--metrics", "weight-bogus-l1-none",
            "--out", str(out))
    one_line_error(p, "bogus")
    assert not out.exists()


def test_missing_checkpoint_is_one_line_error(workdir):
    out = workdir / "m.parquet"
    p = run(workdir, "--checkpoint", str(workdir / "absent.pt"), "--out", str(out))
    one_line_error(p, "--checkpoint", "absent.pt")
    assert not out.exists()


def test_names_asked_for_are_kept_beside_the_canonical_ids(workdir):
    """Column metric: the name as asked (a named metric in lower case, an authors' name or id as
    typed); metric_id: the canonical id. A metric asked twice keeps its first name."""
    import pyarrow.parquet as pq

    out = workdir / "n.parquet"
    p = run(workdir, "--checkpoint", str(workdir / "lenet5.pt"), "--images", "8", "--out", str(out), "--metrics",
            "FILTER_L1, weight-value-l2_norm-none,activation-value-l1-elements,mean_activation,0.5 * filter_l2")
    assert p.returncode == 0, p.stderr
    assert "wrote 280 rows (4 metrics x 70 channels)" in p.stdout, p.stdout
    t = pq.read_table(out)
    assert t.column_names[:2] == ["metric", "metric_id"]
    pairs = list(dict.fromkeys(zip(t["metric"].to_pylist(), t["metric_id"].to_pylist())))
    assert pairs == [("filter_l1", "weight-value-l1-none"), ("weight-value-l2_norm-none", "weight-value-l2-none"),
                     ("activation-value-l1-elements", "activation-value-l1-elements"),
                     ("0.5 * filter_l2", "0.5 * weight-value-l2-none")]


def test_trains_only_when_missing_says_so_first_and_reuses_trains_baseline(tmp_path, monkeypatch, capsys):
    """--epochs / --train-limit pick the baseline: `train` makes it, `saliency` with the same values
    reuses it (nothing trained, nothing said); a missing one is announced before it trains."""
    from prunetax.benchmarks.cli import main

    monkeypatch.setenv("PRUNETAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    small = ["--model", "lenet5", "--epochs", "1", "--train-limit", "200", "--device", "cpu"]
    assert main(["train", *small]) == 0
    out, err = capsys.readouterr()
    notice = ("prunetax train: no cached baseline of lenet5 on mnist (seed 0, 1 epoch, first 200 images); "
              "training it now: 1 epoch x 200 images (2 steps of 128), roughly ")
    assert err.startswith(notice) and " s a step (timed here just now; the machine's load changes it)\n" in err, err
    assert err.splitlines()[1].startswith("lenet5 on mnist, seed 0: training 1 epoch at lr")   # Baseline.get's line
    assert out.startswith("lenet5 on mnist, seed 0, 1 epoch on the first 200 images: test accuracy "), out
    checkpoint = out.split("checkpoint ")[1].split(" in ")[0]

    metrics = ["--metrics", "filter_l1", "--images", "16"]
    assert main(["saliency", *small, *metrics, "--out", "a.parquet"]) == 0
    out, err = capsys.readouterr()
    assert f"(baseline {checkpoint})" in out and "training" not in err, (out, err)

    assert main(["saliency", *small, "--seed", "1", *metrics, "--out", "b.parquet"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("prunetax saliency: no cached baseline of lenet5 on mnist (seed 1, 1 epoch, first 200 "
                          "images); training it now: 1 epoch x 200 images"), err
    assert "seed1" in out and checkpoint not in out

    # similarity writes files a user may commit or share: they name the cached baseline by its cache
    # entry, never by this machine's path to the cache
    import pyarrow.parquet as pq

    entry = os.path.basename(os.path.dirname(checkpoint))
    assert entry.startswith("lenet5_mnist_seed0_") and str(tmp_path) in checkpoint
    assert main(["similarity", *small, "--metrics", "filter_l1,filter_l2", "--images", "16", "--out", "S"]) == 0
    out, err = capsys.readouterr()
    md = (tmp_path / "S" / "clusters_lenet5_mnist.md").read_text()
    assert f"(cached baseline {entry}; 16 eval images)" in md and str(tmp_path) not in md, md
    meta = pq.read_schema(tmp_path / "S" / "similarity_lenet5_mnist.parquet").metadata
    assert meta[b"prunetax_source"] == f"cached baseline {entry}".encode()
