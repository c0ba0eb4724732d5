"""The model zoo: a registry of fx-traceable CNNs (timm style).

``@register_model`` adds a builder ``fn(in_channels, num_classes, input_size) -> nn.Module``;
``list_models("resnet*")`` filters names with a glob; ``create_model(name, ...)`` builds one.
Torchvision models are registered lazily: they are listed even when torchvision does not
import, marked unavailable with the reason (``model_info(name).available``).
"""
from __future__ import annotations

import difflib
import fnmatch
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from taxonomy.errors import PrunetaxError

__all__ = ["register_model", "list_models", "create_model", "model_info", "ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    needs: str | None = None  # optional package the builder imports lazily

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def reason(self) -> str | None:
        """Why the model cannot be built here (None if it can)."""
        if self.needs is None:
            return None
        return _import_problem(self.needs)


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}
_IMPORT_PROBLEMS: dict[str, str | None] = {}


def _import_problem(package: str) -> str | None:
    if package not in _IMPORT_PROBLEMS:
        try:
            __import__(package)
            _IMPORT_PROBLEMS[package] = None
        except Exception as exc:  # ImportError, or a broken install raising anything else
            first = (str(exc).splitlines() or [""])[0]
            _IMPORT_PROBLEMS[package] = f"needs {package}, which does not import ({type(exc).__name__}: {first})"
    return _IMPORT_PROBLEMS[package]


def register_model(fn=None, *, name: str | None = None, needs: str | None = None):
    """Decorator: register ``fn(in_channels, num_classes, input_size) -> nn.Module`` under its name."""

    def deco(f):
        key = name or f.__name__
        if key in _REGISTRY:
            raise PrunetaxError(f"model '{key}' is already registered")
        doc = (f.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = (f, ModelInfo(key, doc[0] if doc else "", needs))
        return f

    return deco(fn) if fn is not None else deco


def list_models(pattern: str | None = None, *, available_only: bool = False) -> list[str]:
    """Registered model names (sorted), filtered by an fnmatch glob such as ``"resnet*"``."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if available_only:
        names = [n for n in names if _REGISTRY[n][1].available]
    return names


def _lookup(name: str):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(sorted(_REGISTRY))}"
        raise PrunetaxError(f"unknown model '{name}'; {hint}")
    return _REGISTRY[name]


def model_info(name: str) -> ModelInfo:
    """Description and availability of a registered model."""
    return _lookup(name)[1]


def create_model(name: str, in_channels: int = 3, num_classes: int = 10, input_size: int = 32) -> nn.Module:
    """Build the registered model ``name`` (randomly initialised, train mode)."""
    fn, info = _lookup(name)
    if info.reason is not None:
        raise PrunetaxError(f"model '{name}' is unavailable: {info.reason}")
    if in_channels < 1 or num_classes < 1 or input_size < 1:
        raise PrunetaxError(
            f"model '{name}': in_channels, num_classes and input_size must be positive "
            f"(got {in_channels}, {num_classes}, {input_size})")
    return fn(in_channels=in_channels, num_classes=num_classes, input_size=input_size)


def _conv_out(size: int, k: int, s: int = 1, p: int = 0, ceil: bool = False) -> int:
    v = (size + 2 * p - k) / s
    return (math.ceil(v) if ceil else math.floor(v)) + 1


def _check_size(name: str, size: int, minimum: int) -> None:
    if size < minimum:
        raise PrunetaxError(f"model '{name}' needs input_size >= {minimum} (got {size})")


# ---------------------------------------------------------------------------------------------
# The authors' networks (PROTOCOL.md, "Networks and baselines")

@register_model
def lenet5(in_channels=3, num_classes=10, input_size=32):
    """LeNet-5 (Caffe): conv20 5x5, maxpool 2/2, conv50 5x5, maxpool 2/2, fc500, relu, fc."""
    _check_size("lenet5", input_size, 16)
    s = (((input_size - 4) // 2) - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(50 * s * s, 500), nn.ReLU(inplace=True),
        nn.Linear(500, num_classes),
    )
