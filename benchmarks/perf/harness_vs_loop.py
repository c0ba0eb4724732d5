"""One cell two ways: the batched harness vs a plain loop; the scores must agree.

The plain loop is the protocol as one would first write it: one metric at a time, saliencies
from ``prunetax.metrics.saliencies`` on the current mask, the argmin unit removed, test accuracy after
every step. The harness runs all metrics' trajectories together (``CellPruning``, fast schedule).
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


def plain_loop(network, metric_text: str, protocol):
    """One metric pruning ``network`` (a ``prunetax.benchmarks.protocol.Network``) under
    ``protocol``, every step evaluated, nothing batched: the reference. Returns the crossing
    (``prunetax.benchmarks.protocol.crossing``)."""
    from prunetax.benchmarks.protocol import Pruner, crossing, resolve_metrics
    from prunetax.metrics import saliencies

    model, structure, masked, device = network.model, network.structure, network.masked, network.device
    pr = Pruner(network, protocol)
    t = resolve_metrics([metric_text], structure)[0]
    keep = torch.ones(structure.num_units, dtype=torch.bool, device=device)
    gen = torch.Generator().manual_seed(network.seed)
    t.accuracy[0] = network.baseline_accuracy
    target = protocol.target(network.baseline_accuracy)
    step = 0
    while True:
        ok = pr.removable(keep[None])[0]
        if not bool(ok.any()):
            break
        step += 1
        if t.run_metric == "random":
            score = torch.rand(pr.U, generator=gen, dtype=torch.float64).to(device)
        else:
            x, y = pr.saliency.images(step)
            score = saliencies(model, structure, [(x, y)], [t.run_metric], keep=keep,
                               masked=masked).unit_saliency(t.run_metric).to(device)
        score = torch.where(ok, score, torch.full_like(score, float("inf")))
        u = int(torch.argmin(score)) if bool(torch.isfinite(score).any()) else int(torch.nonzero(ok)[0])
        keep[u] = False
        t.removed.append(u)
        t.step_end.append(len(t.removed))
        t.rates.append(pr.rates(keep[None])[0])
        t.accuracy[step] = pr.tests.accuracy(keep[None])[0]
        if t.accuracy[step] < target:
            break
    return crossing(t, target)


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
    from prunetax.benchmarks.protocol import CellPruning, Network, crossing
    from prunetax.benchmarks.setup import Env, prepare_cell

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    proto = Protocol(test_images=args.test_images, saliency_batches=args.saliency_batches)
    setup = prepare_cell(Cell(args.model, args.dataset, args.seed, tuple(metrics), proto, args.epochs),
                         Env.from_args(args))
    network, dev, baseline = Network.of(setup), setup.device, setup.baseline_accuracy
    target = proto.target(baseline)

    t0 = time.perf_counter()
    trajs = CellPruning(network, metrics, proto).run()
    batched_s = time.perf_counter() - t0
    batched = {t.name: crossing(t, target) for t in trajs}

    t0 = time.perf_counter()
    exact = Protocol(**{**proto.to_dict(), "schedule": "exact"})
    loop = {m: plain_loop(network, m, exact) for m in metrics}
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
