"""The engine's per-image weight gradients against torch.func per-sample gradients.

The ``weight-*`` metrics of a producer channel c reduce, per image, the elements of its filter
W[c] plus its bias b[c] (docs/metrics.md). Here the per-image gradients come from
``vmap(grad(functional_call))`` on a float64 copy, and the metrics are assembled from them.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).parent))
import reference_saliency as R  # noqa: E402  (only its test networks)

from prunetax.metrics import analyze, saliencies  # noqa: E402
from prunetax.taxonomy import MetricSpec  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")



def per_sample_grads(model, x, y):
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi[None],))
        return F.cross_entropy(out, yi[None], reduction="sum")

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def expected(model, st, grads, pointwise, reduction, scaling):
    """{producer: tensor [C]} from per-image gradients (all units kept)."""
    out = {}
    mods = dict(model.named_modules())
    for name in st.producers:
        W = mods[name].weight.detach()
        gW = grads[name + ".weight"]                         # [N, *W.shape]
        parts_x, parts_g = [W.flatten(1)], [gW.flatten(2)]
        if mods[name].bias is not None:
            parts_x.append(mods[name].bias.detach()[:, None])
            parts_g.append(grads[name + ".bias"][:, :, None])
        x = torch.cat(parts_x, 1)[None]                        # [1, C, E]
        g = torch.cat(parts_g, 2)                              # [N, C, E]
        f = {"gradient": g, "taylor": -x * g, "hessian_gn": x * x / 2 * g * g}[pointwise]
        r = {"sum": f.sum(2), "l1": f.abs().sum(2), "l2": (f * f).sum(2), "abs_sum": f.sum(2).abs(),
             "sqr_sum": f.sum(2) ** 2}[reduction]
        s = r.mean(0)
        if scaling == "elements":
            s = s / W[0].numel()                               # bias not counted
        out[name] = s
    return out


@pytest.mark.parametrize("net,shape", [("grouped", (3, 8, 8)), ("resnet", (3, 8, 8)), ("lenet", (1, 20, 20))])
def test_weight_gradient_metrics_match_torch_func(net, shape):
    cls = {"grouped": R.GroupedNet, "resnet": R.SmallResNet, "lenet": R.SmallLeNet}[net]
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    model = R.randomize_bn(cls(), gen).double().eval()
    x = torch.randn(5, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (5,), generator=gen)
    st = analyze(model, x)
    grads = per_sample_grads(model, x, y)
    # the per-sample gradients add up to the batch gradient
    batch = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), list(model.parameters()))
    for (k, _), g in zip(model.named_parameters(), batch):
        torch.testing.assert_close(grads[k].sum(0), g, rtol=1e-10, atol=1e-14)
    combos = [("gradient", "l2", "none"), ("gradient", "sum", "none"), ("gradient", "l1", "elements"),
              ("taylor", "l2", "none"), ("taylor", "l1", "elements"), ("hessian_gn", "l2", "none"),
              ("gradient", "sqr_sum", "none"), ("hessian_gn", "sqr_sum", "elements")]
    specs = [MetricSpec("weight", p, r, s) for p, r, s in combos]
    res = saliencies(copy.deepcopy(model), st, [(x[:3], y[:3]), (x[3:], y[3:])], specs)
    for spec, (p, r, s) in zip(specs, combos):
        want = expected(model, st, grads, p, r, s)
        got = res.channel_values(spec)
        for name in st.producers:
            torch.testing.assert_close(got[name], want[name], rtol=1e-8, atol=1e-12 * float(want[name].abs().max()),
                                       msg=lambda m, spec=spec, name=name: f"{spec.id} {name}: {m}")
