"""Custom layers registered with ``register_layer_rule``: every face a metric needs.

The network below uses three registered layers past the mask points:
- ``Softsign`` (element-wise x / (1 + |x|), no state): LM face ``t * f'(x)^2``;
- ``ChannelScale`` (y = s[c] x, per-channel state): a ``slim`` face and the LM face ``t * s[c]^2``;
- ``torch.roll`` along the channels (a function, or the ``Tensor.roll`` method): channel map and
  the ``"structural"`` LM face.
``hessian_lm`` and ``taylor2_lm`` values from ``prunetax.metrics.saliencies`` are compared, in
float64, with an independent computation of what docs/metrics.md defines: the LM diagonal
curvature, seeded with p(1-p) at the logits and propagated with squared Jacobians
(h_x = (J∘J)^T h_y), where each J is taken with ``torch.func.jacrev`` of the model's own pieces —
no twin involved. Every segment between two read-out points is single-path (element-wise ops,
permutations, non-overlapping pooling, then one mixing layer), so the squared Jacobian of the
segment is the node-by-node LM recursion.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunetax.metrics import (MaskedModel, StructureError, analyze, lm_curvature, register_layer_rule, saliencies,
                              slim, unregister_layer_rule)
from prunetax.metrics.curvature import record_forward
from prunetax.taxonomy import MetricSpec
from prunetax.taxonomy.errors import PrunetaxError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


class Softsign(nn.Module):
    """x / (1 + |x|): traced as is, fx would meet a division by a tensor with channels."""

    def forward(self, x):
        return x / (1 + x.abs())


class ChannelScale(nn.Module):
    """y = s[c] x: a parameter used directly in forward, so it must be registered."""

    def __init__(self, c):
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 2.0, c))

    def forward(self, x):
        return x * self.s.view(1, -1, 1, 1)


def _softsign_lm(t, module, x):
    d = 1 / (1 + x.abs()) ** 2
    return t * d * d


def _scale_lm(t, module, x):
    s = module.s.detach().view(1, -1, 1, 1)
    return t * s * s


def _scale_slim(module, keep_in):
    new = ChannelScale(int(keep_in.sum()))
    new.s.data = module.s.data[keep_in].clone()
    return new


def _roll_channels(n, module, x, shifts, dims):
    assert dims == 1
    return (torch.arange(n) - shifts) % n


class Net(nn.Module):
    def __init__(self, method=False):
        super().__init__()
        self.method = method
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.soft = Softsign()
        self.scale = ChannelScale(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(5 * 9, 7)

    def head(self, a2):  # mask point of conv2 -> logits
        r = a2.roll(1, 1) if self.method else torch.roll(a2, 1, 1)
        return self.fc(torch.flatten(self.pool(r), 1))

    def middle(self, a1):  # mask point of conv1 -> conv2's output
        return self.conv2(self.scale(self.soft(a1)))

    def forward(self, x):  # [B, 3, 6, 6]
        return self.head(self.relu2(self.middle(self.relu1(self.conv1(x)))))


ROLL = {False: torch.roll, True: "roll"}


@pytest.fixture(params=[False, True], ids=["torch.roll", "Tensor.roll"])
def registered(request):
    roll = ROLL[request.param]
    register_layer_rule(Softsign, "passthrough", lm=_softsign_lm)
    register_layer_rule(ChannelScale, "passthrough", slim=_scale_slim, lm=_scale_lm)
    register_layer_rule(roll, _roll_channels, lm="structural")
    try:
        yield request.param
    finally:
        for target in (Softsign, ChannelScale, roll):
            unregister_layer_rule(target)


def _data(method):
    torch.manual_seed(0)
    model = Net(method).double().eval()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 3, 6, 2])
    return model, x, y


def _sq_vjp(jac: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """(J∘J)^T h for a Jacobian shaped [*out, *in] and h shaped like out."""
    return torch.tensordot(h_out, jac * jac, dims=h_out.dim())


def _reference(model: Net, x, y):
    """Per-image LM curvature and gradients by squared Jacobians of the model's pieces, float64."""
    out = []
    for n in range(len(x)):
        xn, yn = x[n:n + 1], y[n:n + 1]
        W1, b1, W2, b2 = (p.detach() for p in (model.conv1.weight, model.conv1.bias,
                                                model.conv2.weight, model.conv2.bias))
        with torch.no_grad():
            pre1 = F.conv2d(xn, W1, b1, padding=1)
            a1 = torch.relu(pre1)
            u = model.scale(model.soft(a1))
            pre2 = F.conv2d(u, W2, b2, padding=1)
            a2 = torch.relu(pre2)
            z = model.head(a2)
        p = torch.softmax(z, 1)
        seed = p * (1 - p)                                                   # [1, 7]
        h_a2 = _sq_vjp(torch.func.jacrev(model.head)(a2), seed)             # roll, pool, flatten, fc
        h_pre2 = h_a2 * (pre2 > 0).double()                                  # ReLU: derivative 0 or 1
        h_a1 = _sq_vjp(torch.func.jacrev(model.middle)(a1), h_pre2)         # softsign, scale, conv2
        h_pre1 = h_a1 * (pre1 > 0).double()
        jw1, jb1 = torch.func.jacrev(lambda W, b: F.conv2d(xn, W, b, padding=1), argnums=(0, 1))(W1, b1)
        jw2, jb2 = torch.func.jacrev(lambda W, b: F.conv2d(u, W, b, padding=1), argnums=(0, 1))(W2, b2)

        def loss_of(a1_, a2_=None):
            a2_ = torch.relu(model.middle(a1_)) if a2_ is None else a2_
            return F.cross_entropy(model.head(a2_), yn, reduction="sum")
        g_a1 = torch.func.grad(loss_of)(a1)
        g_a2 = torch.func.grad(lambda a: loss_of(a1, a))(a2)
        out.append(dict(a1=a1, a2=a2, h_a1=h_a1, h_a2=h_a2, g_a1=g_a1, g_a2=g_a2,
                        h_W1=_sq_vjp(jw1, h_pre1), h_b1=_sq_vjp(jb1, h_pre1),
                        h_W2=_sq_vjp(jw2, h_pre2), h_b2=_sq_vjp(jb2, h_pre2), W1=W1, b1=b1, W2=W2, b2=b2))
    return out


def _expected(ref, spec: str, layer: str) -> torch.Tensor:
    """What docs/metrics.md says ``spec`` (reduction sum, scaling none, per image) is, from ``ref``."""
    k = "1" if layer == "conv1" else "2"
    total = 0
    for r in ref:
        if spec.startswith("activation"):
            a, g, h = r["a" + k][0], r["g_a" + k][0], r["h_a" + k][0]
            f = 0.5 * a * a * h + (-a * g if "taylor2" in spec else 0)
            total = total + f.sum((1, 2))
        else:
            W, b, hW, hb = r["W" + k], r["b" + k], r["h_W" + k], r["h_b" + k]
            total = total + (0.5 * W * W * hW).sum((1, 2, 3)) + 0.5 * b * b * hb
    return total / len(ref)


SPECS = ["activation-hessian_lm-sum-none", "activation-taylor2_lm-sum-none", "weight-hessian_lm-sum-none"]


def test_structure_slim_and_masking_faces(registered):
    model, x, _ = _data(registered)
    st = analyze(model, x)
    assert st.producers == ["conv1", "conv2"] and st.num_units == 9 and st.remask == []
    assert st.layers["fc"].in_units.tolist() == [8, 4, 5, 6, 7]   # rolled by one channel
    for keep in (torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool),
                 torch.tensor([0, 1, 1, 1, 1, 1, 0, 1, 1], dtype=torch.bool)):
        mm = MaskedModel(model, st).eval()
        mm.set_keep(keep)
        small = slim(model, st, keep).eval()
        assert small.get_submodule("scale").s.numel() == int(keep[:4].sum())
        with torch.no_grad():
            torch.testing.assert_close(mm(x), small(x), rtol=1e-12, atol=1e-12)


def test_hessian_lm_and_taylor2_lm_through_registered_layers(registered):
    model, x, y = _data(registered)
    st = analyze(model, x)
    res = saliencies(model, st, [(x, y)], SPECS)
    ref = _reference(model, x, y)
    for spec in SPECS:
        for layer in ("conv1", "conv2"):
            got = res.channel_values(MetricSpec.parse(spec))[layer]
            want = _expected(ref, spec, layer)
            assert bool((want.abs() > 0).all())
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-15, msg=f"{spec} {layer}")


def test_curvature_at_every_read_out_point_matches_the_squared_jacobians(registered):
    """The same check one level down, image by image, on ``lm_curvature`` itself."""
    model, x, y = _data(registered)
    st = analyze(model, x)
    mm = MaskedModel(model, st).eval()
    gm = mm.graph_module
    by_target = {n.target: n.name for n in gm.graph.nodes if n.op == "call_module"}
    taps = {m.tap: by_target[t] for t, m in gm.named_children() if getattr(m, "tap", None)}
    with torch.no_grad():
        _, primal = record_forward(gm, x)
    h = lm_curvature(gm, x, [taps["conv1"], taps["conv2"]], primal=primal, logits=primal["fc"])
    ref = _reference(model, x, y)
    for n, r in enumerate(ref):
        torch.testing.assert_close(h[taps["conv1"]][n], r["h_a1"][0], rtol=1e-10, atol=1e-18)
        torch.testing.assert_close(h[taps["conv2"]][n], r["h_a2"][0], rtol=1e-10, atol=1e-18)


def test_a_rule_without_the_lm_face_names_the_layer_and_the_face():
    register_layer_rule(Softsign, "passthrough")            # no lm=
    register_layer_rule(ChannelScale, "passthrough", slim=_scale_slim, lm=_scale_lm)
    register_layer_rule(torch.roll, _roll_channels, lm="structural")
    try:
        model, x, y = _data(False)
        st = analyze(model, x)
        # metrics without curvature do not need the face
        res = saliencies(model, st, [(x, y)], ["activation-taylor-sum-none", "weight-hessian_gn-sum-none"])
        assert res.channel_values("activation-taylor-sum-none")["conv1"].isfinite().all()
        with pytest.raises(PrunetaxError) as e:
            saliencies(model, st, [(x, y)], ["activation-hessian_lm-sum-none"])
        msg = str(e.value)
        assert "\n" not in msg and "Softsign" in msg and "'soft'" in msg and "'lm'" in msg
        assert "register_layer_rule" in msg
    finally:
        for target in (Softsign, ChannelScale, torch.roll):
            unregister_layer_rule(target)


def test_an_lm_face_of_the_wrong_shape_or_kind_is_refused():
    with pytest.raises(StructureError, match="lm must be"):
        register_layer_rule(Softsign, "passthrough", lm="elementwise")
    register_layer_rule(Softsign, "passthrough", lm=lambda t, m, x: t.sum(1))   # drops the channels
    register_layer_rule(ChannelScale, "passthrough", slim=_scale_slim, lm=_scale_lm)
    register_layer_rule(torch.roll, _roll_channels, lm="structural")
    try:
        model, x, y = _data(False)
        st = analyze(model, x)
        with pytest.raises(PrunetaxError, match=r"node 'soft' \(Softsign\).*'lm' face returned \(4, 6, 6\)"):
            saliencies(model, st, [(x, y)], ["activation-hessian_lm-sum-none"])
    finally:
        for target in (Softsign, ChannelScale, torch.roll):
            unregister_layer_rule(target)


def test_a_module_with_channel_state_and_no_slim_face_cannot_be_slimmed():
    register_layer_rule(Softsign, "passthrough", lm=_softsign_lm)
    register_layer_rule(ChannelScale, "passthrough", lm=_scale_lm)   # no slim=
    register_layer_rule(torch.roll, _roll_channels, lm="structural")
    try:
        model, x, _ = _data(False)
        st = analyze(model, x)
        keep = torch.ones(st.num_units, dtype=torch.bool)
        slim(model, st, keep)                  # nothing removed before it: nothing to slim
        keep[1] = False                        # conv1's channel 1 enters the ChannelScale
        with pytest.raises(StructureError) as e:
            slim(model, st, keep)
        msg = str(e.value)
        assert "\n" not in msg and "'scale'" in msg and "ChannelScale" in msg and "'slim'" in msg
        assert "register_layer_rule" in msg
    finally:
        for target in (Softsign, ChannelScale, torch.roll):
            unregister_layer_rule(target)
