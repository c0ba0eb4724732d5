"""A baseline whose accuracy target is not above chance stops its cell (issue: a chance-level
baseline was pruned and ranked without a word); --allow-weak-baseline prunes it anyway."""
from __future__ import annotations

import re
import subprocess
import sys


def bench(tmp_path, *extra):
    argv = ["bench", "--networks", "lenet5", "--datasets", "mnist", "--metrics", "filter_l1", "--seeds", "0",
            "--epochs", "1", "--train-limit", "300", "--test-images", "300", "--threshold", "95", "--device", "cpu",
            "--results", str(tmp_path / "R"), "--cache-dir", str(tmp_path / "cache"), "--top", "0", *extra]
    return subprocess.run([sys.executable, "-m", "prunetax", *argv], capture_output=True, text=True, timeout=600)


def test_target_at_or_below_chance_stops_the_cell(tmp_path):
    # threshold 95 points: the target (baseline - 95) is below 10 % (chance on 10 classes) for any baseline
    p = bench(tmp_path)
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    m = re.search(r"baseline lenet5/mnist/seed0 reaches ([\d.]+) % test accuracy \(chance 10\.00 %\), so its target "
                  r"(-?[\d.]+) % is not above chance", last)
    assert m, last
    assert abs(float(m.group(1)) - 95 - float(m.group(2))) < 0.011          # target = accuracy - threshold
    assert "recipe: 1 epoch at lr 0.05 on the first 300 images" in last and "--allow-weak-baseline" in last
    assert not (tmp_path / "R" / "scores").exists()                          # nothing ranked
    p = bench(tmp_path, "--allow-weak-baseline")
    assert p.returncode == 0, p.stderr
    assert "bench: 1 cells run" in p.stdout
