"""Planning: which specs, which signals and which sites a set of metrics needs on a network.

One job, done once per evaluation before any image is seen: parse the metrics, list their leaf
specs, check every component has a registered kernel, decide which signals the pass must
collect (``Needs``), which sites (layer x base input x pointwise x aggregation, as producer or
consumer) must be accumulated with which reductions, and which of those sites share the fast
path (``prunetax.metrics.kernels.fast_path``: decided from the registry, never by name).
"""
from __future__ import annotations

from prunetax.metrics.kernels import fast_path, registered
from prunetax.metrics.signals import LAYER_SIGNALS, Needs
from prunetax.taxonomy.errors import PrunetaxError, SpecError
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
    """Which signals the specs need on this network (raises for a component without a kernel, or
    for a base input the network lacks). Each spec's base input says what it reads
    (``prunetax.metrics.kernels``, base input registry: ``signals``)."""
    needs = Needs()
    for s in specs:
        pw = registered("pointwise", s.pointwise)
        for axis in ("reduction", "aggregation", "scaling"):
            registered(axis, getattr(s, axis))
        reads_consumers = registered("structure", s.structure).consumers
        needs.grad |= "g" in pw.needs
        needs.lm |= "h" in pw.needs
        wanted = registered("base_input", s.base_input).signals(structure, s, pw.needs, reads_consumers)
        for signal, layers in wanted.items():
            if signal not in LAYER_SIGNALS:
                raise SpecError(f"base input {s.base_input!r} asks for signal {signal!r}; "
                                f"choose from {', '.join(LAYER_SIGNALS)}")
            getattr(needs, signal).update(layers)
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
