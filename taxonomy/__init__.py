"""WHAT a metric is: component vocabularies, MetricSpec, ids, expressions, named metrics. No torch."""
from prunetax.taxonomy.vocab import AXES, Component, components, get, ids, register_component, unregister_component
from prunetax.taxonomy.errors import BaselineError, PrunetaxError, SpecError
from prunetax.taxonomy.expr import NAMED, MetricExpr, NamedMetric, Term, parse_metric, register_named
from prunetax.taxonomy.spec import MetricSpec, validity_problem

__all__ = [
    "AXES", "Component", "components", "get", "ids", "register_component", "unregister_component",
    "BaselineError", "PrunetaxError", "SpecError",
    "NAMED", "MetricExpr", "NamedMetric", "Term", "parse_metric", "register_named",
    "MetricSpec", "validity_problem",
]
