"""The sequential test's mathematics: when a mask's side of the accuracy target is decided.

A mask's test pass reads the test images in a fixed random order, a chunk at a time
(:func:`chunk_ends`), and stops once its side of the target is decided (:func:`decide`): for
certain, or when the count read makes the other side unlikely under the exact hypergeometric
law (:func:`hypergeometric_cuts`), at most ``delta / checks`` per check. Pure functions of
integers and floats: no network, no device. docs/protocol.md, "Sequential test", gives the
argument; ``prunetax.benchmarks.protocol.evaluation`` runs the passes.
"""
from __future__ import annotations

import functools
import math

import torch

__all__ = ["TEST_ORDER_SEED", "TEST_CHUNK", "chunk_ends", "log_bound", "fewest_correct", "count_of",
           "hypergeometric_cuts", "decide"]

TEST_ORDER_SEED = 0x7E57_0DE5         # the order of the test images: this + the cell's seed
TEST_CHUNK = 250                      # the first chunk, in images (at most)


def chunk_ends(N: int) -> list[int]:
    """The sequential test's checks, in images read: the first chunk ``TEST_CHUNK`` images at
    most, then half the images read so far, the last chunk at least as long as the first."""
    first = max(1, min(N, TEST_CHUNK, max(16, -(-N // 40))))
    ends, b = [], 0
    while b < N:
        b += max(first, b // 2)
        if N - b < first:
            b = N
        ends.append(b)
    return ends


def log_bound(checks: int, delta: float) -> float | None:
    """log(checks / delta): the tail each check must reach for an error of at most ``delta`` over
    all ``checks``; None for ``delta`` 0 (decide only when certain)."""
    return math.log(checks / delta) if delta > 0 else None


def fewest_correct(target: float, N: int) -> int:
    """The fewest correct images of ``N`` whose accuracy ``100.0 * c / N`` (a Python float) is at
    least ``target``; N + 1 if none."""
    lo, hi = 0, N + 1              # 100.0 * c / N is non-decreasing in c
    while lo < hi:
        mid = (lo + hi) // 2
        if 100.0 * mid / N >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def count_of(accuracy: float, N: int) -> int:
    """The correct images behind a whole-test-set accuracy (%)."""
    return int(round(accuracy * N / 100.0))


@functools.lru_cache(maxsize=4096)
def hypergeometric_cuts(n: int, N: int, cstar: int, log_bound: float) -> tuple[int, int]:
    """``(above, below)``: after ``n`` of ``N`` test images read in a uniformly random order, the
    fewest right ones, ``above``, with P(X >= above) <= exp(-log_bound) when the whole set holds
    ``cstar - 1`` right images, and the most, ``below``, with P(X <= below) <= exp(-log_bound)
    when it holds ``cstar`` (X hypergeometric: n draws without replacement from N, of which so
    many are right). ``n + 1`` / ``-1`` where no count is that unlikely. Exact tails, summed in
    float64 from log-gamma (``tests/test_protocol.py`` checks them against rational arithmetic).
    ``1 <= cstar <= N`` and ``0 < n < N``."""
    def log_pmf(K):                     # x = 0..n; impossible counts get -inf
        x = torch.arange(n + 1, dtype=torch.float64)
        ok = (x <= K) & (n - x <= N - K)
        xs = torch.where(ok, x, torch.zeros(()))
        lg = torch.lgamma

        def log_choose(a, b):
            return lg(torch.as_tensor(a + 1.0, dtype=torch.float64)) - lg(b + 1.0) - lg(a - b + 1.0)
        out = log_choose(K, xs) + log_choose(N - K, n - xs) - log_choose(N, torch.tensor(float(n)))
        return torch.where(ok, out, torch.full((), -math.inf, dtype=torch.float64))

    log_alpha = -log_bound
    upper = torch.logcumsumexp(log_pmf(cstar - 1).flip(0), 0).flip(0)   # log P(X >= x), K = cstar - 1
    hit = (upper <= log_alpha).nonzero()
    above = int(hit[0]) if len(hit) else n + 1
    lower = torch.logcumsumexp(log_pmf(cstar), 0)                        # log P(X <= x), K = cstar
    hit = (lower <= log_alpha).nonzero()
    below = int(hit[-1]) if len(hit) else -1
    return above, below


def decide(c: int, n: int, N: int, cstar: int, log_bound: float | None) -> bool | None:
    """Whether a mask with ``c`` correct among the first ``n`` of ``N`` test images is above the
    target (its whole-set count reaches ``cstar``): True, False, or None while undecided.

    Certain: ``c >= cstar`` (above whatever the rest gives) or ``c + N - n < cstar`` (below even
    if all the rest are right). With ``log_bound`` = log(checks / delta), also when the images
    read make the other side unlikely: under a uniformly random order, c is hypergeometric, so
    deciding "above" when c reaches :func:`hypergeometric_cuts`'s first count (exact tail at
    ``cstar - 1`` right, the most a mask below the target has) is wrong with probability at most
    delta / checks at each check, delta over all of them; "below" the same at ``cstar``."""
    if c >= cstar:
        return True
    if c + (N - n) < cstar:
        return False
    if log_bound is None or n == 0:
        return None
    above, below = hypergeometric_cuts(n, N, cstar, float(log_bound))
    if c >= above:
        return True
    if c <= below:
        return False
    return None
