"""The model and data set names the commands accept, kept apart from the modules that build them.

Torch-free, so that a command answers an unknown name at once, before it imports torch (a grid
checks its networks and data sets here first: ``prunetax.benchmarks.grid.config.grid_cells``).

- Models: the zoo's names (``ZOO_MODELS``, whose builders ``prunetax.benchmarks.models``
  registers), and every name registered since: ``register_model`` adds its name here,
  ``unregister_model`` removes it. A plug-in (``--import``, an entry point) registers through
  ``register_model``, so its names are here once ``load_plugins`` has imported it.
- Data sets: the built-in ones with their image channels (``BUILTIN_DATASETS``, whose loaders
  ``prunetax.benchmarks.data`` registers), then every ``register_dataset``'s; ``imagefolder:PATH``
  is accepted as well.

``check_model`` and ``check_dataset`` raise the one-line error for an unknown name, the same
one ``models.create_model`` and ``data.load_dataset`` raise. tests/test_models.py and
tests/test_data.py check that these lists equal what the building modules register.
"""
from __future__ import annotations

import difflib

from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["ZOO_MODELS", "BUILTIN_DATASETS", "IMAGEFOLDER", "DataError", "add_model", "remove_model",
           "model_names", "unknown_model", "check_model", "add_dataset", "dataset_names", "check_dataset"]

ZOO_MODELS = ("lenet5", "cifar10_quick", "nin", "alexnet_cifar", "resnet20", "resnet56", "resnet20_a",
              "resnet56_a", "vgg16_bn", "mobilenetv2", "densenet40", "tv_resnet18", "tv_resnet50",
              "tv_mobilenet_v2", "tv_densenet121", "tv_vgg16_bn")
BUILTIN_DATASETS = {"mnist": 1, "fashion-mnist": 1, "cifar10": 3, "cifar100": 3}   # name: image channels
IMAGEFOLDER = "imagefolder:"   # imagefolder:PATH, colour images in PATH/train/<class>/, PATH/test/<class>/

_models: set[str] = set(ZOO_MODELS)
_datasets: dict[str, int] = dict(BUILTIN_DATASETS)


class DataError(PrunetaxError):
    """A data set that is unknown, missing or malformed."""


def add_model(name: str) -> None:
    """Make ``name`` a known model name (``register_model`` calls this)."""
    _models.add(name)


def remove_model(name: str) -> None:
    """Forget the model name ``name`` (``unregister_model`` calls this)."""
    _models.discard(name)


def model_names() -> list[str]:
    """The known model names, sorted."""
    return sorted(_models)


def unknown_model(name: str, known) -> PrunetaxError:
    """The one-line error for the unknown model ``name``, among the names ``known``: the close
    ones, or all of them."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(sorted(known))}"
    return PrunetaxError(f"unknown model '{name}'; {hint}")


def check_model(name: str) -> None:
    """A known model name, else the one-line error naming the close ones (or all)."""
    if name not in _models:
        raise unknown_model(name, _models)


def add_dataset(name: str, channels: int) -> None:
    """Make ``name`` a known data set of ``channels`` image channels (``register_dataset`` calls this)."""
    _datasets[name] = channels


def dataset_names() -> list[str]:
    """The known data set names, in the order they were registered (the built-in ones first);
    ``imagefolder:PATH`` is accepted as well."""
    return list(_datasets)


def check_dataset(name: str) -> int:
    """The image channels of data set ``name`` (3 for ``imagefolder:PATH``), known without
    loading it; a DataError naming the known ones for an unknown name."""
    if name.startswith(IMAGEFOLDER):
        return 3
    if name not in _datasets:
        raise DataError(f"unknown data set '{name}'; choose one of {', '.join(_datasets)}, imagefolder:PATH")
    return _datasets[name]
