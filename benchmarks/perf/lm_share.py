"""Issue 13, a lever not built: what share of a paper-308 saliency pass the Levenberg-Marquardt
recursion (the 100 ``hessian_lm`` / ``taylor2_lm`` metrics) takes.

    python -m benchmarks.perf.lm_share

For lenet5 and resnet20 (random weights, 1x32x32 inputs, 32 random images, 1 thread), times
``saliencies`` of all 308 metrics and of the 208 without LM, interleaved, 4 times each (the
first dropped), and prints the medians and the LM share = (all - without) / all, with the load.
"""
import os
import statistics
import time

import torch


def main() -> None:
    from prunetax.benchmarks.models import create_model
    from prunetax.enumerate import metric_space
    from prunetax.metrics import analyze, saliencies

    torch.set_num_threads(1)
    torch.manual_seed(0)
    for name in ("lenet5", "resnet20"):
        m = create_model(name, in_channels=1, num_classes=10, input_size=32).eval()
        st = analyze(m, torch.randn(1, 1, 32, 32))
        x, y = torch.randn(32, 1, 32, 32), torch.randint(0, 10, (32,))
        paper = list(metric_space("paper"))
        no_lm = [s for s in paper if "_lm" not in str(s)]
        t = {"all": [], "no_lm": []}
        for _ in range(4):
            for k, ms in (("all", paper), ("no_lm", no_lm)):
                t0 = time.perf_counter()
                saliencies(m, st, [(x, y)], ms)
                t[k].append(time.perf_counter() - t0)
        a, b = statistics.median(t["all"][1:]), statistics.median(t["no_lm"][1:])
        print(f"{name}: paper-308 {a:.2f} s, without the {len(paper) - len(no_lm)} LM metrics {b:.2f} s: the LM "
              f"recursion is {100 * (a - b) / a:.0f} % of a paper-308 saliency pass (load {os.getloadavg()[0]:.1f}, "
              f"1 thread, 32 images, median of 3)")


if __name__ == "__main__":
    main()
