"""prunetax.benchmarks.perf.gpu_cell --size tiny runs end to end (CPU) and prints its five target lines."""
import os
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_gpu_cell_tiny(tmp_path):
    env = {**os.environ, "PRUNETAX_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "cell.csv"
    proc = subprocess.run([sys.executable, "-m", "prunetax.benchmarks.perf.gpu_cell", "--size", "tiny", "--device", "cpu",
                           "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    last = lines[-5:]
    for n, line in zip(range(1, 6), last):
        assert line.startswith(f"target {n}: "), line
        assert re.search(r"ratio: [0-9.]+$", line) or "skipped: " in line, line
    assert "ratio: " in last[0] and "ratio: " in last[1] and "ratio: " in last[2]   # targets 1-3 always run
    assert out.read_text().startswith("device,size,target,quantity,value,unit,note")
