"""The cell cost script (issue 13, benchmarks/perf/cell_cost.py) at its tiny size: one cell run with
shared masks and the sequential test off, then on, gives equal scores and prints its ratios."""
import re

import pytest

from prunetax.benchmarks.perf import cell_cost

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_cell_runs_both_ways_with_equal_scores_and_prints_the_ratios(tmp_path, capsys):
    assert cell_cost.main(["--size", "tiny", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^scores: (\d+) of \1 metrics equal", out, re.M), out
    runs = [line for line in out.splitlines() if re.match(r"^ *(off|on) \(share=", line)]
    assert len(runs) == 2 and all("wall" in r and "load" in r for r in runs), out
    ratios = {name: float(x) for name, x in re.findall(r"^(.+?) off/on.* ratio: ([\d.]+)$", out, re.M)}
    assert set(ratios) == {"saliency image-passes", "test image-passes", "test MAC-weighted",
                           "FLOP-weighted work", "wall time"}, out
    assert out.rstrip().splitlines()[-1].startswith("wall time") and "load" in out.rstrip().splitlines()[-1]
    assert ratios["saliency image-passes"] > 1.0 and ratios["test image-passes"] >= 1.0, out
    assert ratios["FLOP-weighted work"] > 1.0, out
    assert "the 'on' run's counts of the passes without the levers equal the 'off' run's image-passes: True" in out
    # --only-on reads the 'off' work from those counts: the same ratios of image-passes, no wall ratio
    assert cell_cost.main(["--size", "tiny", "--cache-dir", str(tmp_path), "--only-on"]) == 0
    alone = capsys.readouterr().out
    again = {name: float(x) for name, x in re.findall(r"^(.+?) off/on.* ratio: ([\d.]+)$", alone, re.M)}
    assert again["saliency image-passes"] == ratios["saliency image-passes"], alone
    assert again["test image-passes"] == ratios["test image-passes"], alone
    assert "wall time" not in again and "off: not run (--only-on)" in alone
