"""Signals: everything one forward/backward pass provides, read at the mask points.

``collect`` runs the masked network once over ``K*B`` images (K trajectories, each with its own
keep mask) with each image's loss its own (cross-entropy summed over the batch), and returns,
for every layer the requested metrics touch: mask-point activations and their gradients, layer
inputs and their gradients, per-image weight gradients (from the layer input and the gradient
of its output, never N copies of the whole network at once), BatchNorm statistics, and the LM
curvature at the same places when a ``hessian_lm`` metric needs it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from prunetax.metrics.curvature import lm_curvature, pad_as_conv, record_forward
from prunetax.metrics.masking import LayerInput, MaskPoint


@dataclass
class Needs:
    """What the requested metrics read. Sets of layer names."""
    act: set = field(default_factory=set)        # producer mask-point activations
    act_in: set = field(default_factory=set)     # consumer input activations
    weight: set = field(default_factory=set)     # per-image weight gradients of these layers
    bn: set = field(default_factory=set)         # producers whose BatchNorm parameters are read
    grad: bool = False
    lm: bool = False


# the Needs fields that name layers: what a base input's ``signals`` kernel may ask for
LAYER_SIGNALS = ("act", "act_in", "weight", "bn")


@dataclass
class Signals:
    act: dict = field(default_factory=dict)       # name -> (x [N,C,E], g, h)
    act_in: dict = field(default_factory=dict)    # name -> (x [N,C_in,E], g, h)
    # name -> (module, layer, x_in, g_out, h_out): what per-image weight gradients are made of; the
    # engine forms them in bounded chunks of images (``weight_grads(name, rows)``)
    weight_io: dict = field(default_factory=dict)
    weight_grad: "WeightGrads" = None  # name -> (g [N,C_out,E_w], g_bias [N,C_out] | None, h, h_bias), lazily

    def __post_init__(self):
        if self.weight_grad is None:
            self.weight_grad = WeightGrads(self.weight_io)
    bn: dict = field(default_factory=dict)        # producer -> (g_gamma [N,C], g_beta, h_gamma, h_beta)


class WeightGrads(Mapping):
    """Per-image weight gradients (and LM curvature) of every layer, formed on access.

    ``grads[name]`` materialises all N images of one layer; ``grads.rows(name, rows, h=...)`` a
    slice of images, so that the engine never holds N copies of every weight at once.
    """

    def __init__(self, io: dict):
        self.io = io

    def __getitem__(self, name):
        return self.rows(name, slice(None))

    def rows(self, name, rows, h: bool = True):
        module, L, x_in, g_out, h_out = self.io[name]
        return weight_grads(module, L, x_in[rows], g_out[rows],
                             h_out[rows] if (h and h_out is not None) else None)

    def block(self, name, K: int, B: int, b0: int, b1: int, h: bool = True):
        """Images ``b0:b1`` of each of the K trajectories (rows ``k*B + b0 .. k*B + b1``, k-major)."""
        module, L, x_in, g_out, h_out = self.io[name]

        def sel(t):
            if t is None or (b0 == 0 and b1 == B):
                return t
            return t.reshape(K, B, *t.shape[1:])[:, b0:b1].reshape(K * (b1 - b0), *t.shape[1:])
        return weight_grads(module, L, sel(x_in), sel(g_out), sel(h_out) if h else None)

    def __iter__(self):
        return iter(self.io)

    def __len__(self):
        return len(self.io)


def _flat(t: torch.Tensor | None, channels: int) -> torch.Tensor | None:
    return None if t is None else t.reshape(t.shape[0], channels, -1)


def collect(masked, x: torch.Tensor, y: torch.Tensor, needs: Needs) -> Signals:
    """The signals ``needs`` asks for, from one forward/backward pass of ``masked`` over ``x``
    (K*B images, trajectory-major) with labels ``y`` (module docstring)."""
    run = _Pass(masked, needs)
    run.forward_backward(x, y)
    curv: dict[str, torch.Tensor] = {}
    if needs.lm:
        curv = curvature_signals(masked, x, needs, run.weight_layers, run.bn_layers, run.primal, run.logits)
    return run.signals(curv)


class _Pass:
    """One forward/backward pass of a masked network: what it keeps (mask-point taps, layer
    inputs, the outputs of layers whose weights are read, BatchNorm inputs and outputs) and the
    gradients of the summed loss with respect to them."""

    def __init__(self, masked, needs: Needs):
        self.masked, self.needs = masked, needs
        self.st, self.gm = masked.structure, masked.graph_module
        self.want_grad = needs.grad or bool(needs.weight)
        self.weight_layers = set(needs.weight)
        self.bn_layers = {self.st.layers[n].bn: n for n in needs.bn}
        self.layer_io: dict[str, list] = {}        # layer -> [output]
        self.bn_io: dict[str, list] = {}           # producer -> [BatchNorm input, its output]
        self.targets: list[torch.Tensor] = []      # what the loss is differentiated with respect to
        self.index: dict[tuple, int] = {}          # (kind, layer) -> its position in targets
        self.grads: list = []
        self.primal = self.logits = None

    def _hooks(self) -> list:
        """Forward hooks keeping the outputs of the weight layers and the BatchNorms' inputs and outputs."""
        hooks = []
        for name in self.weight_layers:
            def keep_output(module, inputs, output, name=name):
                self.layer_io[name] = [output]
            hooks.append(self.gm.get_submodule(name).register_forward_hook(keep_output))
        for bn_name, producer in self.bn_layers.items():
            def keep_bn(module, inputs, output, producer=producer):
                self.bn_io[producer] = [inputs[0], output]
            hooks.append(self.gm.get_submodule(bn_name).register_forward_hook(keep_bn))
        return hooks

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Run the network over ``x`` recording what is needed, then differentiate the loss summed
        over the images (each image's own cross-entropy) with respect to it."""
        masked, needs = self.masked, self.needs
        hooks = self._hooks()
        masked.record = True
        try:
            with torch.enable_grad():
                xin = x.detach().requires_grad_(self.want_grad)
                if needs.lm and x.shape[0] % masked.num_trajectories == 0:
                    # the same forward as masked(xin), through an fx interpreter that also keeps every
                    # node's value: the LM curvature reads them instead of running the network again
                    masked.taps.clear()
                    masked.inputs.clear()
                    self.logits, self.primal = record_forward(self.gm, xin)
                else:
                    self.logits = masked(xin)
                self.taps, self.inputs = dict(masked.taps), dict(masked.inputs)
                if self.want_grad:
                    self._want_targets()
                    loss = F.cross_entropy(self.logits, y, reduction="sum")
                    self.grads = (torch.autograd.grad(loss, self.targets, allow_unused=True) if self.targets
                                  else [])
        finally:
            masked.record = False
            for h in hooks:
                h.remove()

    def _want_targets(self) -> None:
        """List what the loss is differentiated with respect to, in a fixed order."""
        def want(key, tensor):
            self.index[key] = len(self.targets)
            self.targets.append(tensor)
        for name in self.needs.act:
            want(("act", name), self.taps[name])
        for name in self.needs.act_in | self.weight_layers:
            want(("in", name), self.inputs[name])
        for name in self.weight_layers:
            want(("out", name), self.layer_io[name][0])
        for producer in self.bn_io:
            want(("bn", producer), self.bn_io[producer][1])

    def grad_of(self, key):
        """The gradient of the loss with respect to target ``key`` (zeros where it does not reach)."""
        if key not in self.index:
            return None
        g = self.grads[self.index[key]]
        return torch.zeros_like(self.targets[self.index[key]]) if g is None else g.detach()

    def signals(self, curv: dict) -> Signals:
        """The Signals of this pass, with the LM curvature ``curv`` ({(kind, layer): h}) where asked."""
        st, gm, out = self.st, self.gm, Signals()
        for name in self.needs.act:
            C = st.layers[name].out_channels
            out.act[name] = (_flat(self.taps[name].detach(), C), _flat(self.grad_of(("act", name)), C),
                             _flat(curv.get(("act", name)), C))
        for name in self.needs.act_in:
            C = st.layers[name].in_channels
            out.act_in[name] = (_flat(self.inputs[name].detach(), C), _flat(self.grad_of(("in", name)), C),
                                _flat(curv.get(("in", name)), C))
        for name in self.weight_layers:
            out.weight_io[name] = (gm.get_submodule(name), st.layers[name], self.inputs[name].detach(),
                                   self.grad_of(("out", name)), curv.get(("out", name)))
        for producer, (bn_in, bn_out) in self.bn_io.items():
            out.bn[producer] = bn_grads(gm.get_submodule(st.layers[producer].bn), bn_in.detach(),
                                         self.grad_of(("bn", producer)), curv.get(("bn", producer)))
        return out


def curvature_signals(masked, x, needs, weight_layers, bn_layers, primal=None, logits=None) -> dict:
    gm = masked.graph_module
    by_target = {n.target: n.name for n in gm.graph.nodes if n.op == "call_module"}
    mask_node = {m.tap: by_target[t] for t, m in gm.named_children() if isinstance(m, MaskPoint) and m.tap}
    input_node = {m.layer: by_target[t] for t, m in gm.named_children() if isinstance(m, LayerInput)}
    wanted: dict[tuple, str] = {}
    for name in needs.act:
        wanted[("act", name)] = mask_node[name]
    for name in needs.act_in:
        wanted[("in", name)] = input_node[name]
    for name in weight_layers:
        wanted[("out", name)] = by_target[name]
    for bn_name, producer in bn_layers.items():
        wanted[("bn", producer)] = by_target[bn_name]
    h = lm_curvature(gm, x.detach(), sorted(set(wanted.values())), primal=primal,
                     logits=None if logits is None else logits.detach())
    return {key: h[node] for key, node in wanted.items()}


def weight_grads(module, L, x_in, g_out, h_out):
    """Per-image gradients (and LM curvature) of a layer's weights, [N, C_out, C_in/groups*k]."""
    N = x_in.shape[0]
    if L.kind == "linear":
        xf = x_in.reshape(N, -1)
        g = g_out[:, :, None] * xf[:, None, :]
        gb = g_out if module.bias is not None else None
        h = hb = None
        if h_out is not None:
            h = h_out[:, :, None] * (xf * xf)[:, None, :]
            hb = h_out if module.bias is not None else None
        return g, gb, h, hb
    G = L.groups
    u = unfold(module, x_in)                                  # [N, C_in*k, S]
    S = u.shape[-1]
    u = u.view(N * G, -1, S)
    go = g_out.reshape(N * G, -1, S)
    g = torch.bmm(go, u.transpose(1, 2)).reshape(N, L.out_channels, -1)
    gb = go.sum(-1).reshape(N, -1) if module.bias is not None else None
    h = hb = None
    if h_out is not None:
        ho = h_out.reshape(N * G, -1, S)
        u2 = unfold(module, x_in * x_in).view(N * G, -1, S)   # (unfold x)^2, squared before the 9x copy
        h = torch.bmm(ho, u2.transpose(1, 2)).reshape(N, L.out_channels, -1)
        hb = ho.sum(-1).reshape(N, -1) if module.bias is not None else None
    return g, gb, h, hb


def unfold(module, x: torch.Tensor) -> torch.Tensor:
    """``F.unfold`` of a 2-d convolution's input, [N, C*kh*kw, S], as one strided copy of the
    padded input (F.unfold's im2col is an order of magnitude slower on CPU). The input is padded as
    the convolution pads it: ``padding_mode`` ('reflect', 'replicate', 'circular' as well as zeros)
    and ``padding='same'`` (uneven on the right and bottom) included."""
    if x.dim() != 4:
        return F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    (kh, kw), (dh, dw), (sh, sw) = module.kernel_size, module.dilation, module.stride
    x, (ph, pw) = pad_as_conv(module, x)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    N, C, Hp, Wp = x.shape
    oh, ow = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    s0, s1, s2, s3 = x.stride()
    u = x.as_strided((N, C, kh, kw, oh, ow), (s0, s1, dh * s2, dw * s3, sh * s2, sw * s3),
                     x.storage_offset())
    return u.reshape(N, C * kh * kw, oh * ow)


def bn_grads(bn, bn_in, g_out, h_out):
    """Per-image dL/dgamma, dL/dbeta (and LM curvature) of an eval-mode BatchNorm, [N, C]."""
    shape = [1, -1] + [1] * (bn_in.dim() - 2)
    xhat = (bn_in - bn.running_mean.view(shape)) * torch.rsqrt(bn.running_var.view(shape) + bn.eps)
    N, C = bn_in.shape[:2]
    xhat, g_out = xhat.reshape(N, C, -1), g_out.reshape(N, C, -1)
    g_gamma, g_beta = (g_out * xhat).sum(-1), g_out.sum(-1)
    h_gamma = h_beta = None
    if h_out is not None:
        h_out = h_out.reshape(N, C, -1)
        h_gamma, h_beta = (h_out * xhat * xhat).sum(-1), h_out.sum(-1)
    return g_gamma, g_beta, h_gamma, h_beta
