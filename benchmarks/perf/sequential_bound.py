"""Issue 13: test images the sequential test reads per decision, under the exact hypergeometric
test it uses (``prunetax.benchmarks.protocol.sequential.decide``) against the Chernoff-Hoeffding
bound it used before (the reference, written out below), both at the default delta 1e-9 per
decision.

    python -m benchmarks.perf.sequential_bound [--orders 200]

For each case (test-set size N, a mask's whole-set accuracy, the target), a set of N images with
that many right is read in ``--orders`` random orders at the protocol's checks
(``sequential.chunk_ends``); each rule stops at the first check where it decides. Prints the mean
images read under each rule, the share of decisions each got wrong (a decision on the wrong
side of the target), and one line per case ending ``ratio: X`` (reference / exact). Counts, not
times: the result does not depend on the machine or its load.
"""
import argparse
import math

import torch

CASES = [  # (N, accuracy %, target %): LeNet-5 / MNIST-like, resnet20-like and harder cases
    (10000, 99.0, 94.3), (10000, 98.0, 93.0), (10000, 96.0, 93.0), (10000, 90.0, 85.0), (10000, 86.0, 85.0),
    (10000, 80.0, 85.0), (2000, 99.0, 94.0), (2000, 96.0, 93.0), (1000, 99.0, 94.0), (1000, 90.0, 85.0),
]


def _kl(p: float, q: float) -> float:
    """Kullback-Leibler divergence of Bernoulli(p) from Bernoulli(q), 0 < q < 1."""
    out = 0.0
    if p > 0.0:
        out += p * math.log(p / q)
    if p < 1.0:
        out += (1.0 - p) * math.log((1.0 - p) / (1.0 - q))
    return out


def decide_chernoff(c: int, n: int, N: int, cstar: int, log_bound: float):
    """The rule before 2026-12-03: certain decisions, then n KL(c/n || p) >= log_bound
    (Hoeffding 1963, section 6), p the boundary accuracy on each side."""
    if c >= cstar:
        return True
    if c + (N - n) < cstar:
        return False
    p = c / n
    if p > (cstar - 1) / N and n * _kl(p, (cstar - 1) / N) >= log_bound:
        return True
    if p < cstar / N and n * _kl(p, cstar / N) >= log_bound:
        return False
    return None


def main(argv=None) -> None:
    from prunetax.benchmarks.protocol.sequential import chunk_ends, decide

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=200, help="random orders per case (default 200)")
    ap.add_argument("--delta", type=float, default=1e-9, help="error bound per decision (default 1e-9)")
    args = ap.parse_args(argv)
    if args.orders < 1 or not 0 < args.delta < 1:
        raise SystemExit("sequential_bound: --orders must be >= 1 and --delta in (0, 1)")
    g = torch.Generator().manual_seed(0)
    print(f"# sequential_bound: {args.orders} random orders per case, delta {args.delta:g} per decision; "
          f"images read until the side of the target is decided (the whole set if never)")
    for N, acc, target in CASES:
        ends = chunk_ends(N)
        log_bound = math.log(len(ends) / args.delta)
        cstar = math.ceil(target * N / 100 - 1e-9)
        right = torch.zeros(N, dtype=torch.long)
        right[: round(acc * N / 100)] = 1
        truth = int(right.sum()) >= cstar
        read = {"chernoff": 0, "exact": 0}
        wrong = {"chernoff": 0, "exact": 0}
        for _ in range(args.orders):
            seen = right[torch.randperm(N, generator=g)].cumsum(0).tolist()
            for name, rule in (("chernoff", decide_chernoff), ("exact", decide)):
                for n in ends:
                    side = rule(seen[n - 1], n, N, cstar, log_bound)
                    if side is not None:
                        break
                read[name] += n
                wrong[name] += side != truth
        a, b = read["chernoff"] / args.orders, read["exact"] / args.orders
        print(f"N {N:>6,}, mask {acc:5.1f} %, target {target:5.1f} %: Chernoff-Hoeffding {a:8,.0f} images "
              f"(wrong {wrong['chernoff']}), exact hypergeometric {b:8,.0f} (wrong {wrong['exact']}) ratio: {a / b:.2f}")


if __name__ == "__main__":
    main()
