"""Planning: which specs, which signals and which sites a set of metrics needs on a network.

One job, done once per evaluation before any image is seen: parse the metrics, list their leaf
specs, check every component has a registered kernel, decide which signals the pass must
collect (``Needs``), which sites (layer x base input x pointwise x aggregation, as producer or
consumer) must be accumulated with which reductions, and which of those sites share the fast
path (``prunetax.metrics.kernels.fast_path``: decided from the registry, never by name).
"""
from __future__ import annotations

from prunetax.metrics.engine.sites import BN_INPUTS
from prunetax.metrics.kernels import fast_path, registered
from prunetax.metrics.signals import Needs
from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.expr import MetricExpr, parse_metric
from prunetax.taxonomy.spec import MetricSpec


def as_metrics(specs) -> list[MetricSpec | MetricExpr]:
    """Ids, MetricSpec or MetricExpr objects (one or many) as a list of metric objects."""
    out = []
    for s in ([specs] if isinstance(specs, (str, MetricSpec, MetricExpr)) else specs):
        out.append(parse_metric(s) if isinstance(s, str) else s)
    if not out:
        raise PrunetaxError("no metrics given")
    return out


def leaf_specs(metrics) -> list[MetricSpec]:
    """Every spec the metrics read (an expression's specs included), once each, in order."""
    seen: dict[MetricSpec, None] = {}
    for m in metrics:
        for s in (m.specs if isinstance(m, MetricExpr) else (m,)):
            seen.setdefault(s, None)
    return list(seen)


def stat_key(spec: MetricSpec) -> tuple:
    """(base input, pointwise, aggregation, reduction): specs with the same key share their
    aggregated per-channel saliency; they differ only in structure and scaling."""
    return (spec.base_input, spec.pointwise, spec.aggregation, spec.reduction)


def plan(structure, specs: list[MetricSpec]) -> Needs:
    """Which signals the specs need on this network (raises for a component without a kernel)."""
    needs = Needs()
    producers = structure.producers
    conv_consumers = structure.conv_consumers
    for s in specs:
        pw = registered("pointwise", s.pointwise)
        for axis in ("reduction", "aggregation", "scaling"):
            registered(axis, getattr(s, axis))
        reads_consumers = registered("structure", s.structure).consumers
        needs.grad |= "g" in pw.needs
        needs.lm |= "h" in pw.needs
        if s.base_input == "activation":
            needs.act.update(producers)
            if reads_consumers:
                needs.act_in.update(conv_consumers)
        elif s.base_input == "weight":
            if pw.needs:
                needs.weight.update(producers)
                if reads_consumers:
                    needs.weight.update(conv_consumers)
        elif s.base_input in BN_INPUTS:
            missing = [p for p in producers if structure.layers[p].bn is None]
            if missing:
                raise PrunetaxError(f"metric {s} reads BatchNorm parameters but producer '{missing[0]}' has no "
                                    "BatchNorm of its own; use a weight or activation metric on this network")
            needs.bn.update(producers)
        else:
            raise PrunetaxError(f"no engine support for base input {s.base_input!r}")
    return needs


def needs_images(needs: Needs) -> bool:
    """Whether any signal of an image pass is read (weight values alone need none)."""
    return bool(needs.act or needs.act_in or needs.weight or needs.bn or needs.grad or needs.lm)


def site_keys(structure, specs: list[MetricSpec]) -> dict:
    """(layer, base, pointwise, aggregation, consumer) -> reductions needed, for every spec."""
    conv_consumers = structure.conv_consumers
    sites: dict[tuple, set] = {}
    for s in specs:
        names = [(p, False) for p in structure.producers]
        if registered("structure", s.structure).consumers:
            names += [(c, True) for c in conv_consumers]
        for name, consumer in names:
            sites.setdefault((name, s.base_input, s.pointwise, s.aggregation, consumer), set()).add(s.reduction)
    return sites


def fast_groups(sites: dict) -> dict:
    """(layer, base) -> {consumer: {(pointwise, aggregation): reductions}} of the sites on the
    shared fast path (``prunetax.metrics.kernels.fast_path``)."""
    groups: dict = {}
    for (name, base, pw, agg, consumer), reductions in sites.items():
        if fast_path(pw, agg, reductions):
            groups.setdefault((name, base), {}).setdefault(consumer, {})[(pw, agg)] = set(reductions)
    return groups
