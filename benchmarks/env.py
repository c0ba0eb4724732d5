"""Where cells run and what they read: ``Env``, and the two things it resolves where it is used.

``Env`` is the environment every runner threads through, from the command line down: the
device, the baseline cache, the data root and whether a missing data set may be downloaded. Its
fields are plain strings and a bool (picklable for joblib / dask / ray workers) and are resolved
where they are used (:func:`resolve_device`, :func:`default_cache_dir`), so each worker resolves
``auto`` to its own device and an unset cache to its own ``$PRUNETAX_CACHE``. A command builds its
Env from its flags (``Env.from_args``). This module imports nothing of the harness.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prunetax.taxonomy.errors import PrunetaxError

if TYPE_CHECKING:
    import torch

__all__ = ["Env", "resolve_device", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$PRUNETAX_CACHE`` or ``~/.cache/prunetax``."""
    env = os.environ.get("PRUNETAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunetax"


def resolve_device(device: "str | torch.device" = "auto") -> "torch.device":
    """``auto`` → cuda when available, else cpu; an unavailable or unknown device is an error."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunetaxError(f"unknown device '{device}'; choose one of auto, cpu, cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrunetaxError("device 'cuda' requested but CUDA is not available here; use --device cpu or auto")
    return dev


@dataclass(frozen=True)
class Env:
    """Where cells run and what they read.

    ``device``: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:1``...,
    resolved by :func:`resolve_device` where used (``torch_device``). ``cache_dir``: the
    baseline cache; None = ``$PRUNETAX_CACHE`` or ``~/.cache/prunetax``, read where used
    (``cache``). ``data_root``: the folder holding the data sets' files (None: their defaults).
    ``download``: a data set missing under the data root is downloaded there (CIFAR, through
    torchvision; ``prunetax train --download``). Paths and devices given are stored as strings,
    so an Env pickles to any worker.
    """
    device: str = "auto"
    cache_dir: str | None = None
    data_root: str | None = None
    download: bool = False

    def __post_init__(self):
        object.__setattr__(self, "device", str(self.device))
        object.__setattr__(self, "download", bool(self.download))
        for name in ("cache_dir", "data_root"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value))

    @classmethod
    def of(cls, env: "Env | str | torch.device | None" = None, *, device=None, cache_dir=None,
           data_root=None, download=None) -> "Env":
        """``env`` (an Env; None: the defaults; a device name or torch.device, as the old positional
        ``device`` argument), with each of the old keywords that is not None on top."""
        if env is None:
            base = cls()
        elif isinstance(env, Env):
            base = env
        else:
            base = cls(device=env)
        given = {k: v for k, v in (("device", device), ("cache_dir", cache_dir), ("data_root", data_root),
                                   ("download", download)) if v is not None}
        return dataclasses.replace(base, **given) if given else base

    @classmethod
    def from_args(cls, args) -> "Env":
        """The Env of a command's parsed ``--device``, ``--cache-dir``, ``--data-root`` and
        ``--download`` (absent: defaults)."""
        return cls(device=getattr(args, "device", None) or "auto", cache_dir=getattr(args, "cache_dir", None),
                   data_root=getattr(args, "data_root", None), download=getattr(args, "download", False))

    @property
    def torch_device(self) -> "torch.device":
        """The device, resolved here (``auto`` → cuda when available); an unavailable one is an error."""
        return resolve_device(self.device)

    @property
    def cache(self) -> Path:
        """The baseline cache folder, resolved here (``$PRUNETAX_CACHE`` or ``~/.cache/prunetax`` when unset)."""
        return Path(self.cache_dir).expanduser() if self.cache_dir is not None else default_cache_dir()
