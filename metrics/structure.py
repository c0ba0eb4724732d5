"""Structure of a network for channel pruning: producers, units, mask points and weight counts.

``analyze(model, example_input)`` traces the model with torch.fx once and returns a
``Structure``. Its counting methods take a boolean ``keep`` tensor ``[..., num_units]`` (True =
unit kept) and are vectorised over the leading dimensions, so K trajectories cost one call.
See docs/structure.md.

The modules of the analysis import each other in one direction only:
``_types`` (Layer, Unit, Structure, StructureError) <- ``_fx_rules`` (channel rules, the layer
rule registry) <- ``_trace`` (the fx walk, union-find) <- this module (``analyze``: units, mask
points). ``Layer``, ``Unit``, ``Structure`` and ``StructureError`` are re-exported from here.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from prunetax.metrics._fx_rules import FIXED, is_activation, is_batchnorm
from prunetax.metrics._trace import Walk, trace
from prunetax.metrics._types import Layer, Structure, StructureError, Unit

__all__ = ["Layer", "Unit", "Structure", "StructureError", "analyze"]


def analyze(model: nn.Module, example_input: torch.Tensor) -> Structure:
    """Trace ``model`` on ``example_input`` ([B, C, H, W]) and find its producers and units."""
    gm = trace(model)
    walk = Walk(gm, example_input)
    uf = walk.uf
    # units, numbered in topological order of their first member channel
    unit_of_root: dict[int, int] = {}
    for L in walk.layers:
        for r in uf.roots(L["out_ids"]).tolist():
            if r != FIXED and r not in unit_of_root:
                unit_of_root[r] = len(unit_of_root)

    def units(ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([unit_of_root.get(r, -1) for r in uf.roots(ids).tolist()], dtype=torch.long)

    modules = dict(gm.named_modules())
    chain_nodes: set[fx.Node] = set()
    layers: dict[str, Layer] = {}
    for L in walk.layers:
        out_u, in_u = units(L["out_ids"]), units(L["in_ids"])
        bn, point = None, None
        if bool((out_u >= 0).any()):
            point, bn, chain = _mask_point(L["node"], modules)
            chain_nodes.update(chain)
        layers[L["name"]] = Layer(L["name"], L["kind"], len(out_u), len(in_u), L["groups"], L["kernel"],
                                  L["out_spatial"], out_u, in_u, bn, point)
    members = [[] for _ in unit_of_root]
    consumers = [[] for _ in unit_of_root]
    for name, L in layers.items():
        for c, u in enumerate(L.out_units.tolist()):
            if u >= 0:
                members[u].append((name, c))
        for c, u in enumerate(L.in_units.tolist()):
            if u >= 0:
                consumers[u].append((name, c))
    unit_list = [Unit(i, tuple(m), tuple(c)) for i, (m, c) in enumerate(zip(members, consumers))]
    node_units, remask = {}, []
    producer_nodes = {L["node"] for L in walk.layers}
    for node, ch in walk.info.items():
        if ch is None:
            continue
        u = units(ch.ids)
        node_units[node.name] = (u, ch.kernel)
        if (not walk.zero_preserving.get(node, True) and node not in chain_nodes
                and node not in producer_nodes and bool((u >= 0).any())):
            remask.append(node.name)
    params = sum(p.numel() for p in model.parameters())
    return Structure(layers, unit_list, params, example_input.shape[1:], node_units, remask, walk.pads, walk.custom)


def _mask_point(node: fx.Node, modules):
    """Follow a producer through its own BatchNorm and activation; returns (node name, bn, nodes up to it)."""
    chain = []
    bn = None
    cur = node
    steps = [is_batchnorm, is_activation]
    for step in steps:
        users = list(cur.users)
        if len(users) != 1:
            break
        u = users[0]
        mod = modules.get(u.target) if u.op == "call_module" else None
        if u.args[:1] != (cur,) or not step(u, mod):
            continue
        chain.append(cur)
        cur = u
        if step is is_batchnorm:
            bn = u.target
    return cur.name, bn, chain + [cur]
