"""Training recipes: the ``Recipe`` value and its checks. It imports nothing of the harness, so
the model zoo (``models.register_model(..., recipe=...)``) checks a recipe at registration;
the recipe of a model on a data set is ``prunetax.benchmarks.baseline.recipe_for``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["Recipe", "DEFAULT_RECIPE", "FALLBACK_EPOCHS", "KEYED_WHEN_SET", "check_recipe_fields"]

# Each zoo model declares its recipe where it is registered (``register_model(..., recipe=...)``
# in models.py); a model registered without one trains with DEFAULT_RECIPE: FALLBACK_EPOCHS
# epochs and the Recipe's defaults (lr 0.05, weight decay 5e-4, ...), and training says so.
FALLBACK_EPOCHS = 30
DEFAULT_RECIPE = MappingProxyType({"epochs": FALLBACK_EPOCHS})


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights besides the model, data set and seed."""
    epochs: int
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"  # per-iteration cosine decay from lr to 0
    augment: bool = False  # random crop (pad 4) and horizontal flip
    eval_size: int = 5000  # training images held out as the evaluation split
    split_seed: int = 0  # seed of that split (the same for every training seed)
    limit: int | None = None  # train on the first `limit` images of the training split only (tests)
    pad_to: int | None = 32  # smaller images zero-padded to this size (load_dataset's pad_to; None: never)
    clip_grad_norm: float | None = None  # clip the gradient's global L2 norm to this before each step (None: never)


# Fields added to Recipe after version 0.1.0, with the value that trains exactly as before they
# existed: cache_key leaves such a field out while it has that value, so the keys (and cached
# baselines) of recipes that do not use it stay what they were.
KEYED_WHEN_SET = MappingProxyType({"clip_grad_norm": None})


def checked_recipe(fields: dict, where: str) -> Recipe:
    """``Recipe(**fields)``, or a one-line error for unknown fields or bad values."""
    names = [f.name for f in dataclasses.fields(Recipe)]
    unknown = set(fields) - set(names)
    if unknown:
        raise PrunetaxError(f"{where}unknown recipe field(s) {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
    epochs = fields.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise PrunetaxError(f"{where}epochs must be a positive integer, got {epochs!r}")
    recipe = Recipe(**fields)
    for name in ("limit", "pad_to"):
        value = getattr(recipe, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PrunetaxError(f"{where}{name} must be a positive integer or None, got {value!r}")
    if recipe.schedule not in ("cosine", "constant"):
        raise PrunetaxError(f"{where}unknown schedule '{recipe.schedule}'; choose one of cosine, constant")
    clip = recipe.clip_grad_norm
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip < math.inf):
        raise PrunetaxError(f"{where}clip_grad_norm must be a positive number or None, got {clip!r}")
    if clip is not None:
        recipe = dataclasses.replace(recipe, clip_grad_norm=float(clip))  # 5 and 5.0: one cache key
    return recipe


def check_recipe_fields(fields: Mapping[str, Any], owner: str = "recipe") -> dict:
    """A model's declared recipe (``register_model(..., recipe=fields)``) as a plain dict, after
    checking that it names Recipe fields only, with valid values; ``owner`` heads the error."""
    if not isinstance(fields, Mapping):
        raise PrunetaxError(f"{owner}: recipe must be a dict of Recipe fields, got {type(fields).__name__}")
    fields = dict(fields)
    checked_recipe({**DEFAULT_RECIPE, **fields}, f"{owner}: ")
    return fields
