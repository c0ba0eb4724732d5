"""A baseline whose accuracy target is not above chance stops its cell (issue: a chance-level
baseline was pruned and ranked without a word); --allow-weak-baseline prunes it anyway. The error
that says so, BaselineError, lives with the baselines (prunetax.benchmarks.baseline); its old
homes in the taxonomy still give it, with a DeprecationWarning."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest


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


def test_baseline_error_lives_with_the_baselines():
    import prunetax
    from prunetax.benchmarks.baseline import BaselineError
    from prunetax.taxonomy.errors import PrunetaxError

    assert issubclass(BaselineError, PrunetaxError) and prunetax.BaselineError is BaselineError
    with pytest.warns(DeprecationWarning, match="moved to prunetax.benchmarks.baseline.BaselineError"):
        from prunetax.taxonomy.errors import BaselineError as from_errors
    with pytest.warns(DeprecationWarning, match="moved to prunetax.benchmarks.baseline.BaselineError"):
        from prunetax.taxonomy import BaselineError as from_taxonomy
    assert from_errors is from_taxonomy is BaselineError
    import prunetax.taxonomy as taxonomy
    assert "BaselineError" not in taxonomy.__all__
    with pytest.raises(AttributeError):
        taxonomy.NoSuchName


def test_taxonomy_imports_no_harness():
    """The shim imports the harness only when BaselineError is asked for."""
    code = ("import sys; import prunetax.taxonomy, prunetax.taxonomy.errors; "
            "print(sorted(m for m in ('prunetax.benchmarks.baseline', 'prunetax.benchmarks.setup', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)
