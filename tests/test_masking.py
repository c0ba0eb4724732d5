"""Masking equals removal: a masked network computes exactly what the slimmed network computes."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunetax.benchmarks.models import create_model, list_models
from prunetax.metrics import MaskedModel, analyze, slim
from prunetax.taxonomy.errors import PrunetaxError

SIZES = {"vgg16_bn": 32, "lenet5": 16, "alexnet_cifar": 8}
ZOO = list_models(available_only=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def _setup(name, classes=5, size=None):
    torch.manual_seed(0)
    size = size or SIZES.get(name, 8)
    model = _random_bn(create_model(name, num_classes=classes, input_size=size))
    x = torch.randn(2, 3, size, size)
    return model, analyze(model, x), x


def _predicted_params(model, s, keep):
    """weights_active plus biases of kept outputs plus 2 affine parameters per kept BN channel."""
    kext = torch.cat([keep, torch.ones(1, dtype=torch.bool)])
    total = int(s.weights_active(keep))
    for name, L in s.layers.items():
        if model.get_submodule(name).bias is not None:
            total += int(kext[L.out_units].sum())
    for name, L in s.layers.items():  # a producer's own BN follows its output channels
        if L.bn is not None:
            total += 2 * int(kext[L.out_units].sum())
    own = {L.bn for L in s.layers.values()}
    other_bn = [m for n, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and n not in own]
    return total, other_bn


@pytest.mark.parametrize("name", ZOO)
def test_masked_equals_slimmed_for_every_zoo_model(name):
    model, s, x = _setup(name)
    K = 3
    keep = torch.rand(K, s.num_units) < 0.7
    masked = MaskedModel(model, s).eval()
    masked.set_keep(keep)
    with torch.no_grad():
        y = masked(x.repeat(K, 1, 1, 1))  # trajectory k owns rows 2k:2k+2
        for k in range(K):
            small = slim(model, s, keep[k]).eval()
            assert (y[2 * k:2 * k + 2] - small(x)).abs().max() <= 1e-5
            weights = sum(m.weight.numel() for m in small.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
            assert weights == s.weights_active(keep[k])
            predicted, other_bn = _predicted_params(model, s, keep[k])
            if not other_bn:  # every BN belongs to a producer: its size is that producer's kept outputs
                assert sum(p.numel() for p in small.parameters()) == predicted
            assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_densenet_pre_activation_bn_params_follow_the_concat():
    model, s, x = _setup("densenet40")
    keep = torch.rand(s.num_units) < 0.5
    small = slim(model, s, keep)
    # the BN of dense layer i in block 1 sees the stem's 24 channels and the i previous layers' 12
    stem = int(keep[s.layers["0"].out_units].sum())
    kept = [stem]
    for i in range(1, 13):
        assert small.get_submodule(f"{i}.bn").num_features == sum(kept)
        kept.append(int(keep[s.layers[f"{i}.conv"].out_units].sum()))
    # and masking must re-apply the mask after those BNs, or removed channels would leak through
    assert "_1_bn" in s.remask
    no_remask = copy.copy(s)
    no_remask.remask = []
    with torch.no_grad():
        ref = small.eval()(x)
        for struct, close in ((s, True), (no_remask, False)):
            masked = MaskedModel(model, struct).eval()
            masked.set_keep(keep)
            assert ((masked(x) - ref).abs().max() <= 1e-5) == close


def test_no_mask_is_the_plain_model_and_all_kept_too():
    model, s, x = _setup("resnet20_a")
    masked = MaskedModel(model, s).eval()
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(masked(x), ref)
        masked.set_keep(torch.ones(2, s.num_units, dtype=torch.bool))
        torch.testing.assert_close(masked(x.repeat(2, 1, 1, 1)), ref.repeat(2, 1), atol=1e-6, rtol=0)
    assert masked.num_trajectories == 2
    with pytest.raises(PrunetaxError):
        masked(torch.randn(3, 3, 8, 8))
    with pytest.raises(PrunetaxError):
        masked.set_keep(torch.ones(2, s.num_units + 1, dtype=torch.bool))


def test_taps_and_inputs_are_recorded_in_the_graph():
    model, s, x = _setup("lenet5", size=28)
    masked = MaskedModel(model, s).eval()
    keep = torch.ones(2, s.num_units, dtype=torch.bool)
    keep[0, 3] = False  # conv1 channel 3 gone in trajectory 0 only
    masked.set_keep(keep)
    masked.record = True
    out = masked(x.repeat(2, 1, 1, 1))
    assert set(masked.taps) == set(s.producers) and set(masked.inputs) == set(s.layers)
    conv1 = masked.taps["0"]
    assert conv1.shape == (4, 20, 24, 24)
    assert (conv1[:2, 3] == 0).all() and (conv1[2:, 3] != 0).any()
    assert masked.inputs["5"].shape == (4, 50, 16)  # fc1 after the flatten: [N, C, 4*4]
    assert masked.inputs["0"].shape == (4, 3, 28, 28)
    loss = out.sum()
    grads = torch.autograd.grad(loss, list(masked.taps.values()) + list(masked.inputs.values()))
    assert all(g is not None and g.shape == t.shape for g, t in zip(grads, list(masked.taps.values())))
    masked.record = False
    masked(x.repeat(2, 1, 1, 1))
    assert masked.record is False


def test_masked_model_shares_parameters_and_follows_the_device():
    model, s, x = _setup("cifar10_quick")
    masked = MaskedModel(model, s)
    mp = {id(p) for p in model.parameters()}
    assert {id(p) for p in masked.parameters()} == mp
    assert all(b.dtype == torch.long for b in masked.buffers())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masking_on_gpu():
    model, s, x = _setup("resnet20")
    masked = MaskedModel(model, s).cuda().eval()
    model.cuda()
    keep = torch.rand(2, s.num_units) < 0.7
    masked.set_keep(keep)
    with torch.no_grad():
        y = masked(x.cuda().repeat(2, 1, 1, 1))
        ys = slim(model, s, keep[1]).cuda().eval()(x.cuda())
    assert (y[2:] - ys).abs().max() <= 1e-4


def test_in_place_ops_do_not_overwrite_taps():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.relu, self.fc = nn.ReLU(inplace=True), nn.Linear(4, 2)

        def forward(self, x):
            x = self.relu(self.a(x))
            out = self.bn(self.b(x))
            out = out.add_(x)  # in place on the mask point of b
            return self.fc(torch.flatten(self.relu(out).mean((2, 3)), 1))

    model = _random_bn(Block())
    x = torch.randn(2, 3, 6, 6)
    s = analyze(model, x)
    masked = MaskedModel(model, s).eval()
    masked.record = True
    y = masked(x)
    with torch.no_grad():
        expected = model.bn(model.b(torch.relu(model.a(x))))
        torch.testing.assert_close(masked.taps["b"].detach(), expected)
        torch.testing.assert_close(y, model(x))
    assert model.relu.inplace  # the user's model is untouched
