"""One cell two ways: the batched harness vs a plain loop; the scores must agree.

The plain loop is the protocol as one would first write it: one metric at a time, saliencies
from ``prunetax.metrics.saliencies`` on the current mask, the argmin unit removed, test accuracy after
every step. The harness runs all metrics' trajectories together (``prune``, fast schedule).
Both read the same saliency images at each step, so their removal sequences are the same and
their crossings must agree. Prints a table, then ``ratio: X`` (loop time / harness time) last.

    python -m prunetax.benchmarks.perf.harness_vs_loop [--model lenet5] [--test-images 2000] [--device cpu]
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

DEFAULT_METRICS = ("weight-value-l1-none,weight-value-l2-weights_removed,activation-value-l1-elements,"
                   "activation-taylor-abs_sum-elements,activation-taylor-sqr_sum-none,"
                   "activation-gradient-abs_sum-elements,activation-value-l2-weights_removed,random")


def plain_loop(model, structure, masked, data, metric_text, protocol, seed, device, baseline):
    """One metric, every step evaluated, nothing batched: the reference."""
    from prunetax.benchmarks.protocol import _crossing, _Pruner, resolve_metrics
    from prunetax.metrics import saliencies

    pr = _Pruner(model, structure, masked, data, protocol, seed, device)
    t = resolve_metrics([metric_text], structure)[0]
    keep = torch.ones(structure.num_units, dtype=torch.bool, device=device)
    gen = torch.Generator().manual_seed(seed)
    t.accuracy[0] = baseline
    target = baseline - protocol.threshold
    step = 0
    while True:
        ok = pr.removable(keep[None])[0]
        if not bool(ok.any()):
            break
        step += 1
        if t.run_metric == "random":
            score = torch.rand(pr.U, generator=gen, dtype=torch.float64).to(device)
        else:
            x, y = pr.saliency_images(step)
            score = saliencies(model, structure, [(x, y)], [t.run_metric], keep=keep,
                               masked=masked).unit_saliency(t.run_metric).to(device)
        score = torch.where(ok, score, torch.full_like(score, float("inf")))
        u = int(torch.argmin(score)) if bool(torch.isfinite(score).any()) else int(torch.nonzero(ok)[0])
        keep[u] = False
        t.removed.append(u)
        t.step_end.append(len(t.removed))
        t.rates.append(pr.rates(keep[None])[0])
        t.accuracy[step] = pr.accuracy(keep[None])[0]
        if t.accuracy[step] < target:
            break
    return _crossing(t, target)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--metrics", default=DEFAULT_METRICS)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--saliency-batches", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)

    from prunetax.benchmarks.cell import Cell, Protocol
    from prunetax.benchmarks.protocol import _crossing, prune
    from prunetax.benchmarks.setup import Env, prepare_cell

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    proto = Protocol(test_images=args.test_images, saliency_batches=args.saliency_batches)
    setup = prepare_cell(Cell(args.model, args.dataset, args.seed, tuple(metrics), proto, args.epochs),
                         Env.from_args(args))
    dev, model, st, masked, data = setup.device, setup.model, setup.structure, setup.masked, setup.data
    baseline = setup.baseline_accuracy
    target = baseline - proto.threshold

    t0 = time.perf_counter()
    trajs = prune(model, st, masked, data, metrics, proto, args.seed, dev, baseline)
    batched_s = time.perf_counter() - t0
    batched = {t.name: _crossing(t, target) for t in trajs}

    t0 = time.perf_counter()
    loop = {m: plain_loop(model, st, masked, data, m, Protocol(**{**proto.to_dict(), "schedule": "exact"}),
                          args.seed, dev, baseline) for m in metrics}
    loop_s = time.perf_counter() - t0

    print(f"# {args.model} / {args.dataset}, {len(metrics)} metrics, {args.test_images} test images, "
          f"{proto.saliency_batches}x{proto.batch_size} saliency images, device {dev} "
          f"({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or 'cpu'}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}; baseline {baseline:.2f}%")
    print(f"{'metric':<44} {'harness %':>10} {'loop %':>10} {'steps h/l':>10}")
    worst = 0
    for m in metrics:
        (rb, sb), (rl, sl) = batched[m], loop[m]
        print(f"{m:<44} {rb[0] if rb else float('nan'):>10.3f} {rl[0] if rl else float('nan'):>10.3f} "
              f"{str(sb) + '/' + str(sl):>10}")
        if sb is not None and sl is not None:
            worst = max(worst, abs(sb - sl))
    agree = all(batched[m][1] is not None and loop[m][1] is not None and abs(batched[m][1] - loop[m][1]) <= 1
                for m in metrics)
    print(f"harness (batched, fast): {batched_s:.1f} s; plain loop (one metric at a time, every step): "
          f"{loop_s:.1f} s; crossings agree within one step: {agree} (max step difference {worst})")
    print(f"ratio: {loop_s / batched_s:.2f}")
    if not agree:
        raise SystemExit("the harness and the plain loop disagree")


if __name__ == "__main__":
    main()
