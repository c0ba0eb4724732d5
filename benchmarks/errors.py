"""The harness's own error: ``BaselineError`` (``prunetax.taxonomy.errors`` holds the others)."""
from __future__ import annotations

from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["BaselineError"]


class BaselineError(PrunetaxError):
    """A baseline that cannot be pruned: its training diverged, or its accuracy target is not
    above chance. A grid records the cell as failed and goes on with the other cells."""
