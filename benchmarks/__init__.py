"""The harness: model zoo, data, baseline training, pruning protocol, grid runner, leaderboards."""
from prunetax.benchmarks._version import __version__

# Public entry points, imported on first use so that ``import benchmarks`` stays light.
_LAZY = {"run": "prunetax.benchmarks.grid", "run_grid": "prunetax.benchmarks.grid", "leaderboard": "prunetax.benchmarks.results"}
__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
