"""Issue 13, the Levenberg-Marquardt lever: what the LM recursion (the 100 ``hessian_lm`` /
``taylor2_lm`` metrics) costs in a paper-308 saliency pass, and what skipping its twin's forward saves.

    python -m benchmarks.perf.lm_share [--reps 5] [--images 32]

The LM recursion is autograd through a "squared twin" of the network (metrics/curvature.py), run
on an all-zero input: every value the twin computes is 0, only its graph is used. Its
convolutions and linear layers now skip their forward and call the backward autograd would run.
The reference, measured in the same run, is the twin as it was built before: autograd through
``F.conv2d`` / ``F.linear`` with squared weights (patched in here). For lenet5, cifar10_quick and
resnet20 (random weights, 1x32x32 inputs, random images, 1 thread), it times ``saliencies`` of
all 308 metrics with the twin as built, with the reference twin, and of the 208 without LM,
interleaved, ``--reps`` times each (the first dropped), checks that the two twins give identical
saliencies, and prints the medians, the LM share of each pass and the ratios, with the load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F


def _reference_conv(x, w2, shape, stride, padding, dilation, groups):
    return F.conv2d(x, w2, None, stride, padding, dilation, groups)


def _reference_linear(x, w2):
    return F.linear(x, w2)


def _timed(curvature, twin: str, fn):
    """(seconds, result) of ``fn()`` with the twin as built, or with the reference twin patched in
    (the twin's layer operations ``curvature.twin_conv`` / ``twin_linear``, public for this)."""
    built = curvature.twin_conv, curvature.twin_linear
    if twin == "reference":
        curvature.twin_conv, curvature.twin_linear = _reference_conv, _reference_linear
    try:
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out
    finally:
        curvature.twin_conv, curvature.twin_linear = built


def main(argv=None) -> None:
    import prunetax.metrics.curvature as curvature
    from prunetax.benchmarks.models import create_model
    from prunetax.enumerate import metric_space
    from prunetax.metrics import analyze, saliencies

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="timings per variant (the first is dropped)")
    ap.add_argument("--images", type=int, default=32, help="saliency images (one batch)")
    ap.add_argument("--models", default="lenet5,cifar10_quick,resnet20")
    args = ap.parse_args(argv)
    if args.reps < 2 or args.images < 1:
        raise SystemExit("lm_share: --reps must be at least 2 and --images at least 1")

    torch.set_num_threads(1)
    paper = list(metric_space("paper"))
    no_lm = [s for s in paper if "_lm" not in str(s)]
    print(f"# lm_share: {os.uname().machine}, torch {torch.__version__}, 1 thread, {args.images} images, "
          f"median of {args.reps - 1} (first of {args.reps} dropped), {len(paper) - len(no_lm)} LM metrics of "
          f"{len(paper)}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        m = create_model(name, in_channels=1, num_classes=10, input_size=32).eval()
        st = analyze(m, torch.randn(1, 1, 32, 32))
        batch = [(torch.randn(args.images, 1, 32, 32), torch.randint(0, 10, (args.images,)))]
        t = {"built": [], "reference": [], "no_lm": []}
        out = {}
        load0 = os.getloadavg()[0]
        for _ in range(args.reps):
            for k in t:
                sec, out[k] = _timed(curvature, k, lambda: saliencies(m, st, batch, no_lm if k == "no_lm" else paper))
                t[k].append(sec)
        same = all(torch.equal(out["built"].values[s][layer], out["reference"].values[s][layer])
                   for s in out["built"].values for layer in out["built"].values[s])
        b, r, n = (statistics.median(t[k][1:]) for k in ("built", "reference", "no_lm"))
        print(f"{name}: paper-308 {r:.3f} s with the reference twin (LM {100 * (r - n) / r:.0f} % of the pass), "
              f"{b:.3f} s with the twin as built (LM {100 * (b - n) / b:.0f} %), {n:.3f} s without LM; "
              f"saliencies identical: {same}; load {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
        # the twin alone: lm_curvature at every module's output, on the primal values of one forward
        gm = torch.fx.symbolic_trace(m)
        x = batch[0][0]
        with torch.no_grad():
            logits, primal = curvature.record_forward(gm, x)
        nodes = [nd.name for nd in gm.graph.nodes if nd.op == "call_module"]
        tw = {"built": [], "reference": []}
        for _ in range(args.reps):
            for k in tw:
                tw[k].append(_timed(curvature, k, lambda: curvature.lm_curvature(gm, x, nodes, primal=primal,
                                                                              logits=logits))[0])
        tb, tr = (statistics.median(tw[k][1:]) for k in ("built", "reference"))
        print(f"{name}: the twin alone (lm_curvature) {1000 * tr:.1f} ms with the reference, {1000 * tb:.1f} ms as "
              f"built: {100 * tr / (r - n):.0f} % of the reference's LM part; load {os.getloadavg()[0]:.1f}")
        print(f"{name}: twin reference/built ratio: {tr / tb:.2f}")
        print(f"{name}: LM part reference/built ratio: {(r - n) / max(b - n, 1e-9):.2f}")
        print(f"{name}: paper-308 saliency pass reference/built ratio: {r / b:.2f}")


if __name__ == "__main__":
    main()
