"""Baseline training, the public face: ``train_baseline`` and ``load_baseline``, and the names
users import from here.

``train_baseline(model, dataset, seed, epochs, env)`` returns the trained network, from the cache
when it is there (``Baseline.resolve(...).get(env)``); ``load_baseline`` only reads the cache
(``.cached(env)``). The parts live one concept per module and are re-exported here: the recipe
(``prunetax.benchmarks.recipes``), the baseline and its cache (``prunetax.benchmarks.baseline``),
the SGD loop and ``evaluate`` (``prunetax.benchmarks.sgd``), the device and cache root
(``prunetax.benchmarks.env``).
"""
from __future__ import annotations

import functools
import warnings

from prunetax.benchmarks.baseline import (  # noqa: F401  (re-exported: the cache API's old home)
    Baseline, BaselineError, cache_key, recipe_for)
from prunetax.benchmarks.data import Dataset
from prunetax.benchmarks.env import Env, default_cache_dir, resolve_device  # noqa: F401  (re-exported)
from prunetax.benchmarks.recipes import (  # noqa: F401  (re-exported: the recipe API's old home)
    DEFAULT_RECIPE, FALLBACK_EPOCHS, Recipe, check_recipe_fields)
from prunetax.benchmarks.sgd import deterministic, evaluate, fit  # noqa: F401  (re-exported)

__all__ = ["Recipe", "recipe_for", "train_baseline", "load_baseline", "evaluate", "fit", "deterministic",
           "default_cache_dir", "cache_key", "resolve_device", "DEFAULT_RECIPE", "FALLBACK_EPOCHS",
           "check_recipe_fields"]


_ENV_KEYWORDS = ("device", "cache_dir", "data_root", "download")


def _env_arguments(*positional_tail: str):
    """Decorator: ``fn(model_name, dataset, seed, epochs, env, *, ...)`` also accepts its arguments
    from before ``env``, each with a DeprecationWarning: the keywords ``device``, ``cache_dir``,
    ``data_root`` and ``download`` (folded into ``env``, as ``Env.of`` does), a device in ``env``'s
    place (the old fifth argument), and positional arguments after the fifth, in their old order
    ``positional_tail``."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if len(args) > 5 + len(positional_tail):
                raise TypeError(f"{fn.__name__}() takes at most {5 + len(positional_tail)} positional arguments "
                                f"({len(args)} given)")
            moved = dict(zip(positional_tail, args[5:]))
            clash = sorted(set(moved) & set(kwargs))
            if clash:
                raise TypeError(f"{fn.__name__}() got multiple values for argument '{clash[0]}'")
            kwargs.update(moved)
            env = args[4] if len(args) > 4 else kwargs.pop("env", None)
            folded = {k: kwargs.pop(k) for k in _ENV_KEYWORDS if k in kwargs}
            old = [*moved, *folded] + (["a device as env"] if not isinstance(env, (Env, type(None))) else [])
            if old:
                warnings.warn(f"{fn.__name__}: {', '.join(old)} {'is' if len(old) == 1 else 'are'} deprecated; "
                              f"pass env=Env(device, cache_dir, data_root, download) and the other arguments by "
                              f"keyword", DeprecationWarning, stacklevel=2)
            return fn(*args[:4], env=Env.of(env, **folded), **kwargs)
        return wrapper
    return deco


@_env_arguments("cache_dir", "data_root", "progress", "recipe", "limit", "download")
def train_baseline(model_name: str, dataset: str | Dataset, seed: int, epochs: int | None = None,
                   env: Env | None = None, *, progress: bool | str = True, recipe: Recipe | None = None,
                   limit: int | None = None):
    """The trained baseline ``(model, info)``: from the cache, else trained, cached and returned
    (``Baseline.resolve(model_name, dataset, seed, epochs, recipe, limit).get(env, ...)``).

    ``dataset`` is a name or an already loaded :class:`Dataset` (split as the recipe says).
    ``env``: where it runs and what it reads (``prunetax.benchmarks.setup.Env``; None: the
    defaults). ``limit`` trains on the first ``limit`` training images only (part of the cache
    key). ``progress``: as ``Baseline.get``'s. The keywords ``device``, ``cache_dir``,
    ``data_root`` and ``download`` are still accepted (deprecated: they fill ``env``).
    """
    data = dataset if isinstance(dataset, Dataset) else None
    return Baseline.resolve(model_name, dataset, seed, epochs, recipe, limit).get(env, data, progress=progress)


@_env_arguments("cache_dir", "recipe", "limit")
def load_baseline(model_name: str, dataset: str | Dataset, seed: int, epochs: int | None = None,
                  env: Env | None = None, *, recipe: Recipe | None = None, limit: int | None = None):
    """The cached baseline ``(model, info)`` in eval mode on ``env``'s device, or None when not
    cached (``Baseline.resolve(model_name, dataset, seed, epochs, recipe, limit).cached(env, ...)``).

    ``info["digest"]`` is the sha256 (hex) of the model.pt bytes read here. An entry whose
    info.json records another digest (two unlocked writers interleaved) counts as not cached.
    The keywords ``device`` and ``cache_dir`` are still accepted (deprecated: they fill ``env``).
    """
    data = dataset if isinstance(dataset, Dataset) else None
    return Baseline.resolve(model_name, dataset, seed, epochs, recipe, limit).cached(env, data)
