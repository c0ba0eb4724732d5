"""The user's own registrations, loaded where the commands and the grid's workers run.

A plug-in is a Python module that registers models (``register_model``), data sets
(``register_dataset``), components or kernels when imported. Two ways to name one:

- ``--import MODULE`` on the command line (repeatable): a module name importable from the current
  folder (``my_models`` for ``./my_models.py``, ``lab.nets``), or a path to a ``.py`` file;
- an installed package's entry point in the ``prunetax`` group, loaded by every command
  (``[project.entry-points.prunetax] my_nets = "my_package.nets"`` in its pyproject.toml), the
  convention pytest and others use for plug-ins.

``load_plugins`` imports both; the grid sends the same list to its workers, which load them
before running a cell (so a dask or ray worker knows the user's models too).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import zlib
from pathlib import Path
from typing import Sequence

from prunetax.taxonomy.errors import PrunetaxError

ENTRY_POINT_GROUP = "prunetax"

__all__ = ["ENTRY_POINT_GROUP", "resolve_imports", "load_plugins"]

_loaded: set[str] = set()


def resolve_imports(imports: Sequence[str], cwd: str | os.PathLike | None = None) -> tuple[str, ...]:
    """``--import`` values made independent of the working folder: a ``.py`` path becomes
    absolute; a module name stays a name, with ``cwd`` (default: here) put first on ``sys.path``
    when it is imported. Checks nothing else (``load_plugins`` does)."""
    base = Path(cwd or os.getcwd())
    out = []
    for item in imports:
        item = item.strip()
        if not item:
            continue
        if item.endswith(".py") or os.sep in item:
            out.append(str((base / item).expanduser().absolute()))
        else:
            out.append(item)
    return tuple(out)


def load_plugins(imports: Sequence[str] = (), cwd: str | os.PathLike | None = None,
                 entry_points: bool = True) -> list[str]:
    """Import the ``prunetax`` entry points (when ``entry_points``) and each of ``imports`` (module
    names, importable from ``cwd`` or the current folder, or ``.py`` paths), each once per
    process. Returns what was imported now. A plug-in that fails to import is a one-line
    PrunetaxError naming it and the error."""
    done = []
    if entry_points:
        from importlib.metadata import entry_points as eps

        for ep in eps(group=ENTRY_POINT_GROUP):
            key = f"entry point {ep.name} = {ep.value}"
            if key in _loaded:
                continue
            try:
                ep.load()
            except Exception as exc:
                raise PrunetaxError(f"cannot load the prunetax plug-in '{ep.name}' ({ep.value}), an entry point of "
                                    f"an installed package: {type(exc).__name__}: {_first_line(exc)}") from None
            _loaded.add(key)
            done.append(key)
    base = str(Path(cwd or os.getcwd()).absolute())
    for item in resolve_imports(imports, base):
        if item in _loaded:
            continue
        if item.endswith(".py") or os.sep in item:
            _import_file(item)
        else:
            _import_module(item, base)
        _loaded.add(item)
        done.append(item)
    return done


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _import_module(name: str, base: str) -> None:
    if base not in sys.path:
        sys.path.insert(0, base)
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise PrunetaxError(f"--import {name}: no module named {exc.name!r} in {base} or on the Python path; "
                                f"give a module name importable from there or a path to a .py file") from None
        raise PrunetaxError(f"--import {name}: {type(exc).__name__}: {_first_line(exc)}") from None
    except PrunetaxError as exc:
        raise PrunetaxError(f"--import {name}: {exc}") from None
    except Exception as exc:
        raise PrunetaxError(f"--import {name}: {type(exc).__name__}: {_first_line(exc)}") from None


def _import_file(path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise PrunetaxError(f"--import {path}: no such file; give a module name or a path to a .py file")
    name = f"prunetax_plugin_{p.stem}_{zlib.crc32(str(p).encode()):08x}"
    spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except PrunetaxError as exc:
        del sys.modules[name]
        raise PrunetaxError(f"--import {path}: {exc}") from None
    except Exception as exc:
        del sys.modules[name]
        raise PrunetaxError(f"--import {path}: {type(exc).__name__}: {_first_line(exc)}") from None
