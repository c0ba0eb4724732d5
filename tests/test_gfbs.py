"""GFBS and network slimming against their formulas (docs/taxonomy.md, "Named metrics") computed by hand.

GFBS, per BatchNorm channel c of producer l (Liu et al. 2021, as in their code):
    S_c = (|gamma_c| / ||gamma_l||_2) * (|dL/dgamma_c| / ||dL/dgamma_l||_2) + 0.05 * beta_c / ||beta_l||_2
with L the batch's summed loss (its gradient aggregated over the batch before the absolute
value) and the layer norms over the kept channels (docs/metrics.md, layer_l2). Network
slimming is |gamma_c|. The gradient here comes from one batched autograd call on a float64
copy whose removed channels are zeroed by forward hooks after each producer's ReLU.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunetax.metrics import analyze, saliencies
from prunetax.taxonomy import parse_metric



class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.AvgPool2d(2, 2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):  # [B, 3, 8, 8]
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


def make(seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BNNet()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            C = bn.num_features
            bn.weight.copy_(torch.randn(C, generator=g))
            bn.bias.copy_(torch.randn(C, generator=g) * 0.3)
            bn.running_mean.copy_(torch.randn(C, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(C, generator=g) + 0.5)
    x = torch.randn(6, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    return model.eval(), x, y


def by_hand(model, st, x, y, keep):
    """{producer: S_c list} and {producer: |gamma| list}, float64, +inf for removed channels."""
    m = copy.deepcopy(model).double().eval()
    kept = {}
    for name, relu in (("conv1", m.relu1), ("conv2", m.relu2)):
        mask = torch.tensor([bool(keep[u]) for u in st.layers[name].out_units.tolist()])
        kept[name] = mask
        relu.register_forward_hook(lambda mod, inp, out, mask=mask: out * mask[None, :, None, None].double())
    loss = F.cross_entropy(m(x.double()), y, reduction="sum")
    bns = {"conv1": m.bn1, "conv2": m.bn2}
    grads = torch.autograd.grad(loss, [bns[k].weight for k in bns])
    gfbs, slim = {}, {}
    for (name, bn), G in zip(bns.items(), grads):
        k = kept[name]
        gamma, beta = bn.weight.detach(), bn.bias.detach()
        ng = math.sqrt(sum(float(v) ** 2 for v in gamma[k]))
        nG = math.sqrt(sum(float(v) ** 2 for v in G[k]))
        nb = math.sqrt(sum(float(v) ** 2 for v in beta[k]))
        gfbs[name] = [(abs(float(gamma[c])) / ng) * (abs(float(G[c])) / nG) + 0.05 * float(beta[c]) / nb
                      if k[c] else math.inf for c in range(len(gamma))]
        slim[name] = [abs(float(gamma[c])) if k[c] else math.inf for c in range(len(gamma))]
    return gfbs, slim


@pytest.mark.parametrize("pruned", [False, True], ids=["full", "pruned"])
def test_gfbs_and_network_slimming_by_hand(pruned):
    model, x, y = make()
    st = analyze(model, x)
    assert st.layers["conv1"].bn == "bn1" and st.layers["conv2"].bn == "bn2"
    keep = torch.ones(st.num_units, dtype=torch.bool)
    if pruned:
        keep[[1, 4, 7, 12]] = False
    gfbs, slim = by_hand(model, st, x, y, keep)
    metrics = [parse_metric("gfbs"), parse_metric("network_slimming")]
    res = saliencies(copy.deepcopy(model).double(), st, [(x[:4].double(), y[:4]), (x[4:].double(), y[4:])],
                       metrics, keep=keep)
    for metric, want in zip(metrics, (gfbs, slim)):
        got_units = res.unit_saliency(metric).tolist()
        for name in ("conv1", "conv2"):
            for c, u in enumerate(st.layers[name].out_units.tolist()):
                a, b = got_units[u], want[name][c]
                assert (a == b) if math.isinf(b) else math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), \
                    (str(metric), name, c, a, b)


def test_gfbs_ignores_the_batch_mean_convention():
    """GFBS divides the gradient by its layer norm, so the summed and the mean loss rank alike:
    the engine's value does not change when the same images come in one batch or in three."""
    model, x, y = make(1)
    st = analyze(model, x)
    gfbs = parse_metric("gfbs")
    m = copy.deepcopy(model).double()
    one = saliencies(m, st, [(x.double(), y)], [gfbs]).unit_saliency(gfbs)
    three = saliencies(m, st, [(x[i:i + 2].double(), y[i:i + 2]) for i in (0, 2, 4)], [gfbs]).unit_saliency(gfbs)
    torch.testing.assert_close(one, three, rtol=1e-10, atol=1e-14)
