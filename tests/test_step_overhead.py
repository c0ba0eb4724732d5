"""prunetax.benchmarks.perf.step_overhead runs on the CPU and prints its counts; the audit counts right."""
import os
import re

import torch

from prunetax.benchmarks.perf import step_overhead
from prunetax.benchmarks.perf.audit import Audit


def test_step_overhead_runs_and_reports_few_syncs(capsys):
    assert step_overhead.main(["--steps", "1", "--test-images", "20", "--batch-size", "4",
                               "--metrics", "weight-value-l1-none,activation-taylor-abs_sum-elements"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r"syncs/step: ([0-9.]+) ops/step: ([0-9]+) device-less factories/step: ([0-9.]+) "
                     r"host Python s/step: ([0-9.]+)", last)
    assert m, last
    assert float(m.group(1)) <= 3 and int(m.group(2)) > 0 and float(m.group(3)) == 0


def test_audit_counts_syncs_factories_and_ops_by_hand():
    x = torch.arange(6.0, device="cpu")
    with Audit(roots=(os.path.dirname(os.path.abspath(__file__)) + os.sep,)) as a:
        y = x * 2                       # 1 op
        bool(y.any())                   # 1 op, 1 sync
        y[y > 3]                        # 2 ops (gt, index), 1 sync (boolean index)
        int(y.argmax())                 # 1 op, 1 sync
        torch.zeros(3)                  # 1 op, a factory without device=
        torch.zeros(3, device="cpu")    # 1 op, explicit: not counted as a factory
        y.view(2, 3)                    # a view: no kernel
    assert a.sync_count == 3, a.syncs
    assert a.factory_count == 1 and next(iter(a.factories))[1] == "zeros"
    assert a.views >= 1 and 7 <= a.ops <= 9, (a.ops, a.views)
