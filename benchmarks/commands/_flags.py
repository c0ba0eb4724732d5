"""Errors that name the flag the user typed, and the choices the ``--help`` texts list.

Torch-free: ``add_arguments`` of every command runs on each ``prunetax`` call, ``--help`` included.
"""
from __future__ import annotations

import contextlib

from prunetax.benchmarks.names import BUILTIN_DATASETS
from prunetax.taxonomy.errors import PrunetaxError

# the built-in data sets (benchmarks/data.py registers them; tests/test_words.py checks the list)
DATASETS = tuple(BUILTIN_DATASETS)

MODEL_HELP = ("a registered model: the zoo's (lenet5, resnet20, resnet56, vgg16_bn, mobilenetv2, densenet40, ...; "
              "'prunetax list models' lists them all) or your own (--import MODULE)")
DATASET_HELP = (f"{', '.join(DATASETS)}, imagefolder:PATH, or one registered with --import "
                "('prunetax list datasets'); default mnist, shipped with the package")


@contextlib.contextmanager
def flag(name: str, value=None):
    """Re-raise a PrunetaxError met inside as ``NAME VALUE: message`` (``NAME: message`` without
    a value), unless the message already starts with the flag."""
    try:
        yield
    except PrunetaxError as exc:
        text = str(exc)
        if text.startswith(name):
            raise
        head = name if value is None else f"{name} {value}"
        raise PrunetaxError(f"{head}: {text}") from None


def at_least(name: str, value, minimum: int) -> None:
    """``NAME VALUE: must be MINIMUM or more`` unless ``value`` is None or at least ``minimum``."""
    if value is not None and value < minimum:
        raise PrunetaxError(f"{name} {value}: must be {minimum} or more")
