"""The harness: model zoo, data, baseline training, pruning protocol, grid runner, leaderboards."""
from prunetax.benchmarks._version import __version__

# Public entry points, imported on first use so that ``import benchmarks`` stays light.
# ``run_cell`` runs one cell and ``run_grid`` a grid (the one way each); ``run`` is the deprecated
# older way to run one cell (a shim that warns and calls ``run_cell``).
_LAZY = {"run_cell": "prunetax.benchmarks.protocol", "run_grid": "prunetax.benchmarks.grid",
         "leaderboard": "prunetax.benchmarks.results", "run": "prunetax.benchmarks.grid"}
__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
