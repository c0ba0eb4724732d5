"""A naive float64 reference for every saliency metric, written from docs/metrics.md alone.

It shares no code with the engine (``prunetax.metrics.saliencies``). From ``prunetax.metrics.analyze`` it takes
only unit membership (``Layer.out_units`` / ``Layer.in_units``, ``Structure.units``); every other
quantity is computed here, slowly and explicitly:

* each test network has a hand-written *program*: its forward pass written out with
  ``F.conv2d``/``F.linear``/explicit BatchNorm on a float64 eval-mode copy of the model's
  parameters, and its Levenberg-Marquardt curvature recursion written out layer by layer
  (squared weights, ReLU 0/1 masks, max-pool routing to the arg-max, average pooling with
  squared coefficients, BatchNorm ``(gamma/sigma)^2``, residual sums, flatten);
* masking: a removed unit's channels are multiplied by 0 at their mask points (the producer's
  output after its own BatchNorm and its own activation, before any merge or consumer). Every
  later use of a removed channel then sees an exact zero: consumers get a zero input slice (as
  if their weight slice were deleted), residual adds add zeros from every member of the unit
  (so the merged channel is 0 and ReLU keeps it 0), and zero-padding shortcuts carry zeros.
  That is exactly what physically deleting the channels computes;
* each image is run alone (forward + ``autograd.grad`` of its own cross-entropy), giving its
  own gradients w.r.t. the mask-point activations, the conv-consumer inputs, the weights,
  biases and BatchNorm gamma/beta;
* pointwise -> reduction -> aggregation -> structure -> scaling -> S(l, c) and the unit
  saliency (min over members) are plain Python loops over images and channels;
* ``weights_removed`` is counted weight by weight.

Choices docs/metrics.md leaves open and this reference takes (see the test report):
* the gradient (and LM curvature) of a consumer's input tensor is the *total* gradient of that
  tensor (the tensor entering k), also when the tensor feeds several layers.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

POINTWISE = ("value", "gradient", "taylor", "hessian_lm", "hessian_gn", "taylor2_lm", "taylor2_gn",
             "indicator")
REDUCTIONS = ("sum", "l1", "l2", "abs_sum", "sqr_sum")


# =============================================================================================
# Test networks (float32 nn.Modules, given to the engine as they are)
# =============================================================================================

class SmallLeNet(nn.Module):
    """The zoo's LeNet-5 shape (no ReLU after the convolutions) with few channels."""

    def __init__(self, c1=6, c2=8, f1=16, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(c2 * 2 * 2, f1)
        self.relu = nn.ReLU(inplace=True)  # as the zoo's
        self.fc2 = nn.Linear(f1, classes)

    def forward(self, x):  # x: [B, 1, 20, 20]
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


class GroupedNet(nn.Module):
    """AlexNet-like chain: conv (groups 1), grouped convs (groups 2), max-pool, avg-pool, fc, fc."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.AvgPool2d(2, 2)
        self.fc1 = nn.Linear(8 * 2 * 2, 12)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(12, classes)

    def forward(self, x):  # x: [B, 3, 8, 8]
        x = self.relu1(self.conv1(x))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        return self.fc2(self.relu4(self.fc1(torch.flatten(x, 1))))


class Block(nn.Module):
    def __init__(self, cin, cout, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.kind = shortcut
        self.pad = (cout - cin) // 2
        if shortcut == "proj":
            self.sc = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.sc_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        o = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        if self.kind == "proj":
            s = self.sc_bn(self.sc(x))
        elif self.kind == "padA":
            s = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        else:
            s = x
        return self.relu2(o + s)


class SmallResNet(nn.Module):
    """Stem + identity block + projection-shortcut block (1x1 conv + BN) + option-A block."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.b1 = Block(8, 8, 1, "id")
        self.b2 = Block(8, 16, 2, "proj")
        self.b3 = Block(16, 24, 2, "padA")
        self.fc = nn.Linear(24, classes)

    def forward(self, x):  # x: [B, 3, 8, 8]
        x = self.b3(self.b2(self.b1(self.relu(self.bn(self.conv(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomize_bn(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Non-trivial BatchNorm: random gamma (both signs), beta, running mean and variance."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                C = m.num_features
                m.weight.copy_(torch.randn(C, generator=generator) * 0.8 + 0.3)
                m.bias.copy_(torch.randn(C, generator=generator) * 0.2)
                m.running_mean.copy_(torch.randn(C, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(C, generator=generator) * 1.5 + 0.5)
    return model


# =============================================================================================
# LM building blocks: h_x = (A o A)^T h_y for each linear map, written per operation
# =============================================================================================

def lm_conv_input(h_y, W, x_shape, stride, padding, groups):
    """h_x[i, p] = sum over (o, s) that p feeds through weight e of W[o, i, e]^2 h_y[o, s]."""
    return torch.nn.grad.conv2d_input(x_shape, W * W, h_y, stride=stride, padding=padding, groups=groups)


def lm_conv_weight(x, h_y, W_shape, stride, padding, groups):
    """h_W[o, e] = sum_s x_e(s)^2 h_y[o, s]."""
    return torch.nn.grad.conv2d_weight(x * x, W_shape, h_y, stride=stride, padding=padding, groups=groups)


def lm_maxpool(h_y, indices, x_shape):
    """Route each output's curvature to its arg-max (non-overlapping pools: no collisions)."""
    out = torch.zeros(x_shape, dtype=h_y.dtype)
    flat_out, flat_h, flat_i = out.view(x_shape[0], x_shape[1], -1), h_y.reshape(h_y.shape[0], h_y.shape[1], -1), \
        indices.reshape(indices.shape[0], indices.shape[1], -1)
    for b in range(flat_h.shape[0]):
        for c in range(flat_h.shape[1]):
            for s in range(flat_h.shape[2]):
                flat_out[b, c, flat_i[b, c, s]] += flat_h[b, c, s]
    return out


def lm_avgpool2(h_y):
    """2x2/2 average pooling: coefficient 1/4, squared 1/16."""
    return h_y.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) / 16.0


class Program:
    """A network written out by hand. Subclasses define ``forward`` and ``lm``.

    ``forward(x, masks)`` returns the logits and records in ``self.t`` every tensor LM needs;
    it fills ``self.A`` (producer name -> mask-point tensor) and ``self.I`` (conv consumer name
    -> the tensor entering it). ``lm(h_logits)`` returns dicts ``A``, ``I`` (curvature of those
    tensors), ``W``, ``b``, ``gamma``, ``beta`` (per layer / producer).
    """

    bn_of: dict[str, str | None] = {}

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).double().eval()
        self.mods = dict(self.model.named_modules())
        for p in self.model.parameters():
            p.requires_grad_(True)

    # -- explicit layers -------------------------------------------------------------------
    def conv(self, name, x):
        m = self.mods[name]
        return F.conv2d(x, m.weight, m.bias, m.stride, m.padding, 1, m.groups)

    def linear(self, name, x):
        m = self.mods[name]
        return x @ m.weight.T + (m.bias if m.bias is not None else 0.0)

    def bn(self, name, z, key):
        m = self.mods[name]
        sigma = torch.sqrt(m.running_var + m.eps)
        xhat = (z - m.running_mean[None, :, None, None]) / sigma[None, :, None, None]
        self.t[key + ".xhat"] = xhat.detach()
        return m.weight[None, :, None, None] * xhat + m.bias[None, :, None, None]

    def bn_lm(self, name, h_y, key, out):
        """Returns h at the BN input; records h_gamma, h_beta of the BN's producer ``key``."""
        m = self.mods[name]
        xhat = self.t[key + ".xhat"]
        out["gamma"][key] = (xhat * xhat * h_y).sum(dim=(0, 2, 3))
        out["beta"][key] = h_y.sum(dim=(0, 2, 3))
        coef = (m.weight.detach() / torch.sqrt(m.running_var + m.eps)) ** 2
        return h_y * coef[None, :, None, None]

    def conv_lm(self, name, x, h_y, out):
        m = self.mods[name]
        W = m.weight.detach()
        out["W"][name] = lm_conv_weight(x.detach(), h_y, W.shape, m.stride, m.padding, m.groups)
        if m.bias is not None:
            out["b"][name] = h_y.sum(dim=(0, 2, 3))
        return lm_conv_input(h_y, W, x.shape, m.stride, m.padding, m.groups)

    def linear_lm(self, name, x, h_y, out):
        m = self.mods[name]
        W = m.weight.detach()
        xd = x.detach()
        out["W"][name] = torch.einsum("bo,bi->oi", h_y, xd * xd)
        if m.bias is not None:
            out["b"][name] = h_y.sum(0)
        return h_y @ (W * W)

    @staticmethod
    def mask(t, masks, name):
        return t * masks[name][None, :, None, None] if t.dim() == 4 else t * masks[name][None, :]

    @staticmethod
    def new_lm():
        return {"A": {}, "I": {}, "W": {}, "b": {}, "gamma": {}, "beta": {}}


class SmallLeNetProgram(Program):
    bn_of = {"conv1": None, "conv2": None, "fc1": None}

    def __init__(self, model, names=None):
        super().__init__(model)
        # module names: SmallLeNet's own, or the zoo's nn.Sequential ("0", "2", "5", "7")
        n = names or {"conv1": "conv1", "conv2": "conv2", "fc1": "fc1", "fc2": "fc2"}
        self.mods = {**self.mods, **{k: self.mods[v] for k, v in n.items()}}
        self.names = n
        self.bn_of = {n["conv1"]: None, n["conv2"]: None, n["fc1"]: None}

    def conv(self, name, x):
        return super().conv(self.names.get(name, name), x)

    def linear(self, name, x):
        return super().linear(self.names.get(name, name), x)

    def conv_lm(self, name, x, h_y, out):
        return super().conv_lm(self.names.get(name, name), x, h_y, out)

    def linear_lm(self, name, x, h_y, out):
        return super().linear_lm(self.names.get(name, name), x, h_y, out)

    def forward(self, x, masks):
        masks = {k: masks[self.names[k]] for k in ("conv1", "conv2", "fc1")}
        t = self.t = {"x": x}
        a1 = self.conv("conv1", x)
        A1 = self.mask(a1, masks, "conv1")                      # mask point: conv1's output
        p1, i1 = F.max_pool2d(A1, 2, 2, return_indices=True)
        a2 = self.conv("conv2", p1)
        A2 = self.mask(a2, masks, "conv2")
        p2, i2 = F.max_pool2d(A2, 2, 2, return_indices=True)
        f = torch.flatten(p2, 1)
        z3 = self.linear("fc1", f)
        A3 = self.mask(torch.relu(z3), masks, "fc1")            # mask point: after the ReLU
        t.update(A1=A1, p1=p1, i1=i1, A2=A2, p2=p2, i2=i2, f=f, z3=z3, A3=A3)
        nm = self.names
        self.A = {nm["conv1"]: A1, nm["conv2"]: A2, nm["fc1"]: A3}
        self.I = {nm["conv2"]: p1}
        self.masks = masks
        return self.linear("fc2", A3)

    def lm(self, h):
        t, m, out, nm = self.t, self.masks, self.new_lm(), self.names
        h = self.linear_lm("fc2", t["A3"], h, out)
        out["A"][nm["fc1"]] = h
        h = h * m["fc1"][None, :] * (t["z3"] > 0)
        h = self.linear_lm("fc1", t["f"], h, out)
        h = h.view(t["p2"].shape)
        h = lm_maxpool(h, t["i2"], t["A2"].shape)
        out["A"][nm["conv2"]] = h
        h = h * m["conv2"][None, :, None, None]
        h = self.conv_lm("conv2", t["p1"], h, out)
        out["I"][nm["conv2"]] = h
        h = lm_maxpool(h, t["i1"], t["A1"].shape)
        out["A"][nm["conv1"]] = h
        h = h * m["conv1"][None, :, None, None]
        self.conv_lm("conv1", t["x"], h, out)
        return out


class GroupedNetProgram(Program):
    bn_of = {"conv1": None, "conv2": None, "conv3": None, "fc1": None}

    def forward(self, x, masks):
        t = self.t = {"x": x}
        z1 = self.conv("conv1", x)
        A1 = self.mask(torch.relu(z1), masks, "conv1")
        z2 = self.conv("conv2", A1)
        A2 = self.mask(torch.relu(z2), masks, "conv2")
        p2, i2 = F.max_pool2d(A2, 2, 2, return_indices=True)
        z3 = self.conv("conv3", p2)
        A3 = self.mask(torch.relu(z3), masks, "conv3")
        p3 = (A3[:, :, 0::2, 0::2] + A3[:, :, 1::2, 0::2] + A3[:, :, 0::2, 1::2] + A3[:, :, 1::2, 1::2]) / 4
        f = torch.flatten(p3, 1)
        z4 = self.linear("fc1", f)
        A4 = self.mask(torch.relu(z4), masks, "fc1")
        t.update(z1=z1, A1=A1, z2=z2, A2=A2, p2=p2, i2=i2, z3=z3, A3=A3, p3=p3, f=f, z4=z4, A4=A4)
        self.A = {"conv1": A1, "conv2": A2, "conv3": A3, "fc1": A4}
        self.I = {"conv2": A1, "conv3": p2}
        self.masks = masks
        return self.linear("fc2", A4)

    def lm(self, h):
        t, m, out = self.t, self.masks, self.new_lm()
        h = self.linear_lm("fc2", t["A4"], h, out)
        out["A"]["fc1"] = h
        h = h * m["fc1"][None, :] * (t["z4"] > 0)
        h = self.linear_lm("fc1", t["f"], h, out)
        h = lm_avgpool2(h.view(t["p3"].shape))
        out["A"]["conv3"] = h
        h = h * m["conv3"][None, :, None, None] * (t["z3"] > 0)
        h = self.conv_lm("conv3", t["p2"], h, out)
        out["I"]["conv3"] = h
        h = lm_maxpool(h, t["i2"], t["A2"].shape)
        out["A"]["conv2"] = h
        h = h * m["conv2"][None, :, None, None] * (t["z2"] > 0)
        h = self.conv_lm("conv2", t["A1"], h, out)
        out["I"]["conv2"] = h
        out["A"]["conv1"] = h
        h = h * m["conv1"][None, :, None, None] * (t["z1"] > 0)
        self.conv_lm("conv1", t["x"], h, out)
        return out


class SmallResNetProgram(Program):
    bn_of = {"conv": "bn", "b1.conv1": "b1.bn1", "b1.conv2": "b1.bn2", "b2.conv1": "b2.bn1",
             "b2.conv2": "b2.bn2", "b2.sc": "b2.sc_bn", "b3.conv1": "b3.bn1", "b3.conv2": "b3.bn2"}

    def block(self, b, x, masks):
        t, kind = self.t, self.mods[b].kind
        z1 = self.conv(f"{b}.conv1", x)
        y1 = self.bn(f"{b}.bn1", z1, f"{b}.conv1")
        A1 = self.mask(torch.relu(y1), masks, f"{b}.conv1")           # after bn1 + relu
        z2 = self.conv(f"{b}.conv2", A1)
        A2 = self.mask(self.bn(f"{b}.bn2", z2, f"{b}.conv2"), masks, f"{b}.conv2")  # after bn2 (an add follows)
        self.A[f"{b}.conv1"], self.A[f"{b}.conv2"] = A1, A2
        self.I[f"{b}.conv1"], self.I[f"{b}.conv2"] = x, A1
        if kind == "proj":
            zs = self.conv(f"{b}.sc", x)
            s = self.mask(self.bn(f"{b}.sc_bn", zs, f"{b}.sc"), masks, f"{b}.sc")
            self.A[f"{b}.sc"], self.I[f"{b}.sc"] = s, x
        elif kind == "padA":
            p = self.mods[b].pad
            s = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))
        else:
            s = x
        o = A2 + s
        t[b] = dict(x=x, y1=y1, A1=A1, o=o)
        return torch.relu(o)

    def forward(self, x, masks):
        self.t, self.A, self.I, self.masks = {"x": x}, {}, {}, masks
        y0 = self.bn("bn", self.conv("conv", x), "conv")
        A0 = self.mask(torch.relu(y0), masks, "conv")
        self.A["conv"] = A0
        h = self.block("b3", self.block("b2", self.block("b1", A0, masks), masks), masks)
        g = h.mean(dim=(2, 3))
        self.t.update(y0=y0, h3=h, g=g)
        return self.linear("fc", g)

    def block_lm(self, b, h_out, out):
        t, m, kind = self.t[b], self.masks, self.mods[b].kind
        h_o = h_out * (t["o"] > 0)                                       # ReLU after the add
        out["A"][f"{b}.conv2"] = h_o                                     # the add: coefficient 1
        h = h_o * m[f"{b}.conv2"][None, :, None, None]
        h = self.bn_lm(f"{b}.bn2", h, f"{b}.conv2", out)
        h = self.conv_lm(f"{b}.conv2", t["A1"], h, out)
        out["I"][f"{b}.conv2"] = h
        out["A"][f"{b}.conv1"] = h
        h = h * m[f"{b}.conv1"][None, :, None, None] * (t["y1"] > 0)
        h = self.bn_lm(f"{b}.bn1", h, f"{b}.conv1", out)
        h_x = self.conv_lm(f"{b}.conv1", t["x"], h, out)
        if kind == "proj":
            out["A"][f"{b}.sc"] = h_o
            h = h_o * m[f"{b}.sc"][None, :, None, None]
            h = self.bn_lm(f"{b}.sc_bn", h, f"{b}.sc", out)
            h_x = h_x + self.conv_lm(f"{b}.sc", t["x"], h, out)
        elif kind == "padA":
            p, C = self.mods[b].pad, t["x"].shape[1]
            h_s = torch.zeros_like(t["x"])
            h_s[:, :, ::2, ::2] = h_o[:, p:p + C]                        # slicing + padding: 0/1
            h_x = h_x + h_s
        else:
            h_x = h_x + h_o                                              # identity: the tensor is used twice
        out["I"][f"{b}.conv1"] = h_x
        if kind == "proj":
            out["I"][f"{b}.sc"] = h_x
        return h_x

    def lm(self, h):
        t, m, out = self.t, self.masks, self.new_lm()
        h = self.linear_lm("fc", t["g"], h, out)
        H, W = t["h3"].shape[2:]
        h = h[:, :, None, None].expand(t["h3"].shape) / float(H * W) ** 2   # global average: (1/HW)^2
        for b in ("b3", "b2", "b1"):
            h = self.block_lm(b, h, out)
        out["A"]["conv"] = h
        h = h * m["conv"][None, :, None, None] * (t["y0"] > 0)
        h = self.bn_lm("bn", h, "conv", out)
        self.conv_lm("conv", t["x"], h, out)
        return out


ZOO_LENET_NAMES = {"conv1": "0", "conv2": "2", "fc1": "5", "fc2": "7"}


def program_for(model):
    if isinstance(model, nn.Sequential):  # the zoo's lenet5: conv, pool, conv, pool, flatten, fc, relu, fc
        return SmallLeNetProgram(model, ZOO_LENET_NAMES)
    return PROGRAMS[type(model)](model)


PROGRAMS = {SmallLeNet: SmallLeNetProgram, GroupedNet: GroupedNetProgram, SmallResNet: SmallResNetProgram}


# =============================================================================================
# Per-image data
# =============================================================================================

class PerImage:
    """Per image n: the tensors of the elements, their gradients and LM curvatures (float64)."""

    def __init__(self, program: Program, structure, images, labels, keep):
        self.prog, self.st = program, structure
        self.keep = keep
        masks = {}
        for name in program.bn_of:
            u = structure.layers[name].out_units
            masks[name] = torch.tensor([1.0 if (int(v) < 0 or bool(keep[int(v)])) else 0.0 for v in u],
                                       dtype=torch.float64)
        self.masks = masks
        self.images = []
        for n in range(images.shape[0]):
            x = images[n:n + 1].to(torch.float64)
            logits = program.forward(x, masks)
            loss = F.cross_entropy(logits, labels[n:n + 1], reduction="sum")
            A, I = program.A, program.I
            mods = program.mods
            layers = [k for k in structure.layers]
            tensors = ([A[k] for k in A] + [I[k] for k in I]
                       + [mods[k].weight for k in layers]
                       + [mods[k].bias for k in layers if mods[k].bias is not None]
                       + [mods[b].weight for b in program.bn_of.values() if b]
                       + [mods[b].bias for b in program.bn_of.values() if b])
            grads = torch.autograd.grad(loss, tensors)
            it = iter(grads)
            rec = {"A": {k: (A[k].detach()[0], next(it)[0]) for k in A},
                   "I": {k: (I[k].detach()[0], next(it)[0]) for k in I},
                   "W": {k: (mods[k].weight.detach(), next(it)) for k in layers},
                   "b": {k: (mods[k].bias.detach(), next(it)) for k in layers if mods[k].bias is not None},
                   "gamma": {l: (mods[b].weight.detach(), next(it)) for l, b in program.bn_of.items() if b},
                   "beta": {l: (mods[b].bias.detach(), next(it)) for l, b in program.bn_of.items() if b}}
            p = torch.softmax(logits.detach(), dim=1)
            h = program.lm(p * (1 - p))
            rec["h"] = {key: {k: (v[0] if key in ("A", "I") else v) for k, v in d.items()} for key, d in h.items()}
            rec["logits"] = logits.detach()
            self.images.append(rec)

    # -- activity ----------------------------------------------------------------------------
    def unit_kept(self, u: int) -> bool:
        return u < 0 or bool(self.keep[u])

    def in_active(self, layer, ch):
        return self.unit_kept(int(self.st.layers[layer].in_units[ch]))

    def out_active(self, layer, ch):
        return self.unit_kept(int(self.st.layers[layer].out_units[ch]))

    # -- elements of one site for one image: (x, g, h) 1-D tensors, plus the element count -----
    def producer_elements(self, n, base, layer, c):
        rec, L = self.images[n], self.st.layers[layer]
        if base == "activation":
            x, g = rec["A"][layer]
            h = rec["h"]["A"][layer]
            return x[c].reshape(-1), g[c].reshape(-1), h[c].reshape(-1), x[c].numel()
        if base in ("bn_weight", "bn_bias"):
            key = "gamma" if base == "bn_weight" else "beta"
            if self.prog.bn_of.get(layer) is None:
                raise ValueError(f"{layer} has no BatchNorm")
            x, g = rec[key][layer]
            h = rec["h"][key][layer]
            return x[c:c + 1], g[c:c + 1], h[c:c + 1], 1
        # weight: W[c, j, ...] for the active inputs j of c's group, plus the bias
        W, gW = rec["W"][layer]
        hW = rec["h"]["W"][layer]
        xs, gs, hs = [], [], []
        count = 0
        if L.kind == "conv":
            ipg, opg = W.shape[1], L.out_channels // L.groups
            group = c // opg
            for j in range(ipg):
                if self.in_active(layer, group * ipg + j):
                    xs.append(W[c, j].reshape(-1)); gs.append(gW[c, j].reshape(-1)); hs.append(hW[c, j].reshape(-1))
                    count += W[c, j].numel()
        else:  # linear: feature f comes from input channel f // kernel (flatten)
            active = torch.tensor([self.in_active(layer, f // L.kernel) for f in range(W.shape[1])])
            xs.append(W[c][active]); gs.append(gW[c][active]); hs.append(hW[c][active])
            count += int(active.sum())
        if layer in rec["b"]:
            b, gb = rec["b"][layer]
            hb = rec["h"]["b"][layer]
            xs.append(b[c:c + 1]); gs.append(gb[c:c + 1]); hs.append(hb[c:c + 1])
        return torch.cat(xs), torch.cat(gs), torch.cat(hs), count

    def consumer_elements(self, n, base, layer, i):
        """Input slice i of conv consumer ``layer``."""
        rec, L = self.images[n], self.st.layers[layer]
        assert L.kind == "conv"
        if base == "activation":
            x, g = rec["I"][layer]
            h = rec["h"]["I"][layer]
            return x[i].reshape(-1), g[i].reshape(-1), h[i].reshape(-1), x[i].numel()
        if base != "weight":
            raise ValueError(f"no consumer slice for {base}")
        W, gW = rec["W"][layer]
        hW = rec["h"]["W"][layer]
        ipg, opg = W.shape[1], L.out_channels // L.groups
        group, j = i // ipg, i % ipg
        xs, gs, hs, count = [], [], [], 0
        for o in range(group * opg, (group + 1) * opg):
            if self.out_active(layer, o):
                xs.append(W[o, j].reshape(-1)); gs.append(gW[o, j].reshape(-1)); hs.append(hW[o, j].reshape(-1))
                count += W[o, j].numel()
        if not xs:
            e = torch.zeros(0, dtype=torch.float64)
            return e, e, e, 0
        return torch.cat(xs), torch.cat(gs), torch.cat(hs), count


def pointwise(name, x, g, h):
    if name == "value":
        return x.clone()
    if name == "gradient":
        return g.clone()
    if name == "taylor":
        return -x * g
    if name == "hessian_lm":
        return x * x / 2 * h
    if name == "hessian_gn":
        return x * x / 2 * g * g
    if name == "taylor2_lm":
        return -x * g + x * x / 2 * h
    if name == "taylor2_gn":
        return -x * g + x * x / 2 * g * g
    if name == "indicator":
        return (x > 0).to(torch.float64)
    raise ValueError(name)


def reduce(name, f):
    total = 0.0
    if name == "sum":
        for v in f.tolist():
            total += v
        return total
    if name == "l1":
        for v in f.tolist():
            total += abs(v)
        return total
    if name == "l2":
        for v in f.tolist():
            total += v * v
        return total
    s = reduce("sum", f)
    if name == "abs_sum":
        return abs(s)
    if name == "sqr_sum":
        return s * s
    raise ValueError(name)


# =============================================================================================
# The metric
# =============================================================================================

class Reference:
    """``Reference(model, structure, images, labels, keep)``; ``.channel_values(spec)`` and
    ``.unit_saliency(spec)`` as plain Python floats (+inf for removed units)."""

    def __init__(self, model, structure, images, labels, keep=None):
        self.st = structure
        if keep is None:
            keep = torch.ones(structure.num_units, dtype=torch.bool)
        self.keep = keep
        self.prog = program_for(model)
        for name, bn in self.prog.bn_of.items():  # my reading of the network agrees with analyze
            assert structure.layers[name].bn == bn, (name, structure.layers[name].bn, bn)
        assert set(self.prog.bn_of) == set(structure.producers)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny single-image ops: threads only add overhead
        try:
            self.data = PerImage(self.prog, structure, images, labels, keep)
        finally:
            torch.set_num_threads(threads)
        self.N = images.shape[0]
        self._s = {}
        self._elements = {}
        self._wr = None

    # s(l, c) for a producer channel or a consumer slice, and its element count
    def site_value(self, side, base, pw, red, agg, layer, ch):
        key = (side, base, pw, red, agg, layer, ch)
        if key in self._s:
            return self._s[key]
        ekey = (side, base, layer, ch)
        if ekey not in self._elements:  # per image: (x, g, h) of the site's elements, and their count
            get = self.data.producer_elements if side == "out" else self.data.consumer_elements
            self._elements[ekey] = [get(n, base, layer, ch) for n in range(self.N)]
        fs, count = [], 0
        for n in range(self.N):
            x, g, h, count = self._elements[ekey][n]
            fs.append(pointwise(pw, x, g, h))
        if agg == "per_image":
            s = 0.0
            for n in range(self.N):
                s += reduce(red, fs[n])
            s /= self.N
        else:
            mean = torch.zeros_like(fs[0])
            for n in range(self.N):
                mean = mean + fs[n]
            s = reduce(red, mean / self.N)
        self._s[key] = (s, count)
        return s, count

    def unit_of(self, layer, c):
        return int(self.st.layers[layer].out_units[c])

    def D(self, spec, layer, c):
        """(D(l, c), element count) for a kept channel."""
        b, p, r, agg = spec.base_input, spec.pointwise, spec.reduction, spec.aggregation
        if spec.structure == "channel":
            return self.site_value("out", b, p, r, agg, layer, c)
        unit = self.st.units[self.unit_of(layer, c)]
        total, count = 0.0, 0
        for (l2, c2) in unit.members:
            s, k = self.site_value("out", b, p, r, agg, l2, c2)
            total += s
            count += k
        if spec.structure == "domino_io":
            for (k_name, i) in unit.consumers:
                if self.st.layers[k_name].kind != "conv":
                    continue  # linear consumers: nothing to the saliency, nothing to the count
                s, k = self.site_value("in", b, p, r, agg, k_name, i)
                total += s
                count += k
        return total, count

    def weights_removed(self):
        """For each unit, the weights (no biases) present now that go with it, counted one by one."""
        if self._wr is not None:
            return self._wr
        U = self.st.num_units
        counts = [0] * U
        for name, L in self.st.layers.items():
            W = self.prog.mods[name].weight
            per_weight = math.prod(W.shape[2:]) if L.kind == "conv" else 1
            ipg = W.shape[1] if L.kind == "conv" else W.shape[1]
            opg = L.out_channels // L.groups
            for o in range(L.out_channels):
                uo = int(L.out_units[o])
                if not self.data.unit_kept(uo):
                    continue
                for j in range(ipg):
                    if L.kind == "conv":
                        ch = (o // opg) * ipg + j
                    else:
                        ch = j // L.kernel
                    ui = int(L.in_units[ch])
                    if not self.data.unit_kept(ui):
                        continue
                    touched = {u for u in (uo, ui) if u >= 0}
                    for u in touched:
                        counts[u] += per_weight
        self._wr = counts
        return counts

    def channel_values(self, spec):
        """dict layer -> list of S(l, c) (Python floats; +inf for removed channels and NaN)."""
        Ds = {}
        for layer in self.st.producers:
            L = self.st.layers[layer]
            Ds[layer] = []
            for c in range(L.out_channels):
                u = self.unit_of(layer, c)
                Ds[layer].append(self.D(spec, layer, c) if self.data.unit_kept(u) else None)
        out = {}
        wr = self.weights_removed() if spec.scaling == "weights_removed" else None
        for layer, vals in Ds.items():
            kept = [v[0] for v in vals if v is not None]
            if spec.scaling == "layer_l1":
                layer_div = sum(abs(v) for v in kept)
            elif spec.scaling == "layer_l2":
                layer_div = math.sqrt(sum(v * v for v in kept))
            out[layer] = []
            for c, v in enumerate(vals):
                if v is None:
                    out[layer].append(math.inf)
                    continue
                D, count = v
                if spec.scaling == "none":
                    d = 1.0
                elif spec.scaling == "elements":
                    d = float(count)
                elif spec.scaling in ("layer_l1", "layer_l2"):
                    d = layer_div
                elif spec.scaling == "weights_removed":
                    d = float(wr[self.unit_of(layer, c)])
                else:
                    raise ValueError(spec.scaling)
                if d == 0:
                    d = 1.0
                S = D / d
                out[layer].append(math.inf if math.isnan(S) else S)
        return out

    def unit_saliency_from(self, channel_values):
        U = self.st.num_units
        res = []
        for u in range(U):
            if not self.data.unit_kept(u):
                res.append(math.inf)
                continue
            vals = [channel_values[l][c] for (l, c) in self.st.units[u].members]
            res.append(min(vals))
        return res

    def unit_saliency(self, spec):
        return self.unit_saliency_from(self.channel_values(spec))

    def expression(self, expr):
        """A MetricExpr: combine S(l, c) of its specs channel by channel, then min over members."""
        per = {s: self.channel_values(s) for s in expr.specs}
        out = {}
        for layer in self.st.producers:
            vals = []
            for c in range(self.st.layers[layer].out_channels):
                total = 0.0
                for term in expr.terms:
                    v = term.coef
                    for f in term.factors:
                        v = v * per[f][layer][c]
                    total += v
                vals.append(total)
            out[layer] = vals
        return out, self.unit_saliency_from(out)
