"""The one error family users see: a one-line message naming what is wrong and what would be right."""


class PrunetaxError(ValueError):
    """Bad input from a user (unknown name, malformed file, unsupported layer, ...).

    The CLI prints ``str(error)`` on one line and exits with code 2.
    """


class SpecError(PrunetaxError):
    """A metric id, component name or metric expression that does not parse."""


class BaselineError(PrunetaxError):
    """A baseline that cannot be pruned: its training diverged, or its accuracy target is not
    above chance. A grid records the cell as failed and goes on with the other cells."""
