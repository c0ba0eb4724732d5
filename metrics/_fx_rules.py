"""How each fx node maps channels: the built-in rules and the registry for custom layers.

A tensor flowing through the graph is described by a ``Channels``: one union-find id per
channel (``FIXED`` for channels that can never be removed, ``EMPTY`` for zero-padding) plus
``kernel``, the number of features per channel along dim 1 once a tensor has been flattened.
A rule turns the ``Channels`` of a node's tensor arguments into the ``Channels`` of its output
and says whether the op keeps a zero channel zero (``zero_preserving``); ops that do not (a
BatchNorm, ``x + 1``, a sigmoid) get the mask re-applied after them.

``register_layer_rule`` adds a ``LayerRule`` for a custom layer: its channel map, whether it keeps
zeros zero, how to slim it and how the LM curvature crosses it (``lm``).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from prunetax.metrics._types import StructureError

FIXED = 0   # union-find id of "never removable" (network input, network output)
EMPTY = -1  # a zero channel made by padding: no producer behind it


@dataclass
class Channels:
    ids: torch.Tensor  # long [C]: union-find id per channel
    kernel: int = 1    # features per channel along dim 1 (H*W after a flatten, else 1)


LM_STRUCTURAL = "structural"


@dataclass(frozen=True)
class LayerRule:
    """A registered rule for a custom module class, function or method name: one field per face.

    - ``channels`` (structure, units): ``"passthrough"`` or
      ``fn(num_in_channels, module_or_None, *args, **kwargs) -> long [C_out]``;
    - ``zero_preserving`` (masking): whether a zero input channel stays zero (if not, the mask is
      re-applied after the layer);
    - ``slim`` (physical removal): ``fn(module, keep_in: bool [C_in]) -> smaller module`` for
      modules holding per-channel state, None for stateless ones (kept as they are);
    - ``lm`` (the Levenberg-Marquardt curvature of ``hessian_lm`` / ``taylor2_lm`` metrics): how the
      squared twin crosses the layer, ``"structural"`` or ``fn(t, module_or_None, *args, **kwargs)``;
      None: no LM face (a metric that needs one raises an error naming the layer).
    """
    channels: str | Callable
    zero_preserving: bool = True
    slim: Callable | None = None
    lm: str | Callable | None = None


_CUSTOM: dict[object, LayerRule] = {}


def register_layer_rule(target, channels="passthrough", *, zero_preserving: bool = True, slim=None,
                        lm=None) -> None:
    """Tell the analysis, the masking, the slimming and the LM curvature how ``target`` behaves.

    ``target``: an ``nn.Module`` subclass (traced as a leaf), a function (``torch.roll``) or a
    method name (``"roll"``). Every output channel of the layer comes from one input channel (or
    is a new zero channel): a registered layer is never a producer.

    ``channels``: ``"passthrough"`` (output channel c is input channel c, e.g. an element-wise op)
    or ``fn(num_in_channels, module_or_None, *args, **kwargs)`` (the call's own arguments; tensors
    appear as fx nodes) returning a long tensor with, for each output channel, the input channel
    it comes from (-1 for a new zero channel).

    ``zero_preserving``: whether a zero input channel gives a zero output channel (if not, the
    mask is re-applied after it). ``slim``: for modules holding per-channel state,
    ``fn(module, keep_in: bool [C_in]) -> module`` building the smaller module.

    ``lm``: how the Levenberg-Marquardt curvature crosses the layer, needed by every
    ``hessian_lm`` / ``taylor2_lm`` metric on a network that uses it. The LM recursion back-
    propagates ``h_x = (J∘J)^T h_y`` with J the layer's Jacobian at the current input; it is run
    as the vector-Jacobian product of the network's *squared twin* (docs/metrics.md), so the
    layer gives the twin's forward, ``t -> (J∘J) t``, and the transposed map follows by autograd:

    - ``"structural"``: every output element is one input element or a constant (a roll, a
      permutation, padding, cropping, ``x + offset``): J has entries 0 and 1, J∘J = J, and the
      twin is the layer itself, called on the twin's values;
    - ``fn(t, module_or_None, *args, **kwargs)``: ``t`` is the twin value of the layer's one
      input-dependent tensor argument; ``args``/``kwargs`` are the call's own arguments at their
      primal values (``args[0]`` is the layer's actual input ``x``). It returns ``(J∘J) t``, a
      tensor shaped like the layer's output, linear in ``t``. An element-wise ``y = f(x)``:
      ``lambda t, m, x: t * f'(x) ** 2``; a per-channel scale ``y = s[c] x``:
      ``lambda t, m, x: t * m.s.view(1, -1, 1, 1) ** 2``.
    """
    if not (channels == "passthrough" or callable(channels)):
        raise StructureError(f"channels must be 'passthrough' or a callable, got {channels!r}")
    if not (lm is None or lm == LM_STRUCTURAL or callable(lm)):
        raise StructureError(f"lm must be None, {LM_STRUCTURAL!r} or a callable fn(t, module, *args, **kwargs), "
                             f"got {lm!r}")
    if slim is not None and not callable(slim):
        raise StructureError(f"slim must be None or a callable fn(module, keep_in), got {slim!r}")
    _CUSTOM[target] = LayerRule(channels, zero_preserving, slim, lm)


def unregister_layer_rule(target) -> None:
    """Forget a rule added with ``register_layer_rule`` (no error if there is none)."""
    _CUSTOM.pop(target, None)


def custom_rule(target) -> LayerRule | None:
    if isinstance(target, nn.Module):
        for cls in type(target).__mro__:
            if cls in _CUSTOM:
                return _CUSTOM[cls]
        return None
    try:
        return _CUSTOM.get(target)
    except TypeError:  # unhashable target
        return None


def custom_leaf_classes() -> tuple[type, ...]:
    return tuple(t for t in _CUSTOM if isinstance(t, type))


def target_name(target) -> str:
    """How a message names a rule's target: ``AddOffset``, ``torch.roll``, ``Tensor.roll``."""
    if isinstance(target, nn.Module):
        target = type(target)
    if isinstance(target, str):
        return f"Tensor.{target}"
    name = getattr(target, "__name__", None) or repr(target)
    if isinstance(target, type):
        return name
    mod = getattr(target, "__module__", None) or ""
    mod = {"torch._C._nn": "torch.nn.functional", "_operator": "operator",
           "torch._C._VariableFunctions": "torch"}.get(mod, mod)
    return f"{mod}.{name}" if mod else name


# --- classification of built-in ops ------------------------------------------------------------
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
                      nn.Tanh, nn.Hardtanh, nn.Mish, nn.Sigmoid, nn.Hardsigmoid, nn.PReLU, nn.CELU, nn.SELU)
NONZERO_ACTIVATION_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
PASS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity,
                nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)

ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.hardtanh, F.gelu, F.silu,
                        torch.tanh, F.tanh, F.leaky_relu, F.elu, F.hardswish, F.mish, F.selu, F.celu,
                        torch.sigmoid, F.sigmoid, F.hardsigmoid}
NONZERO_ACTIVATION_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
ACTIVATION_METHODS = {"relu", "relu_", "tanh", "sigmoid", "sigmoid_", "tanh_"}
NONZERO_ACTIVATION_METHODS = {"sigmoid", "sigmoid_"}
PASS_FUNCTIONS = {F.dropout, F.dropout2d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
                  F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                  F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d}
PASS_METHODS = {"contiguous", "clone", "float", "half", "bfloat16", "to", "detach"}
BINARY_FUNCTIONS = {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub",
                    operator.isub: "sub", torch.sub: "sub", operator.mul: "mul", operator.imul: "mul",
                    torch.mul: "mul", operator.truediv: "div", operator.itruediv: "div", torch.div: "div"}
BINARY_METHODS = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
                  "div": "div", "div_": "div"}
FLATTEN_FUNCTIONS = {torch.flatten, torch.reshape}
FLATTEN_METHODS = {"flatten", "view", "reshape"}
CAT_FUNCTIONS = {torch.cat, torch.concat}


def is_activation(node, module) -> bool:
    """An element-wise activation: part of a producer's own output up to its mask point."""
    if node.op == "call_module":
        return isinstance(module, ACTIVATION_MODULES) and not (
            isinstance(module, nn.PReLU) and module.num_parameters > 1)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    if node.op == "call_method":
        return node.target in ACTIVATION_METHODS
    return False


def is_batchnorm(node, module) -> bool:
    return node.op == "call_module" and isinstance(module, nn.modules.batchnorm._BatchNorm)


def describe(node) -> str:
    """`op target` of a node, for error messages."""
    t = node.target
    if node.op == "call_function":
        mod = getattr(t, "__module__", None) or ""
        mod = {"torch._C._nn": "torch.nn.functional", "_operator": "operator", "torch._C._VariableFunctions": "torch"}.get(mod, mod)
        name = f"{mod}.{getattr(t, '__name__', repr(t))}" if mod else getattr(t, "__name__", repr(t))
        return f"call_function {name}"
    if node.op == "call_method":
        return f"call_method Tensor.{t}"
    return f"{node.op} {t}"


def flatten_channels(ch: Channels, in_shape, out_shape) -> Channels | None:
    """Channels after a flatten-like reshape [B, C, *S] -> [B, C*prod(S)], None if not one."""
    if len(out_shape) != 2 or len(in_shape) < 2 or out_shape[0] != in_shape[0]:
        return None
    if out_shape[1] != in_shape[1] * math.prod(in_shape[2:]):
        return None
    return Channels(ch.ids, ch.kernel * math.prod(in_shape[2:]))


def source_map(ch: Channels, src: torch.Tensor) -> Channels:
    """Output channel c is input channel src[c] (-1: a new zero channel)."""
    src = torch.as_tensor(src, dtype=torch.long)
    ids = torch.where(src >= 0, ch.ids[src.clamp(min=0)], torch.full_like(src, EMPTY))
    return Channels(ids, ch.kernel)
