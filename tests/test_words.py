"""Clear words (issue 16): errors name the flag typed, --help lists the choices, the CIFAR error
gives a command that downloads and the folder searched, result tables keep the names asked for,
and a command that trains says so first, with roughly how long."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prunetax.benchmarks.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
MINE = ("structure", "saliency", "train", "enumerate", "describe")


def error_line(capsys, argv) -> str:
    """The one stderr line of ``prunetax ARGV``, which must exit 2 and print nothing on stdout."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, (out, err)
    return err.rstrip("\n")


# --- errors name the flag the user typed ------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "lenet5", "--seed", "-1"], "--seed -1: must be 0 or more"),
    (["train", "--model", "lenet5", "--epochs", "0"], "--epochs 0: must be 1 or more"),
    (["train", "--model", "lenet5", "--train-limit", "0"], "--train-limit 0: must be 1 or more"),
    (["train", "--model", "lenet6"], "--model lenet6: unknown model 'lenet6'"),
    (["train", "--model", "lenet5", "--dataset", "mnits"], "--dataset mnits: unknown data set 'mnits'"),
    (["train", "--model", "lenet5", "--device", "tpu"], "--device tpu: unknown device 'tpu'; choose one of auto, cpu"),
    (["saliency", "--model", "lenet5", "--out", "x.parquet", "--images", "0"], "--images 0: must be 1 or more"),
    (["saliency", "--model", "lenet5", "--out", "x.parquet", "--batch-size", "0"], "--batch-size 0: must be 1 or more"),
    (["saliency", "--model", "lenet5", "--out", "x.parquet", "--seed", "-2"], "--seed -2: must be 0 or more"),
    (["saliency", "--model", "lenet5", "--out", "x.parquet", "--epochs", "0"], "--epochs 0: must be 1 or more"),
    (["saliency", "--model", "lenet5", "--out", "x.parquet", "--checkpoint", "m.pt", "--train-limit", "9"],
     "--train-limit chooses the baseline to train or reuse; with --checkpoint nothing is trained, so leave "
     "--train-limit out"),
    (["saliency", "--model", "lenet6", "--out", "x.parquet"], "--model lenet6: unknown model 'lenet6'"),
    (["saliency", "--model", "lenet5", "--dataset", "mnits", "--out", "x.parquet"],
     "--dataset mnits: unknown data set"),
    (["saliency", "--model", "lenet5", "--device", "tpu", "--out", "x.parquet"], "--device tpu: unknown device"),
    (["saliency", "--model", "lenet5", "--out", "x.parquet", "--metrics", "paper,weight-bogus-l1-none"],
     "--metrics weight-bogus-l1-none: unknown pointwise 'bogus'"),
    (["saliency", "--model", "lenet5", "--out", "x.parquet", "--metrics", "Random"],
     "--metrics Random: random is a pruning reference, not a saliency; 'prunetax bench --metrics random' prunes "
     "with it"),
    (["saliency", "--model", "lenet5", "--out", "x.parquet", "--metrics", " , "],
     "--metrics is empty; give a preset (paper, domino, extended) or metric ids"),
])
def test_errors_name_the_flag(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNETAX_CACHE", str(tmp_path / "cache"))
    line = error_line(capsys, argv)
    assert line.startswith(f"prunetax {argv[0]}: error: {message}"), line
    assert not (tmp_path / "cache").exists() and not (tmp_path / "x.parquet").exists()  # nothing trained


def test_saliency_checks_the_metrics_and_images_before_it_trains(capsys, tmp_path, monkeypatch):
    """gfbs on lenet5 (no BatchNorm) or too many images: refused before any baseline trains."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNETAX_CACHE", str(tmp_path / "cache"))
    line = error_line(capsys, ["saliency", "--model", "lenet5", "--metrics", "filter_l1,gfbs", "--out", "x.parquet"])
    assert line.startswith("prunetax saliency: error: --metrics: metric gfbs cannot be computed on this network: "
                           "metric bn_weight-value-l1-layer_l2 reads BatchNorm parameters"), line
    line = error_line(capsys, ["saliency", "--model", "lenet5", "--images", "5001", "--out", "x.parquet"])
    assert line == "prunetax saliency: error: --images 5001 exceeds the 5000 eval images of mnist"
    assert not list((tmp_path / "cache").glob("baselines/*/model.pt"))


def test_bad_checkpoints_name_the_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.pt").write_text("not a checkpoint\n")
    (tmp_path / "folder.pt").mkdir()
    base = ["saliency", "--model", "lenet5", "--metrics", "filter_l1", "--out", "x.parquet", "--checkpoint"]
    assert error_line(capsys, base + ["absent.pt"]) == "prunetax saliency: error: --checkpoint absent.pt: no such file"
    assert error_line(capsys, base + ["folder.pt"]).startswith(
        "prunetax saliency: error: --checkpoint folder.pt: cannot read it (")
    assert error_line(capsys, base + ["garbage.pt"]).startswith(
        "prunetax saliency: error: --checkpoint garbage.pt: not a state_dict saved with torch.save (torch.load: ")
    torch.save({"nothing": torch.zeros(1)}, tmp_path / "other.pt")
    assert error_line(capsys, base + ["other.pt"]).startswith(
        "prunetax saliency: error: --checkpoint other.pt: does not fit --model lenet5: ")


# --- the CIFAR error: the folder searched, the variable that sets it, a command that downloads ---

def test_cifar_error_names_the_folder_the_variable_and_a_real_download_command(tmp_path, monkeypatch):
    from prunetax.benchmarks.data import DataError, load_dataset

    monkeypatch.setenv("PRUNETAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PRUNETAX_DATA", str(tmp_path / "data"))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"cifar10: no data_batch_1 in {tmp_path / 'data' / 'cifar-10-batches-py'} (data folder "
                          f"{tmp_path / 'data'}, from $PRUNETAX_DATA; $PRUNETAX_CACHE does not move it)"), msg
    command = msg.split("download it there with '")[1].split("'")[0]
    assert command == "prunetax train --model lenet5 --dataset cifar10 --download --epochs 1 --train-limit 256"
    args = build_parser().parse_args(shlex.split(command)[1:])      # the command exists, --download with it
    assert args.command == "train" and args.download and args.train_limit == 256

    monkeypatch.delenv("PRUNETAX_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match=r"\(data folder .*home/\.cache/prunetax/data, from the default: set "
                                        r"PRUNETAX_DATA or pass --data-root DIR to look elsewhere; "):
        load_dataset("cifar100")
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", root=tmp_path / "mine")
    msg = str(e.value)
    assert f"(data folder {tmp_path / 'mine'}, from --data-root;" in msg
    command = msg.split("download it there with '")[1].split("'")[0]
    assert command.endswith(f"--download --epochs 1 --train-limit 256 --data-root {tmp_path / 'mine'}")


# --- --help lists the choices, without importing torch -----------------------------------------

def test_help_lists_the_choices_and_stays_torch_free():
    code = ("import argparse, sys, importlib\n"
            f"for name in {MINE!r}:\n"
            "    p = argparse.ArgumentParser(prog=name)\n"
            "    importlib.import_module('prunetax.benchmarks.commands.' + name).add_arguments(p)\n"
            "    print('=' + name); print(p.format_help())\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("TORCH False"), p.stdout[-200:]
    helps = {h.split("\n", 1)[0]: " ".join(h.split()) for h in p.stdout.split("=")[1:]}

    from prunetax.benchmarks.commands._flags import DATASETS, MODEL_HELP
    from prunetax.benchmarks.data import list_datasets
    from prunetax.benchmarks.models import list_models
    from prunetax.taxonomy import NAMED

    assert set(DATASETS) == set(list_datasets())   # the built-in ones, all named
    examples = MODEL_HELP.split("(", 1)[1].split("...")[0].split(", ")
    assert set(e for e in examples if e) <= set(list_models())
    for name in ("structure", "saliency", "train"):
        assert "'prunetax list models' lists them all" in helps[name], helps[name]
    for name in ("saliency", "train"):
        assert "mnist, fashion-mnist, cifar10, cifar100, imagefolder:PATH" in helps[name]
        assert "--epochs E" in helps[name] and "--train-limit N" in helps[name]
    for name in ("saliency", "describe"):
        assert ", ".join(NAMED) in helps[name]


# --- names kept: saliencies(...).to_arrow() --------------------------------------------------

def test_to_arrow_keeps_the_names_asked_for(one_thread):
    from prunetax.metrics import analyze, saliencies
    from prunetax.taxonomy import NAMED, parse_metric

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    structure = analyze(model, torch.zeros(1, 1, 8, 8)).restricted(("conv",))
    batch = [(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))]
    asked = ["gfbs", " filter_l1 ", "weight-value-l1-none", NAMED["fisher"], parse_metric("weight-value-l2-none"),
             "weight-value-l2_norm-none"]
    result = saliencies(model, structure, batch, asked)
    t = result.to_arrow()
    assert t.column_names == ["metric", "metric_id", "layer", "channel", "unit", "value"]
    pairs = list(dict.fromkeys(zip(t["metric"].to_pylist(), t["metric_id"].to_pylist())))
    assert pairs == [("gfbs", NAMED["gfbs"].definition), ("filter_l1", "weight-value-l1-none"),
                     ("fisher", "activation-taylor-sqr_sum-none"), ("weight-value-l2-none", "weight-value-l2-none")]
    assert t.num_rows == 4 * 10
    assert result.metrics == [p[1] for p in pairs]
    assert [result.name(m) for m in result.values] == [p[0] for p in pairs]


# --- a command that trains says so first ---------------------------------------------------------

def test_training_notice_words():
    from prunetax.benchmarks.commands.train import duration, training_notice
    from prunetax.benchmarks.training import recipe_for

    data = SimpleNamespace(name="mnist", train_y=torch.zeros(55000))
    recipe = recipe_for("lenet5", "mnist", 2)
    assert training_notice("saliency", "lenet5", data, 0, recipe, "cpu", 0.5) == (
        "prunetax saliency: no cached baseline of lenet5 on mnist (seed 0, 2 epochs); training it now: 2 epochs x "
        "55,000 images (860 steps of 128), roughly 7 min on cpu at 0.5 s a step (timed here just now; the "
        "machine's load changes it)")
    assert [duration(s) for s in (0.2, 42, 89.6, 90, 3600, 5400, 36000)] == [
        "1 s", "42 s", "90 s", "2 min", "60 min", "1.5 h", "10.0 h"]
