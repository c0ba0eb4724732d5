"""The one error family users see: a one-line message naming what is wrong and what would be right."""


class PrunetaxError(ValueError):
    """Bad input from a user (unknown name, malformed file, unsupported layer, ...).

    The CLI prints ``str(error)`` on one line and exits with code 2.
    """


class SpecError(PrunetaxError):
    """A metric id, component name or metric expression that does not parse."""


def moved_baseline_error(module: str):
    """``BaselineError``, asked for from ``module``, its home before it moved to the harness
    (``prunetax.benchmarks.baseline``): imported from there on demand (taxonomy imports nothing
    of the harness at import time), with a DeprecationWarning."""
    import warnings
    warnings.warn(f"{module}.BaselineError moved to prunetax.benchmarks.baseline.BaselineError; import it "
                  f"from there (or as prunetax.BaselineError)", DeprecationWarning, stacklevel=3)
    from prunetax.benchmarks.errors import BaselineError
    return BaselineError


def __getattr__(name: str):
    if name == "BaselineError":
        return moved_baseline_error(__name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
