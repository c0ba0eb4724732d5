"""prunetax: a taxonomy of channel-pruning saliency metrics, built to be run.

The four parts live in folders at the repository's top level and install as sub-packages:

- ``prunetax.taxonomy``: WHAT a metric is (components, ``MetricSpec``, expressions); imports nothing
  of the project and no torch.
- ``prunetax.enumerate``: the metric SPACE (presets, filters, counts); depends on taxonomy only.
- ``prunetax.metrics``: HOW a metric is computed on a network (structure, masking, the engine).
- ``prunetax.benchmarks``: the harness (zoo, data, training, protocol, grids, leaderboards, CLI).

The public API below loads on first use, so ``import prunetax`` stays fast (no torch import).
"""
from __future__ import annotations

import importlib

from prunetax.benchmarks._version import __version__  # one version: it enters the cache keys

_LAZY = {
    # what a metric is
    "MetricSpec": "prunetax.taxonomy", "MetricExpr": "prunetax.taxonomy", "parse_metric": "prunetax.taxonomy",
    "register_component": "prunetax.taxonomy", "unregister_component": "prunetax.taxonomy",
    "register_named": "prunetax.taxonomy",
    "PrunetaxError": "prunetax.taxonomy", "SpecError": "prunetax.taxonomy",
    # the space
    "metric_space": "prunetax.enumerate",
    # computing metrics
    "analyze": "prunetax.metrics", "saliencies": "prunetax.metrics", "evaluate_metrics": "prunetax.metrics",
    "MaskedModel": "prunetax.metrics", "register_layer_rule": "prunetax.metrics",
    "unregister_layer_rule": "prunetax.metrics", "register_pointwise": "prunetax.metrics",
    "register_reduction": "prunetax.metrics", "register_scaling": "prunetax.metrics",
    "register_structure": "prunetax.metrics", "register_aggregation": "prunetax.metrics",
    "unregister_kernel": "prunetax.metrics", "register_base_input": "prunetax.metrics",
    # the harness
    "BaselineError": "prunetax.benchmarks.baseline",
    "run_cell": "prunetax.benchmarks", "run_grid": "prunetax.benchmarks", "leaderboard": "prunetax.benchmarks",
    "run": "prunetax.benchmarks",                 # deprecated: run_cell (and write_cell_result)
    "register_model": "prunetax.benchmarks.models",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prunetax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
