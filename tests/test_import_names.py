"""prunetax installs one top-level name: a user's own metrics.py, benchmarks/ or enumerate.py
cannot clash with it, and importing it leaves the builtin ``enumerate`` alone."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import prunetax

USER_SCRIPT = textwrap.dedent("""
    import builtins, json
    import prunetax                                  # the package first: nothing of it shadows the user's
    from prunetax.metrics import analyze, saliencies
    from prunetax.benchmarks import protocol
    from prunetax.enumerate import metric_space
    import prunetax.enumerate
    spec = prunetax.MetricSpec.parse("activation-taylor-abs_sum_norm-weights_removed")
    assert enumerate is builtins.enumerate, "the builtin enumerate was shadowed"
    pairs = list(enumerate("ab"))
    import metrics, benchmarks.protocol              # the user's own modules, from the working folder
    from enumerate import WHO as enum_who
    print(json.dumps({"spec": str(spec), "pairs": pairs, "paper": len(metric_space("paper")),
                      "metrics": metrics.WHO, "protocol": benchmarks.protocol.WHO, "enumerate": enum_who,
                      "prunetax_metrics": analyze.__module__, "prunetax_protocol": protocol.__name__}))
""")


def _user_folder(tmp_path):
    (tmp_path / "metrics.py").write_text("WHO = 'user metrics.py'\n")
    (tmp_path / "enumerate.py").write_text("WHO = 'user enumerate.py'\n")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    (tmp_path / "benchmarks" / "protocol.py").write_text("WHO = 'user benchmarks/protocol.py'\n")
    (tmp_path / "main.py").write_text(USER_SCRIPT)
    return tmp_path


def test_user_modules_named_like_prunetax_parts_do_not_clash(tmp_path):
    folder = _user_folder(tmp_path)
    proc = subprocess.run([sys.executable, "main.py"], cwd=folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["spec"] == "activation-taylor-abs_sum-weights_removed"   # the authors' _norm suffix dropped
    assert out["pairs"] == [[0, "a"], [1, "b"]]
    assert out["paper"] == 308
    assert out["metrics"] == "user metrics.py"
    assert out["protocol"] == "user benchmarks/protocol.py"
    assert out["enumerate"] == "user enumerate.py"
    assert out["prunetax_metrics"].startswith("prunetax.metrics.")
    assert out["prunetax_protocol"] == "prunetax.benchmarks.protocol"


def test_cli_runs_from_a_folder_with_clashing_names(tmp_path):
    folder = _user_folder(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "prunetax", "enumerate", "--preset", "domino", "--count"],
                          cwd=folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "924"


def test_import_prunetax_is_light_and_every_public_name_resolves():
    # a fresh interpreter: importing the package must not import torch (the CLI's quick errors rely on it)
    code = "import sys, prunetax; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    missing = [name for name in prunetax.__all__ if getattr(prunetax, name, None) is None]
    assert missing == []
    for name in ("MetricSpec", "parse_metric", "metric_space", "analyze", "saliencies", "run", "run_grid",
                 "leaderboard", "register_component", "register_named", "register_model", "register_layer_rule"):
        assert name in prunetax.__all__
