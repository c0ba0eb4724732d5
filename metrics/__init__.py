"""HOW a metric is computed on a network: structure (units), masking, signals, kernels, the engine.

Imports are lazy so that ``import prunetax.metrics`` stays fast: names load on first use.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "analyze": "prunetax.metrics.structure",
    "Structure": "prunetax.metrics.structure",
    "StructureError": "prunetax.metrics.structure",
    "Layer": "prunetax.metrics.structure",
    "Unit": "prunetax.metrics.structure",
    "MaskedModel": "prunetax.metrics.masking",
    "slim": "prunetax.metrics.masking",
    "register_layer_rule": "prunetax.metrics._fx_rules",
    "unregister_layer_rule": "prunetax.metrics._fx_rules",
    "saliencies": "prunetax.metrics.saliency",
    "SaliencyResult": "prunetax.metrics.saliency",
    "lm_curvature": "prunetax.metrics.curvature",
    # the engine's one verb and the state it owns
    "evaluate_metrics": "prunetax.metrics.engine",
    "MetricEvaluator": "prunetax.metrics.engine",
    "MetricValues": "prunetax.metrics.engine",
    "check_metrics": "prunetax.metrics.engine",
    # one registry per computing axis (docs/metrics.md), and their removal (plug-ins, tests)
    "register_base_input": "prunetax.metrics.kernels",
    "register_pointwise": "prunetax.metrics.kernels",
    "register_reduction": "prunetax.metrics.kernels",
    "register_aggregation": "prunetax.metrics.kernels",
    "register_structure": "prunetax.metrics.kernels",
    "register_scaling": "prunetax.metrics.kernels",
    "unregister_kernel": "prunetax.metrics.kernels",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metrics' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
