"""Levenberg-Marquardt diagonal curvature (Becker & LeCun 1989) at every node of an fx graph.

The LM recursion back-propagates the loss curvature with squared Jacobians and drops the second
derivatives of non-linearities: for ``y = A x``, ``h_x = (A∘A)^T h_y``. We build the *squared
twin* of the network — the same graph with every linear coefficient squared (weights, BatchNorm
scales, pooling coefficients, constant factors), element-wise activations replaced by their
squared derivative at the primal input, max-pooling by the primal arg-max routing — which is a
linear function of its input. Its vector-Jacobian product seeded with ``p(1-p)`` at the logits
is then exactly the LM recursion, node by node; a tensor used twice receives the sum.

A layer registered with ``register_layer_rule`` crosses the twin by its rule's ``lm`` face
(``metrics/_fx_rules.py``): ``"structural"`` (the layer itself on the twin's values) or a
callable giving the twin's forward ``t -> (J∘J) t``.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from prunetax.metrics._fx_rules import LM_STRUCTURAL, LayerRule, custom_rule, target_name
from prunetax.metrics.masking import LayerInput, MaskPoint
from prunetax.taxonomy.errors import PrunetaxError

_RELU_LIKE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)
_RELU_LIKE_FUNCTIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.hardtanh, F.leaky_relu}
_SMOOTH_FUNCTIONS = {torch.tanh: lambda x: 1 - torch.tanh(x) ** 2, F.tanh: lambda x: 1 - torch.tanh(x) ** 2,
                     torch.sigmoid: lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x)),
                     F.sigmoid: lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x))}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub", "sub_"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIV = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}
_STRUCTURAL_FUNCTIONS = {torch.flatten, torch.reshape, torch.cat, torch.concat, operator.getitem, F.pad,
                         F.dropout, F.dropout2d, torch.narrow, torch.chunk, torch.split}
_STRUCTURAL_METHODS = {"view", "reshape", "flatten", "contiguous", "clone", "narrow", "chunk", "split",
                       "permute", "transpose", "squeeze", "unsqueeze", "expand", "repeat", "to", "float",
                       "detach"}
_ACTIVATION_DERIVATIVE_METHODS = {"relu": lambda x: (x > 0).to(x.dtype), "relu_": lambda x: (x > 0).to(x.dtype)}


def _relu_like_derivative(module_or_fn, x: torch.Tensor, kwargs=None) -> torch.Tensor:
    if isinstance(module_or_fn, nn.LeakyReLU) or module_or_fn is F.leaky_relu:
        slope = module_or_fn.negative_slope if isinstance(module_or_fn, nn.Module) else (kwargs or {}).get(
            "negative_slope", 0.01)
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))
    if isinstance(module_or_fn, (nn.ReLU6, nn.Hardtanh)) or module_or_fn in (F.relu6, F.hardtanh):
        lo, hi = (0.0, 6.0) if isinstance(module_or_fn, nn.ReLU6) or module_or_fn is F.relu6 else (
            getattr(module_or_fn, "min_val", -1.0), getattr(module_or_fn, "max_val", 1.0))
        return ((x > lo) & (x < hi)).to(x.dtype)
    return (x > 0).to(x.dtype)


def _pool_coefficient(x: torch.Tensor, **kw) -> torch.Tensor:
    """Per-window 1/divisor of an average pool, so that its squared twin is avg_pool(x) * this."""
    ones = torch.ones_like(x[:1, :1])
    avg = F.avg_pool2d(ones, **kw)                                  # (real elements) / divisor
    summed = F.avg_pool2d(ones, **{**kw, "divisor_override": 1})   # real elements
    return torch.where(summed > 0, avg / summed.clamp(min=1e-12), torch.zeros_like(avg))


# The twin runs on an all-zero input (lm_curvature): it is linear, so every value it computes is 0 and
# only its autograd graph is used. Its convolutions and linear layers therefore skip their forward
# (the output is zeros of the known shape) and keep the backward autograd would run: the same
# aten call, so the curvature is bit-identical to autograd through F.conv2d / F.linear; on resnet20
# the twin takes about half the time (benchmarks/perf/lm_share.py measures it against that reference).
class _ZeroForwardConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w2, shape, stride, padding, dilation, groups):
        ctx.save_for_backward(x, w2)
        ctx.conf = (list(stride), list(padding), list(dilation), groups)
        return x.new_zeros(shape)

    @staticmethod
    def backward(ctx, g):
        x, w2 = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        gx, _, _ = torch.ops.aten.convolution_backward(g, x, w2, None, stride, padding, dilation, False,
                                                       [0] * len(stride), groups, [True, False, False])
        return gx, None, None, None, None, None, None


class _ZeroForwardLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w2):
        ctx.save_for_backward(w2)
        return x.new_zeros(*x.shape[:-1], w2.shape[0])

    @staticmethod
    def backward(ctx, g):
        (w2,) = ctx.saved_tensors
        return g.matmul(w2), None


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def pad_as_conv(module, x: torch.Tensor):
    """``(x, padding)``: a 2-d convolution's input padded as the convolution pads it wherever that is
    not a plain symmetric zero padding (``padding_mode`` reflect / replicate / circular, as
    nn.Conv2d's ``_conv_forward`` does; ``padding='same'`` / ``'valid'``, uneven on the right and
    bottom), and the zero padding left for the convolution itself. Padding copies elements, so its
    Jacobian has entries 0/1 and squares to itself: the LM twin pads as the primal does."""
    mode = getattr(module, "padding_mode", "zeros")
    if isinstance(module.padding, str) or mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode="constant" if mode == "zeros" else mode)
        return x, (0, 0)
    return x, module.padding


def twin_conv(x, w2, shape, stride, padding, dilation, groups):
    """conv2d(x, w2) for the twin's zero input (numeric padding): its graph without its forward."""
    return _ZeroForwardConv2d.apply(x, w2, shape, _pair(stride), _pair(padding), _pair(dilation), groups)


def twin_linear(x, w2):
    """linear(x, w2) for the twin's zero input: its graph without its forward."""
    return _ZeroForwardLinear.apply(x, w2)


class _Twin(fx.Interpreter):
    """Runs the squared twin, given the primal value of every node."""

    def __init__(self, gm: fx.GraphModule, primal: dict[str, object]):
        super().__init__(gm)
        self.extra_traceback = False  # our errors name the node already, in one line
        self.primal = primal
        self.values: dict[str, torch.Tensor] = {}
        self.dependent: set[str] = set()

    def run_node(self, n: fx.Node):
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        deps = [a for a in n.all_input_nodes if a.name in self.dependent]
        if n.op == "placeholder":
            out = self.primal["__twin_input__"]
            self.dependent.add(n.name)
        elif n.op == "output":
            return super().run_node(n)
        elif not deps or not isinstance(self.primal.get(n.name), (torch.Tensor, tuple, list)):
            out = self.primal[n.name]  # a constant w.r.t. the input: its primal value
        else:
            self.dependent.add(n.name)
            out = self._twin(n, args, kwargs, deps)
        if isinstance(out, torch.Tensor) and n.name in self.dependent:
            self.values[n.name] = out
        return out

    def _primal_arg(self, n: fx.Node, i: int = 0):
        a = n.args[i]
        return self.primal[a.name] if isinstance(a, fx.Node) else a

    def _twin(self, n, args, kwargs, deps):
        """The twin's value at node ``n`` (which depends on the input), given its twin arguments."""
        where = f"node '{n.name}' ({n.op} {getattr(n.target, '__name__', n.target)})"
        m = self.module.get_submodule(n.target) if n.op == "call_module" else None
        rule = custom_rule(m if m is not None else n.target)
        if rule is not None and rule.lm is not None:
            return self._custom(n, m, rule, args, kwargs, deps)
        if n.op == "call_module":
            out = self._module(n, m, args[0], where)
        else:
            out = self._function(n, args, kwargs, where)
        if out is not None:
            return out
        if rule is not None:
            self._no_lm_face(n, m)
        if n.op == "call_module":
            raise PrunetaxError(f"LM curvature cannot square module {type(m).__name__} at {where}; "
                                "hessian_lm metrics support conv, linear, BatchNorm, ReLU-like, pooling layers")
        raise PrunetaxError(f"LM curvature cannot square {where}; hessian_lm metrics support linear ops, "
                            "ReLU-like activations, pooling, add, cat, flatten, pad and slicing")

    def _module(self, n: fx.Node, m, x, where: str):
        """The twin of module ``m`` at node ``n`` on the twin value ``x``; None for a module it cannot square."""
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach()   # constants of the twin: no graph towards the parameters
            x, padding = pad_as_conv(m, x)
            return twin_conv(x, w * w, self.primal[n.name].shape, m.stride, padding, m.dilation, m.groups)
        if isinstance(m, nn.Linear):
            w = m.weight.detach()
            return twin_linear(x, w * w)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training:
                raise PrunetaxError(f"LM curvature needs eval-mode BatchNorm at {where}; call model.eval()")
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight
            shape = [1, -1] + [1] * (x.dim() - 2)
            return x * (scale * scale).view(shape)
        if isinstance(m, _RELU_LIKE_MODULES):
            d = _relu_like_derivative(m, self._primal_arg(n))
            return x * d * d
        if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            return x
        if isinstance(m, nn.MaxPool2d):
            return self._maxpool(x, self._primal_arg(n), m.kernel_size, m.stride, m.padding, m.dilation,
                                 m.ceil_mode)
        if isinstance(m, nn.AvgPool2d):
            kw = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, ceil_mode=m.ceil_mode,
                      count_include_pad=m.count_include_pad)
            return F.avg_pool2d(x, **kw) * _pool_coefficient(x, **kw)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self._adaptive_avg(x, m.output_size, where)
        if isinstance(m, nn.Flatten):
            return m(x)
        if isinstance(m, (MaskPoint, LayerInput)):
            return m(x)  # a 0/1 channel mask (squares to itself) or an identity
        return None

    def _function(self, n: fx.Node, args, kwargs, where: str):
        """The twin of function or method node ``n`` on its twin arguments; None for one it cannot square."""
        target = n.target
        if target in _ADD or target in _SUB or target in _MUL or target in _DIV:
            return self._arithmetic(n, args, where)
        if target in _RELU_LIKE_FUNCTIONS or (n.op == "call_method" and target in _ACTIVATION_DERIVATIVE_METHODS):
            d = _relu_like_derivative(target, self._primal_arg(n), n.kwargs)
            return args[0] * d * d
        if target in _SMOOTH_FUNCTIONS:
            d = _SMOOTH_FUNCTIONS[target](self._primal_arg(n))
            return args[0] * d * d
        if target is F.max_pool2d:
            p = {**dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), n.args[1:])), **n.kwargs}
            p.pop("return_indices", None)
            return self._maxpool(args[0], self._primal_arg(n), p["kernel_size"], p.get("stride"),
                                 p.get("padding", 0), p.get("dilation", 1), p.get("ceil_mode", False))
        if target is F.avg_pool2d:
            kw = {**dict(zip(("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"), n.args[1:])),
                  **n.kwargs}
            return F.avg_pool2d(args[0], **kw) * _pool_coefficient(args[0], **kw)
        if target is F.adaptive_avg_pool2d:
            size = n.args[1] if len(n.args) > 1 else n.kwargs["output_size"]
            return self._adaptive_avg(args[0], size, where)
        if target is torch.mean or (n.op == "call_method" and target == "mean"):
            x = args[0]
            out = getattr(torch, "mean")(*args, **kwargs) if n.op == "call_function" else x.mean(*args[1:], **kwargs)
            count = x.numel() // max(out.numel(), 1)
            return out / count
        if n.op == "call_function" and (target in _STRUCTURAL_FUNCTIONS):
            return target(*args, **kwargs)
        if n.op == "call_method" and target in _STRUCTURAL_METHODS:
            return getattr(args[0], target)(*args[1:], **kwargs)
        return None

    def _arithmetic(self, n: fx.Node, args, where: str):
        """The twin of ``a ± b`` (coefficients ±1 square to 1) and of ``a * c``, ``a / c`` with ``c``
        a constant (its square scales the twin)."""
        target = n.target
        ad = isinstance(n.args[0], fx.Node) and n.args[0].name in self.dependent
        bd = isinstance(n.args[1], fx.Node) and n.args[1].name in self.dependent
        if target in _ADD or target in _SUB:
            if ad and bd:
                return args[0] + args[1]  # (±1)^2 = 1
            return args[0] if ad else args[1]
        if ad and bd:
            raise PrunetaxError(f"LM curvature: product of two input-dependent tensors at {where} is not linear")
        if ad:
            c = self._primal_arg(n, 1)
            return args[0] * c * c if target in _MUL else args[0] / (c * c)
        if target in _DIV:
            raise PrunetaxError(f"LM curvature: division by an input-dependent tensor at {where}")
        c = self._primal_arg(n, 0)
        return args[1] * c * c

    # -- registered layer rules (register_layer_rule(..., lm=...)) ----------------------------------
    @staticmethod
    def _no_lm_face(n: fx.Node, m) -> None:
        name = target_name(m if m is not None else n.target)
        raise PrunetaxError(
            f"LM curvature (hessian_lm, taylor2_lm) at node '{n.name}': the layer rule registered for {name} "
            f"has no 'lm' face; register it with register_layer_rule({name}, ..., lm='structural') if it only "
            "moves, copies or drops elements (or adds constants), or lm=fn(t, module, *args, **kwargs) returning "
            "(J∘J) t, e.g. lambda t, m, x: t * df(x) ** 2 for an element-wise f")

    def _custom(self, n: fx.Node, m, rule: LayerRule, args, kwargs, deps):
        name = target_name(m if m is not None else n.target)
        if rule.lm == LM_STRUCTURAL:   # J has entries 0/1: J∘J = J, the twin is the layer itself
            if m is not None:
                return m(*args, **kwargs)
            if n.op == "call_method":
                return getattr(args[0], n.target)(*args[1:], **kwargs)
            return n.target(*args, **kwargs)
        if len(deps) != 1:
            raise PrunetaxError(f"LM curvature at node '{n.name}' ({name}): a callable 'lm' face takes one "
                                f"input-dependent tensor, this call has {len(deps)}")
        primal_args = fx.node.map_arg(n.args, lambda a: self.primal[a.name])
        primal_kwargs = fx.node.map_arg(n.kwargs, lambda a: self.primal[a.name])
        out = rule.lm(self.env[deps[0]], m, *primal_args, **primal_kwargs)
        want = self.primal[n.name]
        if not isinstance(out, torch.Tensor) or not isinstance(want, torch.Tensor) or out.shape != want.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise PrunetaxError(f"LM curvature at node '{n.name}' ({name}): the 'lm' face returned {got}, "
                                f"the layer's output has shape {tuple(getattr(want, 'shape', ()))}")
        return out

    @staticmethod
    def _maxpool(x, primal_in, kernel_size, stride, padding, dilation, ceil_mode):
        _, idx = F.max_pool2d(primal_in, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
        return x.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)

    @staticmethod
    def _adaptive_avg(x, size, where):
        oh, ow = (size, size) if isinstance(size, int) else size
        oh, ow = oh or x.shape[-2], ow or x.shape[-1]
        if x.shape[-2] % oh or x.shape[-1] % ow:
            raise PrunetaxError(f"LM curvature: adaptive average pooling with uneven windows at {where}")
        window = (x.shape[-2] // oh) * (x.shape[-1] // ow)
        return F.adaptive_avg_pool2d(x, (oh, ow)) / window


def record_forward(gm: fx.GraphModule, x: torch.Tensor):
    """Run ``gm`` on ``x`` (autograd as usual) and return (output, {node name: value})."""
    rec = _Recorder(gm)
    out = rec.run(x)
    return out, rec.values


class _Recorder(fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.values: dict[str, object] = {}

    def run_node(self, n):
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def lm_curvature(gm: fx.GraphModule, x: torch.Tensor, nodes: list[str],
                 logits_seed: torch.Tensor | None = None, primal: dict | None = None,
                 logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The LM diagonal curvature of each image's own cross-entropy at the given fx nodes.

    ``x`` is the input batch; the result maps node name -> tensor shaped like that node's value
    (per image). The seed at the logits is ``p(1-p)`` of the softmax unless given. ``primal`` and
    ``logits``: the value of every node and the output from a forward already run on ``x``
    (``record_forward``), so that the network is not run a second time.
    """
    if primal is None:
        with torch.no_grad():
            rec = _Recorder(gm)
            logits = rec.run(x)
        primal = rec.values
    primal = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in primal.items()}
    if logits_seed is None:
        p = torch.softmax(logits.detach(), dim=1)
        logits_seed = p * (1 - p)
    primal["__twin_input__"] = torch.zeros_like(x, requires_grad=True)
    with torch.enable_grad():
        twin = _Twin(gm, primal)
        out = twin.run(primal["__twin_input__"])
        wanted = [name for name in nodes if name in twin.values]
        missing = [name for name in nodes if name not in twin.values]
        if missing:
            raise PrunetaxError(f"LM curvature: node(s) {', '.join(missing)} are not downstream of the input")
        grads = torch.autograd.grad(out, [twin.values[k] for k in wanted], grad_outputs=logits_seed,
                                    allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(twin.values[k])).detach() for k, g in zip(wanted, grads)}

