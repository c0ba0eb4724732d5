"""hessian_lm (Levenberg-Marquardt diagonal curvature) checked where its value is known.

1. On the weights of the last layer before softmax cross-entropy, LM is exact:
   d2L/dW[o,e]^2 = x_e^2 p_o (1 - p_o). The engine exposes the classifier's weights as the
   consumer slices of a conv classifier (domino_io minus domino_o), compared with the exact
   Hessian diagonal from torch.autograd.functional.hessian in float64.
2. On a tiny 2-layer ReLU network whose LM recursion is worked out by hand below.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunetax.metrics import analyze, saliencies
from prunetax.taxonomy import MetricSpec

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")



class ConvHead(nn.Module):
    """conv 3->4 3x3 + ReLU + max-pool, then a conv classifier whose 3x3 kernel covers the 3x3 map."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.head = nn.Conv2d(4, 4, 3)

    def forward(self, x):  # [B, 3, 6, 6]
        return torch.flatten(self.head(self.pool(self.relu(self.conv1(x)))), 1)


def test_lm_is_exact_on_the_classifier_weights():
    torch.manual_seed(0)
    model = ConvHead().double().eval()
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    st = analyze(model, x)
    assert st.producers == ["conv1"]
    io = MetricSpec.parse("weight-hessian_lm-sum-none-domino_io")
    o = MetricSpec.parse("weight-hessian_lm-sum-none-domino_o")
    res = saliencies(model, st, [(x, y)], [io, o])
    engine_head = res.channel_values(io)["conv1"] - res.channel_values(o)["conv1"]

    # exact: for each image, the diagonal of the Hessian of its loss w.r.t. the head's weights
    W0 = model.head.weight.detach().clone()
    feats = model.pool(model.relu(model.conv1(x))).detach()
    expected = torch.zeros(4, dtype=torch.float64)
    for n in range(len(x)):
        def loss(W):
            z = F.conv2d(feats[n:n + 1], W, model.head.bias.detach()).flatten(1)
            return F.cross_entropy(z, y[n:n + 1], reduction="sum")
        H = torch.func.hessian(loss)(W0)
        diag = torch.einsum("abcdabcd->abcd", H)                 # [4, 4, 3, 3]
        expected += (W0 ** 2 / 2 * diag).sum(dim=(0, 2, 3)) / len(x)
        # and the closed form x_e^2 p_o (1 - p_o)
        p = torch.softmax(F.conv2d(feats[n:n + 1], W0, model.head.bias.detach()).flatten(1), 1)[0]
        closed = feats[n][None] ** 2 * (p * (1 - p))[:, None, None, None]
        torch.testing.assert_close(diag, closed, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(engine_head, expected, rtol=1e-8, atol=1e-14)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def test_lm_recursion_by_hand_on_a_two_layer_relu_net():
    """x = [1, 2]; W1 = [[1, -1], [0.5, 1]], b1 = [0, 0.5]: z1 = [-1, 3], a = relu(z1) = [0, 3];
    W2 = [[1, 2], [-1, 1]], b2 = 0: logits [6, 3], p = [sigmoid(3), sigmoid(-3)], and the seed is
    p(1-p) = q = 0.045176659730912144 for both classes. Squared-weight backward:
    h_a = [(1 + 1) q, (4 + 1) q] = [2q, 5q]; ReLU: h_z1 = [0, 5q]; h_W1[o, k] = x_k^2 h_z1[o]:
    row 1 = [5q, 20q], h_b1 = [0, 5q].
    weight-hessian_lm-sum-none of channel 1 = W1[1,0]^2/2*5q + W1[1,1]^2/2*20q + b1[1]^2/2*5q
      = 0.625q + 10q + 0.625q = 11.25q; channel 0 = 0.
    activation-hessian_lm-sum-none of channel 1 = 3^2/2 * 5q = 22.5q; channel 0 = 0 (a = 0).
    activation-taylor2_lm-sum-none adds -a*g with g = dL/da_1 = W2[:, 1] . (p - onehot(y=0))
    = 2(p0 - 1) + p1 = -p1, so channel 1 = 3 p1 + 22.5q.
    weight-hessian_lm-l1-elements of channel 1 = 11.25q / 2 (two weights; the bias is not counted)."""
    model = Tiny().double().eval()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 1.0]]))
        model.fc1.bias.copy_(torch.tensor([0.0, 0.5]))
        model.fc2.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        model.fc2.bias.zero_()
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0])
    q = 0.045176659730912144
    p1 = 1 / (1 + math.exp(3))
    assert math.isclose(q, p1 * (1 - p1), rel_tol=1e-15)
    st = analyze(model, x)
    specs = [MetricSpec.parse(s) for s in ("weight-hessian_lm-sum-none", "activation-hessian_lm-sum-none",
                                           "activation-taylor2_lm-sum-none", "weight-hessian_lm-l1-elements")]
    res = saliencies(model, st, [(x, y)], specs)
    expect = {
        specs[0]: [0.0, 11.25 * q],
        specs[1]: [0.0, 22.5 * q],
        specs[2]: [0.0, 3 * p1 + 22.5 * q],
        specs[3]: [0.0, 11.25 * q / 2],  # the bias is not counted: 2 elements
    }
    for spec, want in expect.items():
        got = res.channel_values(spec)["fc1"].tolist()
        for a, b in zip(got, want):
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15), (spec.id, got, want)


class Convs(nn.Module):
    """'same'-padded, grouped-strided-dilated and reflect-padded convolutions, then linear layers;
    ``reflect_by_hand``: the same network with numeric padding and an explicit F.pad(mode='reflect')."""

    def __init__(self, reflect_by_hand: bool = False):
        super().__init__()
        self.reflect_by_hand = reflect_by_hand
        self.c1 = nn.Conv2d(2, 4, 3, padding=1 if reflect_by_hand else "same")
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.c3 = nn.Conv2d(6, 6, 3, padding=0 if reflect_by_hand else 1,
                            padding_mode="zeros" if reflect_by_hand else "reflect")
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(6 * 4 * 4, 8)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x):  # [B, 2, 8, 8]
        x = self.relu(self.c2(self.relu(self.c1(x))))
        if self.reflect_by_hand:
            x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        x = self.relu(self.c3(x))
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


LM_SPECS = ("weight-hessian_lm-sum-none", "activation-hessian_lm-sum-none", "activation-taylor2_lm-l2-none")


def _lm_values(model, x, y):
    st = analyze(model, x[:1])
    specs = [MetricSpec.parse(s) for s in LM_SPECS]
    res = saliencies(model, st, [(x, y)], specs)
    return {(s.id, layer): v for s in specs for layer, v in res.channel_values(s).items()}


def test_lm_twin_without_its_forward_equals_autograd_through_the_squared_layers(monkeypatch):
    """The twin's convolutions and linear layers skip their forward and call the backward autograd
    would run: the curvature is bit-identical to autograd through F.conv2d / F.linear with squared
    weights (the twin as it was built before), in float32 and float64."""
    import prunetax.metrics.curvature as curvature

    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(1)
        model = Convs().to(dtype).eval()
        x, y = torch.randn(6, 2, 8, 8, dtype=dtype), torch.randint(0, 5, (6,))
        fast = _lm_values(model, x, y)
        with monkeypatch.context() as mp:
            mp.setattr(curvature, "twin_conv",
                       lambda t, w2, shape, s, p, d, g: F.conv2d(t, w2, None, s, p, d, g))
            mp.setattr(curvature, "twin_linear", lambda t, w2: F.linear(t, w2))
            reference = _lm_values(model, x, y)
        assert fast.keys() == reference.keys() and len(fast) == 3 * 4
        for k in fast:
            assert torch.equal(fast[k], reference[k]), k
            assert fast[k].abs().sum() > 0, k


def test_reflect_and_same_padded_convs_score_as_their_explicit_padding():
    """padding_mode='reflect' pads by copying elements, then convolves without padding; a 3x3
    padding='same' conv pads 1 on each side. The same network written with F.pad(mode='reflect'),
    an unpadded conv and padding=1 gets the same saliency under every paper-308 metric (float64),
    the LM curvature and the per-image weight gradients included: both were once computed as if the
    padding were zeros (the twin), or failed on 'same' (the unfold of the weight gradients)."""
    from prunetax.enumerate import metric_space

    torch.manual_seed(2)
    a = Convs().double().eval()
    b = Convs(reflect_by_hand=True).double().eval()
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(6, 2, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    specs = list(metric_space("paper"))
    ra = saliencies(a, analyze(a, x[:1]), [(x, y)], specs)
    rb = saliencies(b, analyze(b, x[:1]), [(x, y)], specs)
    assert len(specs) == 308
    for s in specs:
        va, vb = ra.channel_values(s), rb.channel_values(s)
        assert va.keys() == vb.keys() == {"c1", "c2", "c3", "fc1"}, s.id
        for layer in va:
            torch.testing.assert_close(va[layer], vb[layer], rtol=1e-10, atol=1e-18, msg=f"{s.id} {layer}")
