"""Every registered component against a value computed by hand (docs/metrics.md), and new
components added the documented way: one ``register_component`` entry plus one registered function
(a pointwise function, a scaling and a base input).

Pointwise functions and reductions (and their fast-path statistics recipes) run on tiny tensors;
aggregations on tiny tensors and on a one-layer network; structures and scalings on a three-layer
residual network whose weights are small numbers (every expected value below is worked out in
the comments, never taken from the engine).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunetax.metrics import (MaskedModel, analyze, evaluate_metrics, register_aggregation, register_base_input,
                              register_pointwise, register_reduction, register_scaling, register_structure,
                              saliencies, unregister_kernel)
from prunetax.metrics.kernels import (SharedStats, bn_elements, fast_path, kernel, pointwise_stats, registered,
                                      registered_ids)
from prunetax.taxonomy import ids, parse_metric, register_component
from prunetax.taxonomy.errors import SpecError
from prunetax.taxonomy.vocab import unregister_component

pytestmark = pytest.mark.usefixtures("one_thread")

D64 = torch.float64


def t(*v):
    return torch.tensor(v, dtype=D64)


# -- pointwise -------------------------------------------------------------------------------------
X, G, H = t(1.0, -2.0, 3.0), t(0.5, 1.0, -2.0), t(2.0, 0.5, 1.0)
# f per element, then (Σf, Σ|f|, Σf²), all by hand from x, g, h above
POINTWISE = {
    "value": ([1, -2, 3], (2, 6, 14)),
    "gradient": ([0.5, 1, -2], (-0.5, 3.5, 5.25)),
    "taylor": ([-0.5, 2, 6], (7.5, 8.5, 40.25)),                                 # -x*g
    "hessian_gn": ([0.125, 2, 18], (20.125, 20.125, 328.015625)),                # x²/2 * g²
    "hessian_lm": ([1, 1, 4.5], (6.5, 6.5, 22.25)),                              # x²/2 * h
    "taylor2_gn": ([-0.375, 4, 24], (27.625, 28.375, 592.140625)),
    "taylor2_lm": ([0.5, 3, 10.5], (14, 14, 119.5)),
    "indicator": ([1, 0, 1], (2, 2, 2)),                                         # 1[x > 0]
}


def test_every_pointwise_has_a_hand_checked_value():
    assert set(POINTWISE) == set(ids("pointwise")) == set(registered_ids("pointwise"))


@pytest.mark.parametrize("name", list(POINTWISE))
def test_pointwise_kernel(name):
    f, _ = POINTWISE[name]
    got = kernel("pointwise", name)(X, G, H)
    assert torch.equal(got, t(*f)), (name, got)


@pytest.mark.parametrize("name", [n for n in POINTWISE if registered("pointwise", n).stats is not None])
def test_pointwise_statistics_recipe(name):
    """The fast path's Σf, Σ|f|, Σf² of each pointwise, from the shared workspace."""
    _, (s, l1, l2) = POINTWISE[name]
    got = pointwise_stats(X, G, H, {name: {"sum", "l1", "l2"}}, lambda v: (v.sum(-1),))
    assert [float(got[(name, st)][0]) for st in ("sum", "l1", "l2")] == [s, l1, l2]


def test_pointwise_statistics_share_one_workspace():
    """All recipes of the same elements together give what each gives alone."""
    want = {n: {"sum", "l1", "l2"} for n in POINTWISE if registered("pointwise", n).stats is not None}
    got = pointwise_stats(X, G, H, want, lambda v: (v.sum(-1),))
    for n in want:
        assert [float(got[(n, st)][0]) for st in ("sum", "l1", "l2")] == list(POINTWISE[n][1]), n


def test_gradient_broadcasts_to_the_elements():
    x = torch.zeros(2, 3, dtype=D64)
    assert torch.equal(kernel("pointwise", "gradient")(x, G, None), torch.stack([G, G]))


# -- reductions ------------------------------------------------------------------------------------
FS = torch.stack([torch.cat([t(1, -2, 3)]), t(-1, -2, 0)])       # two channels of three elements
REDUCTIONS = {"sum": [2, -3], "l1": [6, 3], "l2": [14, 5], "abs_sum": [2, 3], "sqr_sum": [4, 9]}


def test_every_reduction_has_a_hand_checked_value():
    assert set(REDUCTIONS) == set(ids("reduction")) == set(registered_ids("reduction"))


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reduction_kernel_and_its_recipe(name):
    assert torch.equal(kernel("reduction", name)(FS), t(*REDUCTIONS[name]))
    r = registered("reduction", name)                 # the fast path: finish(statistic of f)
    stat = SharedStats(FS, None, None, lambda v: (v.sum(-1),)).stat("f", lambda: FS, r.stat)[0].clone()
    if r.finish is not None:
        r.finish(stat)
    assert torch.equal(stat, t(*REDUCTIONS[name]))


# -- aggregations ----------------------------------------------------------------------------------
# f [K=1, N=2 images, C=2 channels, E=2 elements]
F_IMAGES = t(2, -6, -1, 3, 4, 2, -2, -1).reshape(1, 2, 2, 2)
# per image: channel 0: [2, -6] then [4, 2]; channel 1: [-1, 3] then [-2, -1]
AGGREGATED = {   # (per_image: mean over images of R(f_n); batch: R(mean over images of f))
    "sum": ([1, -0.5], [1, -0.5]),          # batch: mean f = [3, -2] and [-1.5, 1]
    "l1": ([7, 3.5], [5, 2.5]),
    "l2": ([30, 7.5], [13, 3.25]),
    "abs_sum": ([5, 2.5], [1, 0.5]),
    "sqr_sum": ([26, 6.5], [1, 0.25]),
}


def _aggregate(name: str, f: torch.Tensor, red: str) -> torch.Tensor:
    """The engine's streaming contract on a whole batch: a running total, then the registered function."""
    agg, R = registered("aggregation", name), kernel("reduction", red)
    if agg.reduce_first:
        return agg.fn(R(f).to(D64).sum(1), None, f.shape[1])
    return agg.fn(f.sum(1), R, f.shape[1])


def test_every_aggregation_has_a_hand_checked_value():
    assert set(ids("aggregation")) == set(registered_ids("aggregation")) == {"per_image", "batch"}


@pytest.mark.parametrize("red", list(AGGREGATED))
@pytest.mark.parametrize("agg", ["per_image", "batch"])
def test_aggregation_on_tensors(agg, red):
    want = AGGREGATED[red][0 if agg == "per_image" else 1]
    assert torch.equal(_aggregate(agg, F_IMAGES, red)[0], t(*want))


class OneConv(nn.Module):
    """conv (1 -> 2 channels, 1x1, weights 2 and -1, no bias) on 1x2 images, then a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.copy_(t(2, -1).reshape(2, 1, 1, 1))

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


@pytest.mark.parametrize("red", list(AGGREGATED))
def test_aggregation_on_a_network(red):
    """activation-value on images [1, -3] and [2, 1]: the conv's outputs are the f of the tensor
    test above, so per_image and batch give the same hand values."""
    torch.manual_seed(0)
    model = OneConv().double().eval()
    x = t(1, -3, 2, 1).reshape(2, 1, 1, 2)
    y = torch.tensor([0, 2])
    st = analyze(model, x[:1])
    assert st.producers == ["conv"]
    per_image, batch = f"activation-value-{red}-none", f"activation-value-{red}-none@batch"
    res = saliencies(model, st, [(x, y)], [per_image, batch])
    assert torch.equal(res.channel_values(per_image)["conv"], t(*AGGREGATED[red][0]))
    assert torch.equal(res.channel_values(batch)["conv"], t(*AGGREGATED[red][1]))


# -- structures and scalings -----------------------------------------------------------------------
class Res(nn.Module):
    """a (1 -> 2) + b (2 -> 2) merged by a residual add into units u0, u1; c (2 -> 3) reads them
    (units u2..u4); a linear head reads c. All 1x1 convolutions without bias, on 1x1 images."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1, bias=False)
        self.b = nn.Conv2d(2, 2, 1, bias=False)
        self.c = nn.Conv2d(2, 3, 1, bias=False)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.a.weight.copy_(t(2, -1).reshape(2, 1, 1, 1))
            self.b.weight.copy_(t(1, -2, 3, 0.5).reshape(2, 2, 1, 1))
            self.c.weight.copy_(t(1, 1, -1, 2, 0.5, -3).reshape(3, 2, 1, 1))

    def forward(self, x):
        h = self.a(x)
        h = h + self.b(h)
        return self.fc(torch.flatten(self.c(h), 1))


# weight-value-l1 by hand. Rows: a [2, 1]; b [|1|+|-2|, |3|+|.5|] = [3, 3.5]; c [2, 3, 3.5].
# Consumer slices (columns) of the conv consumers b and c: b [1+3, 2+.5] = [4, 2.5]; c [2.5, 6].
# domino_o (u_i = a_i + b_i): [5, 4.5]; domino_io adds b's and c's slices: [11.5, 13]; c alone.
# Element counts (active inputs x 1x1): a 1, b 2, c 2; domino_o u_i: 1 + 2 = 3; domino_io: 3 + 2
# (b's outputs) + 3 (c's outputs) = 8. Weights removed with u_i: a's row 1 + b's row and column
# 2 + 2 - 1 + c's column 3 = 7; with c's unit: its row 2 + the head's column 2 = 4.
R5, R21, R25 = math.sqrt(5), math.sqrt(21.25), math.sqrt(25.25)
FULL = {
    "channel-none": ([2, 1], [3, 3.5], [2, 3, 3.5]),
    "domino_o-none": ([5, 4.5], [5, 4.5], [2, 3, 3.5]),
    "domino_io-none": ([11.5, 13], [11.5, 13], [2, 3, 3.5]),
    "channel-elements": ([2, 1], [1.5, 1.75], [1, 1.5, 1.75]),
    "domino_o-elements": ([5 / 3, 1.5], [5 / 3, 1.5], [1, 1.5, 1.75]),
    "domino_io-elements": ([11.5 / 8, 13 / 8], [11.5 / 8, 13 / 8], [1, 1.5, 1.75]),
    "channel-layer_l1": ([2 / 3, 1 / 3], [3 / 6.5, 3.5 / 6.5], [2 / 8.5, 3 / 8.5, 3.5 / 8.5]),
    "domino_o-layer_l1": ([5 / 9.5, 4.5 / 9.5], [5 / 9.5, 4.5 / 9.5], [2 / 8.5, 3 / 8.5, 3.5 / 8.5]),
    "channel-layer_l2": ([2 / R5, 1 / R5], [3 / R21, 3.5 / R21], [2 / R25, 3 / R25, 3.5 / R25]),
    "channel-weights_removed": ([2 / 7, 1 / 7], [3 / 7, 3.5 / 7], [2 / 4, 3 / 4, 3.5 / 4]),
    "domino_io-weights_removed": ([11.5 / 7, 13 / 7], [11.5 / 7, 13 / 7], [2 / 4, 3 / 4, 3.5 / 4]),
}
# u1 removed: b keeps input 0 and output 0, c keeps input 0. Rows: a [2, -]; b [1, -]; c [1, 1, .5].
# Slices of u0: b (output 0 only) 1, c 2.5 -> domino_io 2 + 1 + 1 + 2.5 = 6.5 over 1 + 1 + 1 + 3 = 6
# elements. Layer norms over kept channels only. Weights removed: u0 1 + 1 + 3 = 5; c's units 1 + 2 = 3.
INF = math.inf
PARTIAL = {
    "channel-none": ([2, INF], [1, INF], [1, 1, 0.5]),
    "domino_io-none": ([6.5, INF], [6.5, INF], [1, 1, 0.5]),
    "domino_io-elements": ([6.5 / 6, INF], [6.5 / 6, INF], [1, 1, 0.5]),
    "channel-layer_l1": ([1, INF], [1, INF], [1 / 2.5, 1 / 2.5, 0.5 / 2.5]),
    "channel-weights_removed": ([2 / 5, INF], [1 / 5, INF], [1 / 3, 1 / 3, 0.5 / 3]),
}


def _spec(key: str) -> str:
    structure, scaling = key.split("-")
    return f"weight-value-l1-{scaling}" + ("" if structure == "channel" else f"-{structure}")


def _res():
    torch.manual_seed(0)
    model = Res().double().eval()
    x, y = torch.ones(1, 1, 1, 1, dtype=D64), torch.tensor([0])
    st = analyze(model, x)
    assert st.producers == ["a", "b", "c"] and st.conv_consumers == ["b", "c"]
    assert st.layers["a"].out_units.tolist() == st.layers["b"].out_units.tolist() == [0, 1]
    return model, st, x, y


def test_every_structure_and_scaling_is_hand_checked():
    assert set(ids("structure")) == set(registered_ids("structure")) == {k.split("-")[0] for k in FULL}
    assert set(ids("scaling")) == set(registered_ids("scaling")) == {k.split("-")[1] for k in FULL}


@pytest.mark.parametrize("partial", [False, True])
def test_structures_and_scalings_on_a_residual_network(partial):
    model, st, x, y = _res()
    table = PARTIAL if partial else FULL
    keep = torch.tensor([True, not partial, True, True, True])
    res = saliencies(model, st, [(x, y)], [_spec(k) for k in table], keep=keep)
    for key, want in table.items():
        got = res.channel_values(_spec(key))
        for layer, w in zip("abc", want):
            torch.testing.assert_close(got[layer], t(*w), rtol=1e-15, atol=0, msg=f"{key} {layer}")
        # a unit is as weak as its weakest member
        u = res.unit_saliency(_spec(key))
        mins = [min(want[0][0], want[1][0]), min(want[0][1], want[1][1]), *want[2]]
        torch.testing.assert_close(u, t(*mins), rtol=1e-15, atol=0, msg=key)


def test_structure_kernels_on_tensors():
    """channel is the identity; domino_o sums a unit's members; domino_io adds the consumer slices."""
    class Ctx:   # channels of units [0, 0, 1] and one consumer whose input slices are units [1, 0]
        consumers = ["k"]
        u_all = torch.tensor([0, 0, 1])

        def unit_sums(self, own):
            return torch.zeros(*own.shape[:-1], 3, dtype=own.dtype).index_add_(-1, self.u_all, own)

        def add_consumer(self, tot, name, values):
            return tot.index_add_(-1, torch.tensor([1, 0]), values)

        def to_channels(self, tot):
            tot[..., 2] = 0
            return tot[..., self.u_all]
    own = t(1, 2, 4)[None]
    assert torch.equal(kernel("structure", "channel")(own, None, Ctx()), own)
    assert torch.equal(kernel("structure", "domino_o")(own, None, Ctx()), t(3, 3, 4)[None])
    assert torch.equal(kernel("structure", "domino_io")(own, lambda name: t(10, 20)[None], Ctx()), t(23, 23, 14)[None])


# -- a new pointwise and a new scaling, the documented way ----------------------------------------
class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv2(self.conv1(x)), 1))


@pytest.fixture
def new_components():
    """Two pointwise functions (one with a statistics recipe for the fast path, one without) and a
    scaling: each one register_component entry plus one registered function. Removed afterwards."""
    added = [("pointwise", "cube"), ("pointwise", "sq_grad"), ("scaling", "layer_mean")]
    try:
        register_component("pointwise", "cube", "the element cubed", "f = x^3", r"f = x^3")
        register_component("pointwise", "sq_grad", "the squared gradient", "f = g^2", r"f = g^2")
        register_component("scaling", "layer_mean", "the mean |D| of the layer's kept channels",
                           "divisor = mean_{c' kept} |D(l, c')|", r"d = \overline{|D_l|}")

        @register_pointwise("cube")
        def _cube(x, g, h):
            return x * x * x

        @register_pointwise("sq_grad", needs=("g",),
                            stats=lambda w, st: w.stat("g2", lambda: w.tensor("g2", lambda: w.g * w.g), st))
        def _sq_grad(x, g, h):
            return (g * g).expand(torch.broadcast_shapes(x.shape, g.shape))

        @register_scaling("layer_mean")
        def _layer_mean(D, specs, ctx):
            return ctx.layer_sum(torch.where(ctx.kept, D.abs(), 0)) / ctx.layer_sum(ctx.kept.to(D.dtype).expand_as(D))
        yield
    finally:
        for axis, name in added:
            unregister_kernel(axis, name)
            unregister_component(axis, name)


def _layer_mean(v, kept):
    return v / v[kept].abs().mean()


def test_new_pointwise_and_scaling_computed_by_saliencies(new_components):
    assert not fast_path("cube", "per_image", ["sum"])            # no recipe: the generic path
    assert fast_path("sq_grad", "per_image", ["sum", "sqr_sum"])  # a recipe: the shared fast path
    assert not fast_path("sq_grad", "batch", ["sum"])
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    model = TwoConv().double().eval()
    x = torch.randn(3, 2, 4, 4, generator=gen, dtype=D64)
    y = torch.tensor([0, 3, 1])
    st = analyze(model, x[:1])
    assert st.producers == ["conv1", "conv2"]
    assert [st.layers[p].mask_point for p in st.producers] == ["conv1", "conv2"]
    keep = torch.ones(st.num_units, dtype=torch.bool)
    keep[1] = False                                               # conv1's channel 1
    metrics = ["activation-cube-l1-elements", "activation-cube-sum-layer_mean", "activation-sq_grad-sum-none",
               "activation-sq_grad-sqr_sum-layer_mean", "activation-sq_grad-l2-none@batch",
               "weight-cube-sum-none", "weight-value-l1-layer_mean"]
    res = saliencies(model, st, [(x[:2], y[:2]), (x[2:], y[2:])], metrics, keep=keep)

    mask = keep[:3].to(D64).reshape(1, 3, 1, 1)                  # conv1's mask point
    sig = _masked_signals(model, mask, x, y)
    kept = {"conv1": keep[:3], "conv2": torch.ones(4, dtype=torch.bool)}
    n = x.shape[0]
    for p in st.producers:
        A, g = sig[p]                                             # [N, C, E]
        E = A.shape[-1]
        expect = {
            "activation-cube-l1-elements": (A ** 3).abs().sum(-1).sum(0) / n / E,
            "activation-cube-sum-layer_mean": _layer_mean((A ** 3).sum(-1).sum(0) / n, kept[p]),
            "activation-sq_grad-sum-none": (g * g).sum(-1).sum(0) / n,
            "activation-sq_grad-sqr_sum-layer_mean": _layer_mean(((g * g).sum(-1) ** 2).sum(0) / n, kept[p]),
            "activation-sq_grad-l2-none@batch": (((g * g).sum(0) / n) ** 2).sum(-1),
        }
        W, b = getattr(model, p).weight.detach(), getattr(model, p).bias.detach()
        w_in = torch.ones(W.shape[1], dtype=torch.bool) if p == "conv1" else kept["conv1"]
        Wm = W * w_in.to(D64).reshape(1, -1, 1, 1)                # removed inputs are zero
        expect["weight-cube-sum-none"] = (Wm ** 3).flatten(1).sum(1) + b ** 3
        expect["weight-value-l1-layer_mean"] = _layer_mean(Wm.abs().flatten(1).sum(1) + b.abs(), kept[p])
        for m, want in expect.items():
            want = torch.where(kept[p], want, torch.full_like(want, INF))
            torch.testing.assert_close(res.channel_values(m)[p], want, rtol=1e-10, atol=1e-300, msg=f"{m} {p}")
    assert all(v == 0 for v in res.nonfinite.values())


def _masked_signals(model, mask, x, y):
    """conv1's output times the keep mask (the mask point), conv2's output, and their per-image
    gradients (the batch loss is the sum of the images' own losses)."""
    a1 = model.conv1(x) * mask
    a2 = model.conv2(a1)
    loss = F.cross_entropy(model.fc(torch.flatten(a2, 1)), y, reduction="sum")
    g1, g2 = torch.autograd.grad(loss, [a1, a2])
    return {"conv1": (a1.detach().flatten(2), g1.flatten(2)), "conv2": (a2.detach().flatten(2), g2.flatten(2))}


def test_registrations_do_not_leak():
    for axis, name in [("pointwise", "cube"), ("pointwise", "sq_grad"), ("scaling", "layer_mean"),
                       ("base_input", "bn_abs_weight")]:
        assert name not in ids(axis) and name not in registered_ids(axis)
    with pytest.raises(SpecError):
        parse_metric("activation-cube-sum-none")


def test_registration_rules():
    with pytest.raises(SpecError):                   # the taxonomy entry comes first
        register_scaling("not_a_component")
    with pytest.raises(SpecError):                   # one kernel per component
        register_pointwise("taylor")
    with pytest.raises(SpecError):
        register_reduction("sum", stat="median")
    with pytest.raises(SpecError):
        register_structure("not_a_component")
    with pytest.raises(SpecError):
        register_aggregation("batch", reduce_first=False)
    with pytest.raises(SpecError):                   # the paper's components stay
        unregister_component("scaling", "none")
    with pytest.raises(SpecError):                   # a base input says what it reads and counts
        register_base_input("weight", signals=None, counts=None)
    with pytest.raises(SpecError):
        register_base_input("activation", signals=lambda *a: {}, counts=lambda *a: None)


# -- base inputs -----------------------------------------------------------------------------------
def test_every_base_input_has_a_kernel():
    """The built-in base inputs are checked element by element against tests/reference_saliency.py
    (tests/test_saliency_reference.py); here: each one has its registered kernel."""
    assert set(ids("base_input")) == set(registered_ids("base_input")) == {"weight", "activation", "bn_weight",
                                                                           "bn_bias"}
    for name in registered_ids("base_input"):
        k = registered("base_input", name)
        assert callable(k.fn) and callable(k.signals) and callable(k.counts)
    assert registered("base_input", "weight").layer_stats is not None     # it streams its per-image gradients


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.conv2, self.bn2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(torch.relu(self.bn2(self.conv2(x))), 1))


@pytest.fixture
def abs_gamma():
    """A new base input, |γ| of the producer's own BatchNorm: one register_component entry plus
    one registered function (with what it reads and counts). Removed afterwards."""
    try:
        register_component("base_input", "bn_abs_weight", "the absolute BatchNorm scale |gamma_i|",
                           "x = |gamma|", r"x = |\gamma|")

        def signals(structure, spec, reads, consumers):    # its value reads no image pass
            return {"bn": structure.producers} if reads else {}

        def counts(sites, layer, consumer):                 # one element per channel
            return torch.ones(sites.K, sites.st.layers[layer].out_channels, dtype=D64, device=sites.active.device)

        @register_base_input("bn_abs_weight", signals=signals, counts=counts)
        def _abs_gamma(sites, sig, B, layer, consumer):
            x, g, h = bn_elements(sites, sig, B, layer, "weight")     # γ, dL/dγ, h_γ
            return x.abs(), None if g is None else g * x.sign(), h     # d|γ| = sign(γ) dγ; sign² = 1
        yield
    finally:
        unregister_kernel("base_input", "bn_abs_weight")
        unregister_component("base_input", "bn_abs_weight")


def test_new_base_input_computed_by_evaluate_metrics(abs_gamma):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(2)
    model = ConvBN().double()
    for bn in (model.bn1, model.bn2):                  # scales of both signs, non-trivial statistics
        with torch.no_grad():
            bn.weight.copy_(torch.randn(bn.num_features, generator=gen, dtype=D64))
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen, dtype=D64) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen, dtype=D64) + 0.5)
    model.eval()
    x = torch.randn(3, 2, 4, 4, generator=gen, dtype=D64)
    y = torch.tensor([0, 3, 1])
    st = analyze(model, x[:1])
    assert st.producers == ["conv1", "conv2"]
    masked = MaskedModel(model, st)

    def never():
        raise AssertionError("|γ| alone needs no image pass")
    value = evaluate_metrics(masked, st, ["bn_abs_weight-value-l1-none"], never)
    assert value.images == 0
    metrics = ["bn_abs_weight-gradient-sum-none", "bn_abs_weight-taylor-abs_sum-elements",
               "bn_abs_weight-gradient-l2-none@batch"]
    res = evaluate_metrics(masked, st, metrics, [(x, y)])
    assert res.images == 3

    # by hand: each image's own loss, differentiated with respect to γ itself
    n = len(y)
    for p, bn in (("conv1", model.bn1), ("conv2", model.bn2)):
        gamma = bn.weight.detach()
        g = torch.stack([torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), bn.weight)[0]
                         for i in range(n)])                          # [N, C]
        g_abs = g * gamma.sign()                                      # dL/d|γ|
        expect = {"bn_abs_weight-value-l1-none": (value, gamma.abs()),
                  "bn_abs_weight-gradient-sum-none": (res, g_abs.sum(0) / n),
                  "bn_abs_weight-taylor-abs_sum-elements": (res, (gamma.abs() * g_abs).abs().sum(0) / n),
                  "bn_abs_weight-gradient-l2-none@batch": (res, (g_abs.sum(0) / n) ** 2)}
        for m, (values, want) in expect.items():
            torch.testing.assert_close(values[parse_metric(m)][p][0], want, rtol=1e-10, atol=1e-300, msg=f"{m} {p}")
