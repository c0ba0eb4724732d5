"""The graph walk behind ``prunetax.metrics.analyze``: trace with torch.fx, propagate channel ids, union them.

Every output channel of every Conv/Linear gets a union-find id; adds merge ids channel-wise,
grouped convolutions tie ids across groups, concatenation and zero-padding shift them, and
the network output ties its channels to ``FIXED``. The roots that are not ``FIXED`` are the units.
"""
from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from prunetax.metrics._fx_rules import (ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES,
                                        BINARY_FUNCTIONS, BINARY_METHODS, CAT_FUNCTIONS, EMPTY, FIXED,
                                        FLATTEN_FUNCTIONS, FLATTEN_METHODS, NONZERO_ACTIVATION_FUNCTIONS,
                                        NONZERO_ACTIVATION_METHODS, NONZERO_ACTIVATION_MODULES,
                                        PASS_FUNCTIONS, PASS_METHODS, PASS_MODULES, Channels, LayerRule,
                                        custom_leaf_classes, custom_rule, describe, flatten_channels,
                                        source_map)
from prunetax.metrics._types import StructureError

_HOW = "register it with prunetax.metrics.register_layer_rule(...)"


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, custom_leaf_classes()) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as an fx GraphModule; modules with a registered layer rule stay single leaves."""
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
    except Exception as exc:  # TraceError, data-dependent control flow, ...
        msg = (str(exc).splitlines() or [""])[0]
        raise StructureError(f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {msg}); "
                             "models need forward code without data-dependent control flow") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class _UnionFind:
    def __init__(self):
        self.parent = [FIXED]

    def new(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n)

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: int, b: int) -> None:
        if a < 0 or b < 0:
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller id is the root, so FIXED (0) always stays a root
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_all(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            self.union(x, y)

    def roots(self, t: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.find(i) if i >= 0 else i for i in t.tolist()], dtype=torch.long)


class Walk:
    """Walks a traced graph once; results: ``layers`` (raw), ``info`` (node -> Channels), ``uf``."""

    def __init__(self, gm: fx.GraphModule, example_input: torch.Tensor):
        self.Error = StructureError
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.uf = _UnionFind()
        self.info: dict[fx.Node, Channels | None] = {}
        self.zero_preserving: dict[fx.Node, bool] = {}
        self.layers: list[dict] = []
        self.custom: dict[str, LayerRule] = {}  # node name -> rule used there
        self.pads: dict[str, tuple[int, int]] = {}  # node name -> (front, back) channel padding
        was = {m: m.training for m in gm.modules()}
        gm.eval()
        try:
            _shapes_on_meta(gm, example_input[:1])
        except Exception as exc:
            msg = (str(exc).splitlines() or [""])[0]
            raise StructureError(f"the model fails on an input of shape {tuple(example_input.shape)} "
                                 f"({type(exc).__name__}: {msg})") from None
        finally:
            for m, t in was.items():
                m.train(t)
        for node in gm.graph.nodes:
            self._visit(node)

    # -- helpers --------------------------------------------------------------------------------
    def fail(self, node, why: str, how: str = _HOW):
        raise self.Error(f"cannot place node '{node.name}' ({describe(node)}): {why}; {how}")

    @staticmethod
    def shape(node):
        tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(tm.shape) if isinstance(tm, TensorMetadata) else None

    def tensor_args(self, node):
        out = []
        for a in _flat(node.args, node.kwargs):
            if isinstance(a, fx.Node) and self.info.get(a) is not None:
                out.append(a)
        return out

    def check_pass(self, node, src: fx.Node, ch: Channels) -> Channels:
        so, si = self.shape(node), self.shape(src)
        if so is None or len(so) < 2 or so[0] != si[0] or so[1] != si[1]:
            self.fail(node, f"channel dimension changes from {si} to {so}")
        return ch

    # -- the walk -------------------------------------------------------------------------------
    def _visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            s = self.shape(node)
            self.info[node] = Channels(torch.full((s[1],), FIXED)) if s is not None and len(s) >= 2 else None
            return
        if node.op == "output":
            for a in self.tensor_args(node):
                ch = self.info[a]
                self.uf.union_all(ch.ids, torch.full_like(ch.ids, FIXED))
            return
        if node.op == "get_attr":
            if any(self.info.get(u) is not None or self.shape(u) is not None for u in node.users):
                self.fail(node, "a parameter or buffer used in forward: channel mapping unknown",
                          "register the module that uses it with prunetax.metrics.register_layer_rule(...) "
                          "so that it is traced as one layer")
            self.info[node] = None
            return
        tm = node.meta.get("tensor_meta")
        tensors = self.tensor_args(node)
        if not isinstance(tm, TensorMetadata):
            if tm is not None and tensors:  # several tensors out (split, chunk, ...)
                self.fail(node, "returns several tensors; channel mapping unknown")
            self.info[node] = None
            return
        if not tensors:  # a tensor made from nothing channel-related (torch.zeros(...), ...)
            if node.op == "call_module" and custom_rule(self.modules[node.target]) is None:
                self.fail(node, "no tensor input")
            self.info[node] = None
            return
        module = self.modules.get(node.target) if node.op == "call_module" else None
        out, zp = self._rule(node, module, tensors)
        self.info[node] = out
        self.zero_preserving[node] = zp

    def _rule(self, node, module, tensors):
        x = tensors[0]
        ch = self.info[x]
        target = module if module is not None else node.target
        rule = custom_rule(target)
        if rule is not None:
            self.custom[node.name] = rule
            if rule.channels == "passthrough":
                return self.check_pass(node, x, ch), rule.zero_preserving
            src = rule.channels(len(ch.ids), module, *node.args, **node.kwargs)
            out = source_map(ch, src)
            so = self.shape(node)
            if so is None or len(so) < 2 or so[1] != len(out.ids) * out.kernel:
                self.fail(node, f"the registered channel rule gives {len(out.ids)} channels, the output has shape {so}")
            return out, rule.zero_preserving
        if node.op == "call_module":
            return self._module(node, module, x, ch)
        if node.op == "call_function":
            return self._function(node, x, ch, tensors)
        return self._method(node, x, ch, tensors)

    def _module(self, node, m, x, ch):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            return self._layer(node, m, ch), False
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.num_features != len(ch.ids) * ch.kernel or ch.kernel != 1:
                self.fail(node, f"BatchNorm over {m.num_features} features of a tensor with {len(ch.ids)} channels")
            return self.check_pass(node, x, ch), False
        if isinstance(m, nn.PReLU) and m.num_parameters > 1:
            self.fail(node, "PReLU with one parameter per channel is not supported")
        if isinstance(m, ACTIVATION_MODULES):
            return self.check_pass(node, x, ch), not isinstance(m, NONZERO_ACTIVATION_MODULES)
        if isinstance(m, PASS_MODULES):
            return self.check_pass(node, x, ch), True
        if isinstance(m, nn.Flatten):
            return self._flatten(node, x, ch), True
        self.fail(node, f"module {type(m).__name__}: channel mapping unknown")

    def _function(self, node, x, ch, tensors):
        t = node.target
        if t in ACTIVATION_FUNCTIONS:
            return self.check_pass(node, x, ch), t not in NONZERO_ACTIVATION_FUNCTIONS
        if t in PASS_FUNCTIONS:
            return self.check_pass(node, x, ch), True
        if t in BINARY_FUNCTIONS:
            return self._binary(node, BINARY_FUNCTIONS[t], tensors)
        if t in FLATTEN_FUNCTIONS:
            return self._flatten(node, x, ch), True
        if t in CAT_FUNCTIONS:
            return self._cat(node, tensors)
        if t in (torch.mean, torch.sum, torch.amax):
            return self._reduce(node, x, ch), True
        if t is torch.nn.functional.pad:
            return self._pad(node, x, ch)
        if t is operator.getitem:
            return self._getitem(node, x, ch), True
        self.fail(node, "channel mapping unknown")

    def _method(self, node, x, ch, tensors):
        t = node.target
        if t in ACTIVATION_METHODS:
            return self.check_pass(node, x, ch), t not in NONZERO_ACTIVATION_METHODS
        if t in PASS_METHODS:
            return self.check_pass(node, x, ch), True
        if t in BINARY_METHODS:
            return self._binary(node, BINARY_METHODS[t], tensors)
        if t in FLATTEN_METHODS:
            return self._flatten(node, x, ch), True
        if t in ("mean", "sum", "amax"):
            return self._reduce(node, x, ch), True
        self.fail(node, "channel mapping unknown")

    # -- rules ----------------------------------------------------------------------------------
    def _layer(self, node, m, ch):
        name = node.target
        if any(L["name"] == name for L in self.layers):
            self.fail(node, "the module is called twice (shared weights); channel mapping ambiguous")
        if isinstance(m, nn.Linear):
            si = self.shape(node.args[0])
            if len(si) != 2:
                self.fail(node, f"Linear on a {len(si)}-d tensor; only [batch, features] inputs are supported")
            if len(ch.ids) * ch.kernel != m.in_features:
                self.fail(node, f"Linear expects {m.in_features} features, its input has {len(ch.ids)}x{ch.kernel}")
            kind, out, groups, k, spatial = "linear", m.out_features, 1, ch.kernel, 1
        else:
            if getattr(m, "transposed", False):
                self.fail(node, "transposed convolution is not supported")
            if ch.kernel != 1 or len(ch.ids) != m.in_channels:
                self.fail(node, f"conv expects {m.in_channels} channels, its input has {len(ch.ids)}")
            kind, out, groups = "conv", m.out_channels, m.groups
            k = math.prod(m.kernel_size)
            spatial = math.prod(self.shape(node)[2:])
        out_ids = self.uf.new(out)
        if groups > 1:
            ipg, opg = len(ch.ids) // groups, out // groups
            if ipg > 1:  # balanced groups: input j of every group is one unit, output j likewise
                ins = ch.ids.view(groups, ipg)
                outs = out_ids.view(groups, opg)
                for g in range(1, groups):
                    self.uf.union_all(ins[0], ins[g])
                    self.uf.union_all(outs[0], outs[g])
            else:  # depthwise: a group's outputs are tied to its one input channel
                self.uf.union_all(out_ids, ch.ids.repeat_interleave(opg))
        self.layers.append(dict(name=name, kind=kind, node=node, in_ids=ch.ids, out_ids=out_ids,
                                groups=groups, kernel=k, out_spatial=spatial))
        return Channels(out_ids, 1)

    def _binary(self, node, kind, tensors):
        if len(tensors) == 1:
            other = [a for a in node.args[:2] if a is not tensors[0]] + list(node.kwargs.values())
            scalar = other[0] if other else 0
            zero = isinstance(scalar, (int, float)) and scalar == 0
            x = tensors[0]
            self.check_pass(node, x, self.info[x])
            return self.info[x], kind in ("mul", "div") or zero
        if len(tensors) != 2:
            self.fail(node, "more than two tensor operands")
        (a, b), so = tensors, self.shape(node)
        ca, cb = self.info[a], self.info[b]
        sa, sb = self.shape(a), self.shape(b)
        if kind == "div" and len(sb) >= 2 and sb[1] > 1:
            self.fail(node, "division by a tensor with channels (a removed channel would divide by zero)")
        big = [c for c, s in ((ca, sa), (cb, sb)) if len(s) >= 2 and s[1] == so[1]]
        small = [c for c, s in ((ca, sa), (cb, sb)) if not (len(s) >= 2 and s[1] == so[1])]
        for c in small:  # a broadcast operand (one channel or a scalar tensor): never removable
            self.uf.union_all(c.ids, torch.full_like(c.ids, FIXED))
        if len(big) == 2:
            if len(ca.ids) != len(cb.ids) or ca.kernel != cb.kernel:
                self.fail(node, "operands with different channel layouts")
            self.uf.union_all(ca.ids, cb.ids)
            ids = torch.where(ca.ids != EMPTY, ca.ids, cb.ids)
            return Channels(ids, ca.kernel), kind != "div"
        return big[0], kind in ("mul",)

    def _flatten(self, node, x, ch):
        if node.op == "call_method" and node.target in ("view", "reshape") or node.target is torch.reshape:
            shape_args = node.args[1:] if node.op == "call_method" else node.args[1:]
            if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list)):
                shape_args = tuple(shape_args[0])
            if len(shape_args) != 2 or shape_args[-1] != -1:
                self.fail(node, "reshape with literal sizes; use torch.flatten(x, 1) or x.view(x.size(0), -1)")
        out = flatten_channels(ch, self.shape(x), self.shape(node))
        if out is None:
            if self.shape(x) == self.shape(node):
                return ch
            self.fail(node, f"reshape {self.shape(x)} -> {self.shape(node)} is not a flatten to [batch, features]")
        return out

    def _cat(self, node, tensors):
        seq = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        so = self.shape(node)
        if dim % len(so) != 1:
            self.fail(node, f"concatenation along dim {dim}; only channel (dim 1) concatenation is supported")
        chs = [self.info[a] for a in seq]
        if len({c.kernel for c in chs}) != 1:
            self.fail(node, "concatenating flattened tensors of different spatial sizes")
        return Channels(torch.cat([c.ids for c in chs]), chs[0].kernel), True

    def _reduce(self, node, x, ch):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        si = self.shape(x)
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if not dims or any(d % len(si) in (0, 1) for d in dims) or ch.kernel != 1:
            self.fail(node, "reduction over the batch or channel dimension")
        return ch

    def _pad(self, node, x, ch):
        pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        nd = len(self.shape(x))
        zp = mode != "constant" or not value
        if len(pad) <= 2 * (nd - 2):
            return self.check_pass(node, x, ch), zp
        if len(pad) > 2 * (nd - 1) or mode != "constant" or ch.kernel != 1:
            self.fail(node, "padding of the batch dimension, or non-constant channel padding")
        front, back = pad[2 * (nd - 2)], pad[2 * (nd - 2) + 1]
        if front < 0 or back < 0 or not all(isinstance(p, int) for p in (front, back)):
            self.fail(node, "channel padding must be non-negative integers")
        self.pads[node.name] = (front, back)
        # zero channels get ids of their own, so a later add ties them to the channels they meet
        ids = torch.cat([self.uf.new(front), ch.ids, self.uf.new(back)])
        return Channels(ids), zp

    def _getitem(self, node, x, ch):
        idx = node.args[1]
        idx = idx if isinstance(idx, tuple) else (idx,)
        nd = len(self.shape(x))
        full = slice(None, None, None)
        if idx and idx[0] is Ellipsis and Ellipsis not in idx[1:] and None not in idx and len(idx) - 1 <= nd - 2:
            return self.check_pass(node, x, ch)
        if Ellipsis in idx or None in idx or idx[0] != full or (len(idx) > 1 and idx[1] != full):
            self.fail(node, "indexing that selects batch rows or channels")
        return self.check_pass(node, x, ch)


class _Propagate(nn.Module):
    def __init__(self, gm):
        super().__init__()
        self.gm = gm

    def forward(self, x):
        return ShapeProp(self.gm).propagate(x)


def _shapes_on_meta(gm: fx.GraphModule, x: torch.Tensor) -> None:
    """Record every node's output shape, computing on the meta device (no arithmetic)."""
    wrapper = _Propagate(gm)
    state = {k: torch.empty_like(v, device="meta") for k, v in wrapper.state_dict(keep_vars=True).items()}
    with torch.no_grad():
        torch.func.functional_call(wrapper, state, (x.to("meta"),), strict=False)


def _flat(args, kwargs):
    out = []
    fx.node.map_aggregate((args, kwargs), lambda a: out.append(a) or a)
    return out
