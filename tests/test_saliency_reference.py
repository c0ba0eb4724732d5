"""The engine (``prunetax.metrics.saliencies``) against the naive float64 reference (tests/reference_saliency.py).

Every spec of ``metric_space("domino")`` (924) is compared on three small networks (a LeNet-5
shape, an AlexNet-like grouped chain, a residual network with BatchNorm, a projection shortcut
and a zero-padding shortcut), each with a non-trivial keep mask in one case, to 1e-6 relative
with an absolute floor of 1e-9 x the metric's largest finite |value|. The reference's own
building blocks are checked first (logits, per-image gradients, LM on the last layer, weight
counts), so a failure below points at the engine or at the reference's reading of docs/metrics.md.
"""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import reference_saliency as R  # noqa: E402

from prunetax.enumerate import metric_space  # noqa: E402
from prunetax.metrics import analyze, saliencies  # noqa: E402
from prunetax.taxonomy import MetricSpec, parse_metric  # noqa: E402

RTOL, ATOL_FRAC = 1e-6, 1e-9
N = 4

# name -> (model class, input shape, units removed in the pruned case)
NETS = {
    "lenet": (R.SmallLeNet, (1, 20, 20), [1, 9, 17, 25]),
    "grouped": (R.GroupedNet, (3, 8, 8), [1, 6, 9, 14]),
    "resnet": (R.SmallResNet, (3, 8, 8), [2, 20, 35, 50, 73]),
}


def make_case(net: str, pruned: bool, seed: int = 0):
    cls, shape, removed = NETS[net]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)
    model = R.randomize_bn(cls(), gen).eval()
    x = torch.randn(N, *shape, generator=gen)
    y = torch.randint(0, 10, (N,), generator=gen)
    st = analyze(model, x)
    keep = torch.ones(st.num_units, dtype=torch.bool)
    if pruned:
        keep[removed] = False
    return model, st, x, y, keep


def run_engine(model, st, x, y, specs, keep, split=False):
    m = copy.deepcopy(model).double()
    xd = x.double()
    batches = [(xd[:2], y[:2]), (xd[2:], y[2:])] if split else [(xd, y)]
    return saliencies(m, st, batches, specs, keep=keep)


def close(mine: float, theirs: float, atol: float) -> bool:
    if math.isinf(mine) or math.isinf(theirs):
        return mine == theirs
    return abs(mine - theirs) <= RTOL * abs(mine) + atol


def compare(ref: R.Reference, result, specs, st) -> list[str]:
    """Mismatches, one line per spec (the first differing channel/unit with both values)."""
    bad = []
    for spec in specs:
        mine = ref.channel_values(spec)
        theirs = result.channel_values(spec)
        finite = [abs(v) for vals in mine.values() for v in vals if math.isfinite(v)]
        atol = ATOL_FRAC * (max(finite) if finite else 0.0)
        problem = None
        for layer in st.producers:
            t = theirs[layer].tolist()
            assert len(t) == len(mine[layer]), (spec, layer)
            for c, (a, b) in enumerate(zip(mine[layer], t)):
                if not close(a, b, atol):
                    problem = f"{spec.id}: S({layer},{c}) reference {a!r} engine {b!r}"
                    break
            if problem:
                break
        if problem is None:
            mu = ref.unit_saliency_from(mine)
            tu = result.unit_saliency(spec).tolist()
            for u, (a, b) in enumerate(zip(mu, tu)):
                if not close(a, b, atol):
                    problem = f"{spec.id}: unit {u} reference {a!r} engine {b!r}"
                    break
        if problem:
            bad.append(problem)
    return bad


def report(bad: list[str], total: int) -> str:
    return f"{len(bad)} of {total} specs disagree:\n" + "\n".join(bad[:60])


# ---------------------------------------------------------------------------------------------
# The reference's own building blocks (no engine needed)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("net", list(NETS))
def test_reference_forward_and_gradients(net):
    model, st, x, y, keep = make_case(net, pruned=False)
    ref = R.Reference(model, st, x, y, keep)
    m64 = ref.prog.model
    logits = torch.cat([rec["logits"] for rec in ref.data.images])
    torch.testing.assert_close(logits, model.double()(x.double()), rtol=1e-12, atol=1e-12)
    # per-image gradients add up to the gradient of the summed loss
    loss = F.cross_entropy(m64(x.double()), y, reduction="sum")
    params = [ref.prog.mods[k].weight for k in st.layers]
    for name, g in zip(st.layers, torch.autograd.grad(loss, params)):
        total = sum(rec["W"][name][1] for rec in ref.data.images)
        torch.testing.assert_close(total, g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("net", list(NETS))
def test_reference_lm_exact_on_last_layer(net):
    """LM is exact on the classifier's weights: x_k^2 p_j (1 - p_j)."""
    model, st, x, y, keep = make_case(net, pruned=True)
    ref = R.Reference(model, st, x, y, keep)
    last = list(st.layers)[-1]
    mods = ref.prog.mods
    for n in range(N):
        def loss_of(W):
            ref.prog.forward(x[n:n + 1].double(), ref.data.masks)  # records the classifier input
            feats = {"lenet": "A3", "grouped": "A4", "resnet": "g"}[net]
            z = ref.prog.t[feats].detach() @ W.T + mods[last].bias.detach()
            return F.cross_entropy(z, y[n:n + 1], reduction="sum")
        H = torch.autograd.functional.hessian(loss_of, mods[last].weight.detach().clone())
        diag = torch.einsum("ijij->ij", H)
        torch.testing.assert_close(ref.data.images[n]["h"]["W"][last], diag, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("net", list(NETS))
def test_reference_masking_equals_removal(net):
    """Zeroing at the mask points equals deleting the channels: the logits match a copy whose
    removed producers have zero weights, bias and BatchNorm shift (so they output exact zeros)."""
    model, st, x, y, keep = make_case(net, pruned=True)
    ref = R.Reference(model, st, x, y, keep)
    m = copy.deepcopy(model).double().eval()
    mods = dict(m.named_modules())
    with torch.no_grad():
        for name in st.producers:
            L = st.layers[name]
            for c, u in enumerate(L.out_units.tolist()):
                if u >= 0 and not keep[u]:
                    mods[name].weight[c] = 0
                    if mods[name].bias is not None:
                        mods[name].bias[c] = 0
                    if L.bn:
                        mods[L.bn].bias[c] = 0
                        mods[L.bn].running_mean[c] = 0
    logits = torch.cat([rec["logits"] for rec in ref.data.images])
    torch.testing.assert_close(logits, m(x.double()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("net", list(NETS))
def test_reference_weights_removed_counts_match_structure(net):
    """Naive weight-by-weight counting agrees with Structure.weights_removed (tested on its own too)."""
    model, st, x, y, keep = make_case(net, pruned=True)
    ref = R.Reference(model, st, x, y, keep)
    mine = torch.tensor(ref.weights_removed())
    theirs = st.weights_removed(keep)
    kept = keep.nonzero().flatten()
    assert torch.equal(mine[kept], theirs[kept])


# ---------------------------------------------------------------------------------------------
# The engine against the reference
# ---------------------------------------------------------------------------------------------

DOMINO = metric_space("domino")
CASES = [("lenet", False, False), ("grouped", True, True), ("resnet", True, False)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{'pruned' if c[1] else 'full'}"
                + ("-2batches" if c[2] else ""))
def domino_case(request):
    net, pruned, split = request.param
    model, st, x, y, keep = make_case(net, pruned)
    ref = R.Reference(model, st, x, y, keep)
    result = run_engine(model, st, x, y, DOMINO, keep, split=split)
    return ref, result, st, keep


def test_domino_space_matches_reference(domino_case):
    ref, result, st, keep = domino_case
    assert len(DOMINO) == 924
    bad = compare(ref, result, DOMINO, st)
    assert not bad, report(bad, len(DOMINO))


def test_removed_units_are_inf(domino_case):
    ref, result, st, keep = domino_case
    for spec in DOMINO[::37]:
        u = result.unit_saliency(spec)
        assert torch.isinf(u[~keep]).all() and (u[~keep] > 0).all()
        assert torch.isfinite(u[keep]).all(), spec.id


def test_arrow_table_holds_the_channel_values(domino_case):
    ref, result, st, keep = domino_case
    table = result.to_arrow()
    assert set(["metric_id", "layer", "channel", "unit", "value"]) <= set(table.column_names)
    spec = MetricSpec.parse("activation-taylor-abs_sum-weights_removed-domino_io")
    rows = [r for r in table.to_pylist() if r["metric_id"] == spec.id]
    mine = ref.channel_values(spec)
    assert len(rows) == sum(len(v) for v in mine.values())
    for r in rows:
        a = mine[r["layer"]][r["channel"]]
        assert close(a, r["value"], 1e-12), r
        assert r["unit"] == int(st.layers[r["layer"]].out_units[r["channel"]])


EXTRA = [
    # extended inputs and aggregation on the BatchNorm network
    "bn_weight-value-l1-none", "bn_weight-gradient-l1-layer_l2@batch", "bn_bias-value-sum-layer_l2",
    "bn_weight-taylor-sum-weights_removed-domino_o", "bn_bias-hessian_lm-l1-layer_l1",
    "bn_weight-hessian_gn-l2-none", "bn_bias-taylor2_lm-sum-weights_removed", "bn_weight-taylor2_gn-l1-layer_l2-domino_o",
    "bn_bias-gradient-l2-none@batch", "bn_weight-taylor-l1-none@batch",
    "activation-indicator-sum-elements", "activation-indicator-sqr_sum-layer_l1-domino_io",
    "activation-indicator-sum-weights_removed-domino_o", "activation-indicator-sum-elements@batch",
    "activation-gradient-abs_sum-elements@batch", "activation-taylor-sqr_sum-none@batch",
    "activation-hessian_lm-l2-layer_l2-domino_io@batch", "weight-gradient-l2-none@batch",
    "weight-taylor-l1-elements-domino_io@batch", "weight-taylor2_lm-sqr_sum-weights_removed-domino_o@batch",
    "activation-taylor2_gn-abs_sum-elements-domino_io@batch",
]


@pytest.mark.parametrize("net", ["resnet"])
def test_extended_inputs_and_batch_aggregation(net):
    model, st, x, y, keep = make_case(net, pruned=True, seed=3)
    specs = [MetricSpec.parse(s) for s in EXTRA]
    ref = R.Reference(model, st, x, y, keep)
    result = run_engine(model, st, x, y, specs, keep, split=True)
    bad = compare(ref, result, specs, st)
    assert not bad, report(bad, len(specs))


@pytest.mark.parametrize("net", ["lenet", "grouped"])
def test_batch_aggregation_and_indicator_without_bn(net):
    model, st, x, y, keep = make_case(net, pruned=True, seed=4)
    specs = [MetricSpec.parse(s) for s in EXTRA if not s.startswith("bn_")]
    ref = R.Reference(model, st, x, y, keep)
    result = run_engine(model, st, x, y, specs, keep)
    bad = compare(ref, result, specs, st)
    assert not bad, report(bad, len(specs))


def test_expression_gfbs_on_resnet_matches_reference():
    model, st, x, y, keep = make_case("resnet", pruned=True, seed=5)
    expr = parse_metric("gfbs")
    ref = R.Reference(model, st, x, y, keep)
    result = run_engine(model, st, x, y, [expr], keep)
    mine_c, mine_u = ref.expression(expr)
    theirs_u = result.unit_saliency(expr).tolist()
    scale = max(abs(v) for v in mine_u if math.isfinite(v))
    for u, (a, b) in enumerate(zip(mine_u, theirs_u)):
        assert close(a, b, ATOL_FRAC * scale), (u, a, b)


@pytest.mark.slow
@pytest.mark.parametrize("case", [("lenet", True, True), ("grouped", False, False), ("resnet", False, True)],
                         ids=lambda c: f"{c[0]}-{'pruned' if c[1] else 'full'}")
def test_domino_space_other_masks(case):
    net, pruned, split = case
    model, st, x, y, keep = make_case(net, pruned, seed=7)
    ref = R.Reference(model, st, x, y, keep)
    result = run_engine(model, st, x, y, DOMINO, keep, split=split)
    bad = compare(ref, result, DOMINO, st)
    assert not bad, report(bad, len(DOMINO))


@pytest.mark.parametrize("pruned", [pytest.param(False, marks=pytest.mark.slow), True], ids=["full", "pruned"])
def test_domino_space_on_the_zoo_lenet5(pruned):
    """The zoo's LeNet-5 itself (20/50/500 channels, 570 units, in-place ReLU) at its smallest
    input, 16x16: all 924 specs; split into two batches when pruned."""
    from prunetax.benchmarks.models import create_model

    torch.manual_seed(2)
    model = create_model("lenet5", in_channels=1, num_classes=10, input_size=16).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(N, 1, 16, 16, generator=gen)
    y = torch.randint(0, 10, (N,), generator=gen)
    st = analyze(model, x)
    keep = torch.ones(st.num_units, dtype=torch.bool)
    if pruned:
        keep[[3, 11, 25, 40, 69, 100, 300]] = False
    ref = R.Reference(model, st, x, y, keep)
    result = run_engine(model, st, x, y, DOMINO, keep, split=pruned)
    bad = compare(ref, result, DOMINO, st)
    assert not bad, report(bad, len(DOMINO))
