"""The engine with K trajectories in one call, as the harness drives it, and its bounded chunks.

``evaluate_metrics(masked, structure, metrics, batches, keep[K, U])`` must give, for every
trajectory k, what ``prunetax.metrics.saliencies`` gives for that trajectory's keep mask alone
(float64, to 1e-10), on every domino spec plus batch-aggregated, BatchNorm and expression metrics.
The per-image chunk size of the weight gradients, the split of a batch into passes and the
strided unfold must not change any value either; weight values alone need no image pass.
The engine is a closed box: evaluators sharing a model keep their own masks, the values report
the images read, and the split into passes can be asked for any number of rows.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import reference_saliency as R  # noqa: E402  (only its test networks)

from prunetax.enumerate import metric_space  # noqa: E402
from prunetax.metrics import MaskedModel, MetricEvaluator, analyze, evaluate_metrics, saliencies  # noqa: E402
from prunetax.taxonomy import parse_metric  # noqa: E402

EXTRA = ["weight-taylor-abs_sum-none@batch", "activation-hessian_gn-l2-elements-domino_io@batch",
         "activation-taylor2_lm-sqr_sum-layer_l2@batch", "weight-gradient-l1-elements-domino_io@batch",
         "activation-indicator-sum-elements", "activation-indicator-l1-layer_l1-domino_io"]
BN_EXTRA = ["bn_weight-value-l1-none", "bn_weight-taylor-abs_sum-layer_l1-domino_o", "bn_bias-gradient-l2-elements",
            "bn_weight-hessian_lm-sum-none@batch", "gfbs"]

NETS = {"lenet": (R.SmallLeNet, (1, 20, 20), False), "grouped": (R.GroupedNet, (3, 8, 8), False),
        "resnet": (R.SmallResNet, (3, 8, 8), True)}


def make(net: str, B: int = 3, seed: int = 0):
    cls, shape, has_bn = NETS[net]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)
    model = R.randomize_bn(cls(), gen).eval().double()
    x = torch.randn(B, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (B,), generator=gen)
    st = analyze(model, x[:1])
    metrics = list(metric_space("domino")) + [parse_metric(m) for m in EXTRA + (BN_EXTRA if has_bn else [])]
    return model, st, x, y, metrics


def keeps(st, K: int, seed: int = 0) -> torch.Tensor:
    """K different masks: all kept, then random removals (never a whole producer's units)."""
    gen = torch.Generator().manual_seed(seed)
    keep = torch.ones(K, st.num_units, dtype=torch.bool)
    for k in range(1, K):
        keep[k, torch.randperm(st.num_units, generator=gen)[: max(1, st.num_units // (3 + k))]] = False
    return keep


def batched(model, st, x, y, metrics, keep, chunk_bytes=None, **kw):
    return evaluate_metrics(MaskedModel(model, st), st, metrics, [(x, y)], keep, chunk_bytes=chunk_bytes, **kw)


def assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.equal(torch.isinf(a), torch.isinf(b)), what
    fin = torch.isfinite(a)
    scale = max(1.0, float(a[fin].abs().max())) if bool(fin.any()) else 1.0
    torch.testing.assert_close(a[fin], b[fin], rtol=1e-10, atol=1e-10 * scale, msg=what)


@pytest.mark.parametrize("net", list(NETS))
def test_k_trajectories_equal_separate_calls(net):
    model, st, x, y, metrics = make(net)
    K = 3
    keep = keeps(st, K)
    values = batched(model, st, x, y, metrics, keep)
    nf = values.nonfinite_counts()
    for k in range(K):
        single = saliencies(copy.deepcopy(model), st, [(x, y)], metrics, keep=keep[k])
        for m in metrics:
            for p in st.producers:
                assert_same(values[m][p][k], single.values[m][p][0], f"{net} k={k} {m} {p}")
            assert int(nf[m][k]) == single.nonfinite[m.id], f"{m} k={k}"
            assert_same(values.unit_saliency(m)[k], single.unit_saliency(m), f"units {m} k={k}")


@pytest.mark.parametrize("net", list(NETS))
def test_each_row_under_its_own_metric_in_one_scatter(net):
    """row_unit_saliency (the harness's one gather + one scatter) equals unit_saliency per row."""
    model, st, x, y, metrics = make(net)
    K = 4
    keep = keeps(st, K, seed=2)
    exprs = [parse_metric("weight-value-l1-none + activation-value-l1-elements"),
             parse_metric("0.5 * weight-value-l2-none + activation-taylor-abs_sum-elements-domino_io")]
    specs = [m for m in metrics if hasattr(m, "structure")]
    for row_metrics in ([specs[0], specs[300], specs[300], specs[-1]],               # specs only
                        [exprs[0], specs[5], exprs[-1], specs[900]]):               # with expressions
        values = batched(model, st, x, y, list(dict.fromkeys(row_metrics)), keep)
        got = values.row_unit_saliency(row_metrics)
        for k, m in enumerate(row_metrics):
            assert torch.equal(got[k], values.unit_saliency(m)[k]), f"{net} row {k} {m}"


@pytest.mark.parametrize("net", ["grouped", "resnet"])
def test_chunk_size_does_not_change_values(net):
    model, st, x, y, metrics = make(net, B=5)
    keep = keeps(st, 2, seed=1)
    whole = batched(model, st, x, y, metrics, keep, chunk_bytes=2**40)    # every image at once
    tiny = batched(model, st, x, y, metrics, keep, chunk_bytes=1)         # one image per chunk
    for m in metrics:
        for p in st.producers:
            assert_same(tiny[m][p], whole[m][p], f"{m} {p}")


@pytest.mark.parametrize("net", ["grouped", "resnet"])
def test_passes_and_batches_do_not_change_values(net):
    """A batch split into passes (weight_grad_bytes) or given as several batches gives the values
    of one pass (up to rounding): the statistics are sums over the images."""
    model, st, x, y, metrics = make(net, B=5)
    keep = keeps(st, 2, seed=3)
    one = batched(model, st, x, y, metrics, keep)
    split = batched(model, st, x, y, metrics, keep, weight_grad_bytes=1)      # one image per pass
    masked = MaskedModel(model, st)
    ev = MetricEvaluator(masked, st, metrics, keep)
    for a, b in ((0, 2), (2, 5)):                                              # two batches of 2 and 3
        ev.update(x[a:b], y[a:b])
    several = ev.compute()
    for m in metrics:
        for p in st.producers:
            assert_same(split[m][p], one[m][p], f"split {m} {p}")
            assert_same(several[m][p], one[m][p], f"batches {m} {p}")


def test_weight_values_alone_need_no_image_pass():
    """Weight values do not depend on the images: the batches callable is never called, and the
    values equal those of a pass over images."""
    model, st, x, y, _ = make("grouped")
    metrics = ["weight-value-l1-none", "weight-value-l2-weights_removed-domino_io",
               "weight-value-sqr_sum-layer_l2@batch"]
    keep = keeps(st, 3, seed=4)

    def never():
        raise AssertionError("no image pass is needed")
    masked = MaskedModel(model, st)
    assert not MetricEvaluator(masked, st, metrics, keep).needs_images
    alone = evaluate_metrics(masked, st, metrics, never, keep)
    with_images = batched(model, st, x, y, metrics, keep)
    for m in alone.metrics:
        for p in st.producers:
            assert_same(alone[m][p], with_images[m][p], f"{m} {p}")


def test_batchnorm_values_alone_by_hand():
    """BatchNorm parameter values evaluated on their own (the protocol's signal group for
    network_slimming) need no image pass and equal |gamma|, gamma^2, |beta| per channel, by hand
    in float64; they used to fail in bn_grads, whose output gradient no pass had formed."""
    model, st, x, y, _ = make("resnet")
    metrics = ["bn_weight-value-l1-none", "bn_weight-value-l2-none", "bn_bias-value-l1-none"]

    def never():
        raise AssertionError("no image pass is needed")
    masked = MaskedModel(model, st)
    assert not MetricEvaluator(masked, st, metrics, None).needs_images
    for batches in (never, [(x, y)]):
        values = evaluate_metrics(masked, st, metrics, batches)
        assert values.images == 0
        for p in st.producers:
            bn = model.get_submodule(st.layers[p].bn)
            want = {"bn_weight-value-l1-none": bn.weight.abs(), "bn_weight-value-l2-none": bn.weight ** 2,
                    "bn_bias-value-l1-none": bn.bias.abs()}
            for m in metrics:
                assert_same(values[parse_metric(m)][p][0], want[m].detach().double(), f"{m} {p}")


def test_evaluators_sharing_a_model_keep_their_own_masks():
    """Making an evaluator leaves the shared model's mask as it was; each update that runs an
    image pass sets the evaluator's own masks first, so two evaluators fed in turn on one model
    give, bit for bit, what each gives on a model of its own."""
    model, st, x, y, _ = make("resnet", B=4)
    metrics = [parse_metric(m) for m in ("activation-taylor-abs_sum-elements", "weight-gradient-l1-none-domino_io",
                                         "bn_weight-taylor-l1-none", "activation-hessian_lm-sum-none")]
    ka, kb = keeps(st, 3, seed=5), keeps(st, 3, seed=6)[1:]              # K = 3 and K = 2, other masks
    masked = MaskedModel(model, st)
    masked.set_keep(kb)
    a = MetricEvaluator(masked, st, metrics, ka)
    assert masked.num_trajectories == 2                                   # untouched by making one
    b = MetricEvaluator(masked, st, metrics, kb)
    for lo, hi in ((0, 2), (2, 4)):
        a.update(x[lo:hi], y[lo:hi])
        b.update(x[lo:hi], y[lo:hi])
    assert masked.num_trajectories == 2                                   # b's masks, set by b's update
    for ev, keep in ((a.compute(), ka), (b.compute(), kb)):
        own = MetricEvaluator(MaskedModel(model, st), st, metrics, keep)
        for lo, hi in ((0, 2), (2, 4)):
            own.update(x[lo:hi], y[lo:hi])
        alone = own.compute()
        for m in metrics:
            for p in st.producers:
                assert torch.equal(ev[m][p], alone[m][p]), f"{m} {p}"


def test_values_report_the_images_read():
    """MetricValues.images: images per trajectory read through image passes, however the batches
    are split into passes; 0 when weight values alone are read (with or without images given)."""
    model, st, x, y, _ = make("grouped", B=5)
    keep = keeps(st, 2, seed=7)
    masked = MaskedModel(model, st)
    reads = ["activation-value-l1-elements", "weight-taylor-abs_sum-none"]
    assert evaluate_metrics(masked, st, reads, [(x, y)], keep).images == 5
    assert evaluate_metrics(masked, st, reads, lambda: [(x[:2], y[:2]), (x[2:], y[2:])], keep,
                            weight_grad_bytes=1).images == 5                # five passes of one image
    weights = ["weight-value-l1-none", "weight-value-l2-elements-domino_io"]
    assert evaluate_metrics(masked, st, weights, lambda: [(x, y)], keep).images == 0
    assert evaluate_metrics(masked, st, weights, [(x, y)], keep).images == 0


def test_images_per_pass_for_any_number_of_rows():
    """images_per_pass(n, rows): the split of an evaluator with ``rows`` trajectories, asked of any
    evaluator of the same metrics and budget (the shared pass asks it for the unshared rows)."""
    model, st, _, _, _ = make("grouped")
    masked = MaskedModel(model, st)
    metrics, budget = ["weight-taylor-abs_sum-none"], 2**16
    ev = MetricEvaluator(masked, st, metrics, keeps(st, 2), weight_grad_bytes=budget)
    split = [ev.images_per_pass(64, rows) for rows in (1, 2, 3, 5)]
    assert split == [MetricEvaluator(masked, st, metrics, keeps(st, rows), weight_grad_bytes=budget)
                     .images_per_pass(64) for rows in (1, 2, 3, 5)]
    assert split == sorted(split, reverse=True) and split[0] > split[-1]  # more rows, fewer images a pass
    assert ev.images_per_pass(64) == ev.images_per_pass(64, 2)
    assert MetricEvaluator(masked, st, metrics, keeps(st, 2)).images_per_pass(64, 5) == 64   # no budget


@pytest.mark.parametrize("kw", [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(3, 2), stride=(2, 1), padding=(0, 1), dilation=(1, 2)),
                                dict(kernel_size=5, padding=2, groups=4), dict(kernel_size=1, stride=2),
                                dict(kernel_size=3, padding=0, dilation=2, groups=2)])
def test_strided_unfold_equals_F_unfold(kw):
    from prunetax.metrics.signals import unfold

    conv = torch.nn.Conv2d(8, 8, **kw)
    x = torch.randn(3, 8, 11, 10)
    ref = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    assert torch.equal(unfold(conv, x), ref)
