"""Structure analysis: channel, unit and weight counts derived by hand; weights_removed against slimming."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import prunetax.metrics as metrics
from prunetax.benchmarks.models import create_model
from prunetax.metrics import StructureError, analyze, register_layer_rule, slim, unregister_layer_rule
from prunetax.taxonomy.errors import PrunetaxError


pytestmark = pytest.mark.usefixtures("one_thread")


def _analyze(name, size=32, classes=10, in_ch=3):
    model = create_model(name, in_channels=in_ch, num_classes=classes, input_size=size)
    return model, analyze(model, torch.randn(1, in_ch, size, size))


# --- counts derived by hand (3x32x32 input, 10 classes) -------------------------------------------

CONV_CHANNELS = {"lenet5": 20 + 50, "cifar10_quick": 32 + 32 + 64,
                 "nin": 192 + 160 + 96 + 192 + 192 + 192 + 192 + 192 + 10,
                 "alexnet_cifar": 96 + 256 + 384 + 384 + 256,
                 "resnet20": 16 + 3 * 2 * 16 + (3 * 2 * 32 + 32) + (3 * 2 * 64 + 64)}


@pytest.mark.parametrize("name,expected", [("lenet5", 70), ("cifar10_quick", 128), ("nin", 1418),
                                           ("alexnet_cifar", 1376), ("resnet20", 784)])
def test_conv_channels_match_the_paper_table(name, expected):
    assert CONV_CHANNELS[name] == expected
    assert _analyze(name)[1].conv_channels == expected


def test_lenet5_by_hand():
    _, s = _analyze("lenet5")
    assert s.num_units == 20 + 50 + 500  # the classifier is not prunable
    assert s.conv_weights == 5 * 5 * 3 * 20 + 5 * 5 * 20 * 50
    fc1, fc2 = s.layers["5"], s.layers["7"]
    assert (fc1.kind, fc1.in_channels, fc1.kernel, fc1.out_spatial) == ("linear", 50, 5 * 5, 1)
    assert (fc2.out_units == -1).all() and not fc2.is_producer and fc2.mask_point is None
    assert s.layers["0"].out_spatial == 28 * 28 and (s.layers["0"].in_units == -1).all()
    assert s.producers == ["0", "2", "5"]
    keep = torch.ones(s.num_units, dtype=torch.bool)
    removed = s.weights_removed(keep)
    assert removed[0] == 3 * 25 + 50 * 25  # conv1 filter + conv2's input slice
    assert removed[20] == 20 * 25 + 500 * 25  # conv2 filter + fc1's 25 columns per output
    assert removed[70] == 50 * 25 + 10  # fc1 row + fc2 column
    assert s.macs == 75 * 20 * 28 * 28 + 500 * 50 * 10 * 10 + 1250 * 500 + 500 * 10


def test_cifar10_quick_and_nin_by_hand():
    _, s = _analyze("cifar10_quick")
    assert s.num_units == 32 + 32 + 64 + 64  # fc64 is a producer
    assert s.conv_weights == 25 * 3 * 32 + 25 * 32 * 32 + 25 * 32 * 64
    assert s.layers["10"].kernel == 4 * 4  # 32 -> 16 -> 8 -> 4 with ceil-mode pooling
    _, s = _analyze("nin")
    assert s.num_units == 1418 - 10  # cccp6 feeds the output
    assert s.conv_weights == (25 * 3 * 192 + 192 * 160 + 160 * 96 + 25 * 96 * 192 + 2 * 192 * 192
                              + 9 * 192 * 192 + 192 * 192 + 192 * 10)


def test_alexnet_groups_are_balanced():
    _, s = _analyze("alexnet_cifar")
    # conv2 (groups 2) ties conv1's channels j and j+48; its outputs j and j+128 are one unit, etc.
    assert s.num_units == 96 // 2 + 256 // 2 + 384 // 2 + 384 // 2 + 256 // 2 + 4096 + 4096
    assert s.conv_weights == (9 * 3 * 96 + 25 * 48 * 256 + 9 * 256 * 384 + 9 * 192 * 384 + 9 * 192 * 256)
    c1, c2 = s.layers["0"].out_units, s.layers["2"].out_units
    assert torch.equal(c1[:48], c1[48:]) and len(set(c1[:48].tolist())) == 48
    assert torch.equal(c2[:128], c2[128:])
    assert torch.equal(s.layers["2"].in_units, c1)


def test_resnet20_by_hand():
    _, s = _analyze("resnet20")
    stage = [16, 32, 64]
    # per stage: one stream (stem or projection + every conv2 merged by adds) + 3 block conv1s
    assert s.num_units == sum(w + 3 * w for w in stage)
    assert s.num_units == 448
    conv = 9 * 3 * 16 + 6 * 9 * 16 * 16  # stem, stage 1
    conv += 9 * 16 * 32 + 5 * 9 * 32 * 32 + 16 * 32  # stage 2 with its 1x1 projection
    conv += 9 * 32 * 64 + 5 * 9 * 64 * 64 + 32 * 64  # stage 3
    assert s.conv_weights == conv == 270256
    stem, proj = s.layers["conv1"], s.layers["layers.3.shortcut.0"]
    assert torch.equal(stem.out_units, s.layers["layers.2.conv2"].out_units)
    assert torch.equal(proj.out_units, s.layers["layers.5.conv2"].out_units)
    assert stem.mask_point == "relu" and stem.bn == "bn1"
    assert proj.bn == "layers.3.shortcut.1" and proj.mask_point == "layers_3_shortcut_1"
    unit = s.units[int(stem.out_units[0])]
    assert {m[0] for m in unit.members} == {"conv1", "layers.0.conv2", "layers.1.conv2", "layers.2.conv2"}
    assert {c[0] for c in unit.consumers} == {f"layers.{i}.conv1" for i in range(4)} | {"layers.3.shortcut.0"}


def test_resnet20_zero_padding_offsets():
    _, s = _analyze("resnet20_a")
    # stage 2 stream: channels 8..23 carry stage 1's 16 units; 0..7 and 24..31 are new (16);
    # stage 3: 16..47 carry stage 2's 32, 32 new. Streams: 16 + 16 + 32; block conv1s: 3*(16+32+64)
    assert s.num_units == 16 + 16 + 32 + 3 * (16 + 32 + 64)
    assert s.conv_channels == 784 - 32 - 64
    s1, s2, s3 = (s.layers[f"layers.{i}.conv2"].out_units for i in (0, 3, 6))
    assert torch.equal(s2[8:24], s1) and torch.equal(s3[16:48], s2)
    assert not set(s2[:8].tolist()) & set(s1.tolist())


def test_depthwise_and_unit_totals_mobilenetv2_densenet_vgg():
    _, s = _analyze("mobilenetv2")
    dw = s.layers["5.block.3"]  # third block (24 -> 24): expand 144, depthwise 144
    assert dw.groups == 144 and torch.equal(dw.out_units, dw.in_units)
    expand = 32 + 16 + 96 + 24 + 144 + 144 + 32 + 2 * 192 + 192 + 64 + 3 * 384 + 384 + 96 + 2 * 576 + 576
    assert s.num_units == expand + 160 + 2 * 960 + 960 + 320 + 1280
    _, s = _analyze("densenet40")
    assert s.conv_channels == s.num_units == 24 + 36 * 12 + (24 + 144) + (24 + 288)
    _, s = _analyze("vgg16_bn")
    assert s.conv_channels == s.num_units == 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512


def test_counts_are_vectorised_and_match_the_modules():
    model, s = _analyze("resnet20_a", size=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    full = torch.ones(s.num_units, dtype=torch.bool)
    assert s.conv_weights_active(full) == sum(m.weight.numel() for m in convs) == s.conv_weights
    assert s.channels_active(full) == s.conv_channels
    keep = torch.rand(2, 3, s.num_units) < 0.6
    for f in (s.conv_weights_active, s.weights_active, s.macs_active, s.channels_active):
        batched = f(keep)
        assert batched.shape == (2, 3)
        assert all(batched[i, j] == f(keep[i, j]) for i in range(2) for j in range(3))
    assert s.weights_removed(keep).shape == (2, 3, s.num_units)
    assert (s.weights_removed(keep)[~keep] == 0).all()


def _weights(net):
    return sum(m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name,size", [("lenet5", 16), ("resnet20_a", 8), ("mobilenetv2", 8),
                                       ("alexnet_cifar", 8), ("densenet40", 8)])
def test_weights_removed_equals_slimming_difference(name, size):
    torch.manual_seed(1)
    model, s = _analyze(name, size=size, classes=5)
    keep = torch.rand(s.num_units) < 0.8
    removed = s.weights_removed(keep)
    base = _weights(slim(model, s, keep))
    candidates = keep.nonzero().flatten()
    for u in candidates[torch.randperm(len(candidates))[:4]].tolist():
        k2 = keep.clone()
        k2[u] = False
        assert base - _weights(slim(model, s, k2)) == removed[u], (name, u)


def test_weights_removed_counts_a_residual_around_one_conv_once():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 2)

        def forward(self, x):
            x = self.a(x)
            x = x + self.b(x)  # b's output channel c merges with its own input channel c
            return self.fc(x.mean((2, 3)))

    s = analyze(Net(), torch.randn(1, 3, 6, 6))
    assert s.num_units == 4
    keep = torch.ones(4, dtype=torch.bool)
    # a's filter 3*9 + b's input column 4*9 + b's filter 4*9 - the shared weight 9 + fc column 2
    assert s.weights_removed(keep)[0] == 27 + 36 + 36 - 9 + 2


# --- what the analysis cannot place, and the registration API ------------------------------------

class _RollChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 3)

    def forward(self, x):
        return self.c2(torch.roll(self.c1(x), 1, dims=1)).sum((2, 3))


class AddOffset(nn.Module):
    """A custom per-channel op with state that does not keep zeros zero."""

    def __init__(self, c):
        super().__init__()
        self.offset = nn.Parameter(torch.randn(c))

    def forward(self, x):
        return x + self.offset.view(1, -1, 1, 1)


def _slim_offset(m, keep_in):
    new = AddOffset(int(keep_in.sum()))
    new.offset.data = m.offset.data[keep_in].clone()
    return new


class _WithOffset(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.off, self.c2 = nn.Conv2d(3, 6, 3), AddOffset(6), nn.Conv2d(6, 4, 3)

    def forward(self, x):
        return self.c2(torch.relu(self.off(self.c1(x)))).flatten(1)


def test_unplaceable_ops_raise_one_line_errors():
    with pytest.raises(StructureError) as e:
        analyze(_RollChannels(), torch.randn(1, 3, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg and "'roll'" in msg and "torch.roll" in msg and "register_layer_rule" in msg
    with pytest.raises(StructureError) as e:
        analyze(_WithOffset(), torch.randn(1, 3, 8, 8))
    msg = str(e.value)
    assert "\n" not in msg and "off_offset" in msg and "get_attr" in msg and "register_layer_rule" in msg
    assert isinstance(e.value, PrunetaxError)


def test_untraceable_model_raises_structure_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x

    with pytest.raises(StructureError, match="torch.fx"):
        analyze(Branchy(), torch.randn(1, 3, 8, 8))


def _check_mask_equals_slim(model, s, x, trials=3):
    model.eval()
    for _ in range(trials):
        keep = torch.rand(s.num_units) < 0.6
        mm = metrics.MaskedModel(model, s).eval()
        mm.set_keep(keep)
        with torch.no_grad():
            torch.testing.assert_close(mm(x), slim(model, s, keep).eval()(x), atol=1e-5, rtol=0)


def test_registered_function_rule_places_a_channel_roll():
    register_layer_rule(torch.roll, lambda n, module, x, shifts, dims: (torch.arange(n) - shifts) % n)
    try:
        model, x = _RollChannels(), torch.randn(2, 3, 8, 8)
        s = analyze(model, x)
        assert s.num_units == 6
        # c2's input channel c is c1's channel c-1
        assert s.layers["c2"].in_units.tolist() == [5, 0, 1, 2, 3, 4]
        _check_mask_equals_slim(model, s, x)
    finally:
        unregister_layer_rule(torch.roll)


def test_registered_module_rule_with_slim_and_remasking():
    register_layer_rule(AddOffset, "passthrough", zero_preserving=False, slim=_slim_offset)
    try:
        model, x = _WithOffset(), torch.randn(2, 3, 8, 8)
        s = analyze(model, x)
        assert s.num_units == 6 and s.remask == ["off"]
        _check_mask_equals_slim(model, s, x)
    finally:
        unregister_layer_rule(AddOffset)


# --- the CLI ---------------------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "prunetax", "structure", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_json_and_errors():
    r = _cli("--model", "resnet20", "--format", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == "resnet20" and d["conv_channels"] == 784 and d["units"] == 448
    assert d["conv_weights"] == 270256
    assert {"name", "kind", "out_channels", "unit_ids"} <= set(d["producers"][0])
    assert {"params", "macs"} <= set(d)
    r = _cli("--model", "resnet21")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "resnet20" in r.stderr


def test_cli_table_in_process(capsys):
    from prunetax.benchmarks.cli import main

    assert main(["structure", "--model", "lenet5", "--in-channels", "1", "--input-size", "28"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["producer", "kind", "out"] and len(lines) == 1 + 3 + 1
    assert "570 units" in lines[-1] and "70 conv channels" in lines[-1]


def test_cli_reports_convolution_units_and_all_units_apart(capsys):
    """lenet5: 70 convolution units (what bench and saliency prune by default) of 570 units in all
    (the other 500: the linear producer's); resnet20's 448 units are all convolution units."""
    from prunetax.benchmarks.cli import main

    assert main(["structure", "--model", "lenet5", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["units"], d["conv_units"], d["linear_only_units"]) == (570, 70, 500)
    assert list(d)[3:6] == ["units", "conv_units", "linear_only_units"]
    assert main(["structure", "--model", "lenet5"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert ("lenet5: 3 producers; 70 convolution units (pruned by default) of 570 units in all (the other 500 "
            "are linear producers' only: saliency --include-linear, [protocol] prune_linear = true); ") in last
    assert main(["structure", "--model", "resnet20"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "resnet20: 21 producers; 448 units, all in convolution producers (pruned by default); " in last


@pytest.mark.parametrize("argv,message", [
    (["--model", "lenet5", "--input-size", "8"], "--input-size 8: model 'lenet5' needs input_size >= 16 (got 8)"),
    (["--model", "lenet5", "--input-size", "0"], "--input-size 0: must be 1 or more"),
    (["--model", "lenet5", "--in-channels", "0"], "--in-channels 0: must be 1 or more"),
    (["--model", "lenet6"], "--model lenet6: unknown model 'lenet6'"),
])
def test_cli_errors_name_the_flag(capsys, argv, message):
    from prunetax.benchmarks.cli import main

    assert main(["structure", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"prunetax structure: error: {message}"), err
