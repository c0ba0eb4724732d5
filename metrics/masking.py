"""Masking that equals removal, and the physical removal itself.

``MaskedModel`` runs a traced copy of the network with a mask multiply at every mask point
(and after every op past a mask point that does not keep zeros zero, such as a BatchNorm after a
concatenation). One forward serves K trajectories: rows ``k*B:(k+1)*B`` of the input use mask
row k. ``slim`` deletes the removed channels and returns a smaller network that computes the
same function as the masked one.
"""
from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from prunetax.metrics._trace import trace
from prunetax.metrics._types import Structure, StructureError
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["MaskedModel", "slim"]


class _State:
    """Shared by the inserted modules: current masks and what the forward records."""

    def __init__(self):
        self.keep: torch.Tensor | None = None  # float [K, U+1], last column 1 (channels outside units)
        self.record = False
        self.taps: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}


def _leaf(x: torch.Tensor) -> torch.Tensor:
    """A tensor autograd can differentiate with respect to, even when nothing before it needs grad."""
    if torch.is_grad_enabled() and not x.requires_grad:
        return x.detach().requires_grad_()
    return x


class MaskPoint(nn.Module):
    """Inserted at a mask point: multiplies each trajectory's rows by its keep mask (per channel)
    and, while recording, keeps the masked tensor as the tap of producer ``tap`` (None for a
    re-mask after an op that does not keep zeros zero)."""

    def __init__(self, state: _State, index: torch.Tensor, tap: str | None):
        super().__init__()
        self.__dict__["state"] = state  # not a submodule, not copied into the state_dict
        self.tap = tap
        self.register_buffer("index", index, persistent=False)

    def forward(self, x):
        st = self.state
        if st.keep is not None:
            m = st.keep.index_select(1, self.index).to(x.dtype)  # [K, C]
            K, n = m.shape[0], x.shape[0]
            x = (x.reshape(K, n // K, *x.shape[1:]) * m.view(K, 1, -1, *([1] * (x.dim() - 2)))).reshape(x.shape)
        if self.tap is not None and st.record:
            x = _leaf(x)
            st.taps[self.tap] = x
        return x


class LayerInput(nn.Module):
    """Inserted before a layer: while recording, keeps the layer's input (``[N, C, spatial]`` for
    a linear layer after a flatten); the identity otherwise."""

    def __init__(self, state: _State, layer: str, channels: int, kernel: int):
        super().__init__()
        self.__dict__["state"] = state
        self.layer, self.channels, self.kernel = layer, channels, kernel

    def forward(self, x):
        st = self.state
        if not st.record:
            return x
        if self.kernel > 1:  # a linear after a flatten: expose [N, C, spatial]
            y = _leaf(x.reshape(x.shape[0], self.channels, self.kernel))
            st.inputs[self.layer] = y
            return y.reshape(x.shape[0], -1)
        x = _leaf(x)
        st.inputs[self.layer] = x
        return x


class MaskedModel(nn.Module):
    """``model`` with a channel mask at every mask point; see the module docstring.

    ``set_keep(keep)``: bool ``[K, num_units]`` (or ``[num_units]``), None for no masking.
    With ``record = True`` a forward fills ``taps`` (producer -> masked mask-point tensor) and
    ``inputs`` (layer -> its input, ``[N, C, spatial]`` for a linear after a flatten), both part
    of the autograd graph. The wrapped model's parameters are shared, not copied.
    """

    def __init__(self, model: nn.Module, structure: Structure):
        super().__init__()
        self.structure = structure
        self._state = _State()
        gm = trace(model)
        _no_inplace(gm)  # taps must keep their values: `out += x` or ReLU(inplace) would overwrite them
        nodes = {n.name: n for n in gm.graph.nodes}
        U = structure.num_units

        def node(name):
            if name not in nodes:
                raise StructureError(f"fx node '{name}' of the structure is not in the model; analyse this model")
            return nodes[name]

        def insert_after(n, module_name, module):
            gm.add_submodule(module_name, module)
            with gm.graph.inserting_after(n):
                new = gm.graph.call_module(module_name, (n,))
            n.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)

        def index(name):
            units, kernel = self.structure.node_units[name]
            return (units % (U + 1)).repeat_interleave(kernel)

        for i, name in enumerate(structure.producers):
            point = structure.layers[name].mask_point
            insert_after(node(point), f"_prunetax_mask_{i}", MaskPoint(self._state, index(point), name))
        for i, name in enumerate(structure.remask):
            insert_after(node(name), f"_prunetax_remask_{i}", MaskPoint(self._state, index(name), None))
        for i, (name, L) in enumerate(structure.layers.items()):
            layer_node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == name)
            gm.add_submodule(f"_prunetax_input_{i}", LayerInput(self._state, name, L.in_channels, L.kernel if L.kind == "linear" else 1))
            with gm.graph.inserting_before(layer_node):
                rec = gm.graph.call_module(f"_prunetax_input_{i}", (layer_node.args[0],))
            layer_node.args = (rec,) + tuple(layer_node.args[1:])
        gm.graph.lint()
        gm.recompile()
        self.graph_module: fx.GraphModule = gm

    @property
    def record(self) -> bool:
        return self._state.record

    @record.setter
    def record(self, value: bool) -> None:
        self._state.record = bool(value)

    @property
    def taps(self) -> dict[str, torch.Tensor]:
        return self._state.taps

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self._state.inputs

    @property
    def num_trajectories(self) -> int:
        return 1 if self._state.keep is None else self._state.keep.shape[0]

    def set_keep(self, keep: torch.Tensor | None) -> None:
        if keep is None:
            self._state.keep = None
            return
        keep = torch.as_tensor(keep)
        if keep.dim() == 1:
            keep = keep[None]
        U = self.structure.num_units
        if keep.dim() != 2 or keep.shape[1] != U:
            raise PrunetaxError(f"keep must have shape [K, {U}], got {tuple(keep.shape)}")
        device = next((b.device for b in self.graph_module.buffers()), keep.device)
        keep = keep.to(device=device, dtype=torch.float32)
        self._state.keep = torch.cat([keep, keep.new_ones(len(keep), 1)], 1)

    def forward(self, x):
        K = self.num_trajectories
        if x.shape[0] % K:
            raise PrunetaxError(f"batch of {x.shape[0]} rows does not split into {K} trajectories")
        if self._state.record:
            self._state.taps, self._state.inputs = {}, {}
        return self.graph_module(x)


_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                 operator.itruediv: operator.truediv}


def _no_inplace(gm: fx.GraphModule) -> None:
    """Rewrite in-place ops of the traced copy as out-of-place ones (the model itself is untouched)."""
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op == "call_function" and node.target in _OUT_OF_PLACE:
            node.target = _OUT_OF_PLACE[node.target]
        elif node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_"):
            if node.target in ("add_", "sub_", "mul_", "div_", "relu_", "sigmoid_", "tanh_", "clamp_"):
                node.target = node.target[:-1]
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if getattr(m, "inplace", False) is True and not any(True for _ in m.parameters(recurse=False)):
                m = copy.copy(m)
                m.inplace = False
                gm.add_submodule(f"_prunetax_out_of_place_{i}", m)
                node.target = f"_prunetax_out_of_place_{i}"
    gm.recompile()


def slim(model: nn.Module, structure: Structure, keep: torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` (as an fx GraphModule) with the units where ``keep`` is False deleted."""
    keep = torch.as_tensor(keep, dtype=torch.bool).flatten().cpu()
    U = structure.num_units
    if keep.numel() != U:
        raise PrunetaxError(f"keep must have {U} entries, got {keep.numel()}")
    kext = torch.cat([keep, torch.ones(1, dtype=torch.bool)])

    def kept(units: torch.Tensor) -> torch.Tensor:
        return kext[units % (U + 1)]

    gm = trace(copy.deepcopy(model))
    with torch.no_grad():
        for name, L in structure.layers.items():
            _set_module(gm, name, _slim_layer(gm.get_submodule(name), L, kept(L.out_units), kept(L.in_units)))
        for node in gm.graph.nodes:
            if node.op == "call_module":
                m = gm.get_submodule(node.target)
                rule = structure.custom.get(node.name)
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    _set_module(gm, node.target, _slim_bn(m, kept(structure.node_units[node.name][0])))
                elif rule is not None:
                    units, kernel = structure.node_units[node.args[0].name]
                    keep_in = kept(units).repeat_interleave(kernel)
                    if rule.slim is not None:
                        _set_module(gm, node.target, rule.slim(m, keep_in))
                    elif not bool(keep_in.all()):
                        _check_no_channel_state(node, m, len(keep_in))
            if node.name in structure.pads:
                front, back = structure.pads[node.name]
                units = kept(structure.node_units[node.name][0])
                new_front, new_back = int(units[:front].sum()), int(units[len(units) - back:].sum())
                _set_pad(node, new_front, new_back)
    gm.recompile()
    return gm


def _check_no_channel_state(node: fx.Node, m: nn.Module, channels: int) -> None:
    """A registered module without a ``slim`` face is kept as it is; refuse it when it holds a
    per-channel tensor (one of ``channels`` entries once size-1 dims are dropped), which would no
    longer match its smaller input."""
    for name, t in [*m.named_parameters(), *m.named_buffers()]:
        if t is not None and tuple(d for d in t.shape if d != 1) == (channels,):
            raise StructureError(
                f"cannot slim node '{node.name}' ({type(m).__name__}): it holds per-channel state ({name}: "
                f"{list(t.shape)}) and its layer rule has no 'slim' face; register it with "
                f"register_layer_rule({type(m).__name__}, ..., slim=fn(module, keep_in) -> smaller module)")


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _where(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().flatten()


def _slim_layer(m: nn.Module, L, ko: torch.Tensor, ki: torch.Tensor) -> nn.Module:
    w = m.weight.index_select(0, _where(ko).to(m.weight.device))
    if L.kind == "linear":
        new = torch.nn.utils.skip_init(nn.Linear, int(ki.sum()) * L.kernel, int(ko.sum()), m.bias is not None,
                                       device=w.device, dtype=w.dtype)
        new.weight.copy_(w.index_select(1, _where(ki.repeat_interleave(L.kernel)).to(w.device)))
    else:
        G = m.groups
        ipg = m.in_channels // G
        if G > 1 and ipg == 1:  # depthwise: whole groups go
            groups = int(ki.sum())
        else:
            per_group = ki.view(G, ipg)
            if not bool((per_group == per_group[0]).all()):
                raise StructureError(f"layer '{L.name}': removing these units would unbalance its {G} groups")
            groups, w = G, w.index_select(1, _where(per_group[0]).to(w.device))
        new = torch.nn.utils.skip_init(type(m), int(ki.sum()), int(ko.sum()), m.kernel_size, m.stride, m.padding,
                                       m.dilation, groups, m.bias is not None, m.padding_mode,
                                       device=w.device, dtype=w.dtype)
        new.weight.copy_(w)
    if m.bias is not None:
        new.bias.copy_(m.bias.index_select(0, _where(ko).to(w.device)))
    new.train(m.training)
    return new


def _slim_bn(m: nn.modules.batchnorm._BatchNorm, k: torch.Tensor) -> nn.Module:
    new = copy.deepcopy(m)
    new.num_features = int(k.sum())
    for name, p in list(m.named_parameters(recurse=False)):
        idx = _where(k).to(p.device)
        setattr(new, name, nn.Parameter(p.detach().index_select(0, idx), requires_grad=p.requires_grad))
    for name, b in list(m.named_buffers(recurse=False)):
        if b is not None and b.dim() == 1 and b.numel() == len(k):
            setattr(new, name, b.index_select(0, _where(k).to(b.device)))
    return new


def _set_pad(node: fx.Node, front: int, back: int) -> None:
    if len(node.args) > 1:
        pad = list(node.args[1])
    else:
        pad = list(node.kwargs["pad"])
    n = len(pad)
    pad[n - 2], pad[n - 1] = front, back
    if len(node.args) > 1:
        node.args = (node.args[0], tuple(pad)) + tuple(node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "pad": tuple(pad)}
