"""Structure's vectorised counts against the physically slimmed network, counted weight by weight."""
import pytest
import torch
from torch import nn

from prunetax.benchmarks.models import create_model
from prunetax.metrics import analyze, slim

MODELS = ["lenet5", "alexnet_cifar", "resnet20_a", "resnet20", "mobilenetv2", "densenet40"]


def _physical_counts(net: nn.Module, x: torch.Tensor) -> tuple[int, int, int, int]:
    """conv weights, conv+linear weights, MACs per image, conv output channels of ``net``."""
    convs, linears, macs = [], [], [0]

    def hook(m, inp, out):
        macs[0] += m.weight.numel() * (out.shape[-1] * out.shape[-2] if isinstance(m, nn.Conv2d) else 1)
    hs = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            convs.append(m)
        elif isinstance(m, nn.Linear):
            linears.append(m)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hs.append(m.register_forward_hook(hook))
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    conv_w = sum(m.weight.numel() for m in convs)
    return conv_w, conv_w + sum(m.weight.numel() for m in linears), macs[0], sum(m.out_channels for m in convs)


@pytest.mark.parametrize("name", MODELS)
def test_counts_equal_the_slimmed_network(name):
    torch.manual_seed(0)
    in_ch = 1 if name == "lenet5" else 3
    model = create_model(name, in_channels=in_ch).eval()
    x = torch.randn(1, in_ch, 32, 32)
    st = analyze(model, x)
    U = st.num_units
    gen = torch.Generator().manual_seed(1)
    keeps = torch.rand(3, U, generator=gen) > torch.tensor([[0.0], [0.3], [0.7]])
    # never empty a producer: keep its first unit
    for p in st.producers:
        u = st.layers[p].out_units
        keeps[:, int(u[u >= 0][0])] = True
    got = torch.stack([st.conv_weights_active(keeps), st.weights_active(keeps), st.macs_active(keeps),
                       st.channels_active(keeps)], 1).tolist()
    for k in range(3):
        assert tuple(got[k]) == _physical_counts(slim(model, st, keeps[k]), x), (name, k)
    # weights removed with a unit = weights of the slimmed net before minus after removing it
    wr = st.weights_removed(keeps[1])
    before = _physical_counts(slim(model, st, keeps[1]), x)[1]
    cand = torch.nonzero(keeps[1]).flatten()
    for u in cand[torch.randperm(len(cand), generator=gen)[:4]].tolist():
        k2 = keeps[1].clone()
        k2[u] = False
        if any(set(st.layers[p].out_units[k2[st.layers[p].out_units.clamp(min=0)]
                                          & (st.layers[p].out_units >= 0)].tolist()) == set()
               for p in st.producers):
            continue                      # removing u would empty a layer: no physical network
        assert int(wr[u]) == before - _physical_counts(slim(model, st, k2), x)[1], (name, u)
