"""WHAT a metric is: component vocabularies, MetricSpec, ids, expressions, named metrics. No torch."""
from taxonomy.vocab import AXES, Component, components, get, ids, register_component
from taxonomy.errors import PrunetaxError, SpecError
from taxonomy.expr import NAMED, MetricExpr, NamedMetric, Term, parse_metric, register_named
from taxonomy.spec import MetricSpec, validity_problem

__all__ = [
    "AXES", "Component", "components", "get", "ids", "register_component",
    "PrunetaxError", "SpecError",
    "NAMED", "MetricExpr", "NamedMetric", "Term", "parse_metric", "register_named",
    "MetricSpec", "validity_problem",
]
