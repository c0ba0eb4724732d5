"""WHAT a metric is: component vocabularies, MetricSpec, ids, expressions, named metrics. No torch."""
from prunetax.taxonomy.vocab import AXES, Component, components, get, ids, register_component, unregister_component
from prunetax.taxonomy.errors import PrunetaxError, SpecError, moved_baseline_error
from prunetax.taxonomy.expr import NAMED, MetricExpr, NamedMetric, Term, parse_metric, register_named
from prunetax.taxonomy.spec import MetricSpec, validity_problem

__all__ = [
    "AXES", "Component", "components", "get", "ids", "register_component", "unregister_component",
    "PrunetaxError", "SpecError",
    "NAMED", "MetricExpr", "NamedMetric", "Term", "parse_metric", "register_named",
    "MetricSpec", "validity_problem",
]


def __getattr__(name: str):
    if name == "BaselineError":  # moved to prunetax.benchmarks.baseline: imported from there on demand
        return moved_baseline_error(__name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
