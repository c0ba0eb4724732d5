"""The rates the authors' code records, and how a leaderboard group's protocol differs from theirs."""
from __future__ import annotations

from prunetax.benchmarks.ranking.labels import plain_number

__all__ = ["AUTHORS_RATES", "AUTHORS_PROTOCOL", "AUTHORS_SOURCE", "authors_rate"]

# The rates the authors' code records (docs/protocol.md, "Rates to compare a reproduction with"):
# % of convolution weights removed at a 5-point accuracy drop, with the short retraining of its
# `characterise` mode. Source: kaveena/compare-pruning-signals (branch input_output_saliency,
# commit 1bd281d), the driver of the Caffe fork kaveena/caffe-pruning.
AUTHORS_RATES = {("lenet5", "mnist"): 84.9, ("cifar10_quick", "cifar10"): 67.5, ("resnet20", "cifar10"): 25.4,
                 ("nin", "cifar10"): 72.8, ("alexnet_cifar", "cifar10"): 70.1, ("resnet20", "cifar100"): 12.5,
                 ("nin", "cifar100"): 59.2, ("alexnet_cifar", "cifar100"): 64.0}
AUTHORS_PROTOCOL = {"mode": "characterise", "threshold": 5.0, "relative": False}
AUTHORS_SOURCE = "kaveena/compare-pruning-signals@1bd281d (docs/protocol.md)"


def authors_rate(nets: set, datas: set, p: dict | None) -> tuple[float | None, str]:
    """The authors' rate for a group of networks ``nets`` and data sets ``datas`` (one of each, or
    None) and a note on how the group's protocol ``p`` (its dict, None when unreadable) differs
    from theirs, or why there is no rate."""
    if len(nets) != 1 or len(datas) != 1:
        return None, "pooled over networks or data sets: no authors' rate"
    net, data = next(iter(nets)), next(iter(datas))
    rate = AUTHORS_RATES.get((net, data))
    if rate is None:
        return None, f"no authors' rate for {net} / {data}"
    note = "theirs: mode characterise, threshold 5 points"
    if not p or any(k not in p for k in AUTHORS_PROTOCOL):
        return rate, note + "; here: protocol not recorded"
    diff = [f"{k} {plain_number(p[k]) if isinstance(p[k], float) else p[k]}" for k in ("mode", "threshold", "relative")
            if p[k] != AUTHORS_PROTOCOL[k]]
    return rate, note + (f"; here: {', '.join(diff)}" if diff else ", as here")
