"""A grid's cells from its config: the TOML grid file, its keys, the metric lists expanded.

``load_grid_file`` reads a grid file (a syntax error names the file, line and problem; an unknown
key names the valid ones); ``grid_cells`` turns a config (from a file, from the ``prunetax
bench`` flags, or both) into cells, one per (network, dataset, seed), checking every value's type
and range, and every network and data set name (``prunetax.benchmarks.names``), and naming the key
as the user wrote it (``FILE: key`` or ``--flag``). The checks here need no torch; ``grid_cells``
then runs ``validate.validate_cells``, which does.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

from prunetax.benchmarks.cell import REFERENCES, Cell, Protocol
from prunetax.taxonomy.errors import PrunetaxError

__all__ = ["GRID_KEYS", "load_grid_file", "grid_cells", "expand_metrics"]

GRID_KEYS = ("networks", "datasets", "seeds", "metrics", "metric_filter", "epochs", "train_limit", "protocol")


def _toml():
    """``tomllib`` (Python 3.11+) or its backport ``tomli`` (a dependency on 3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise PrunetaxError("reading a grid file on Python 3.10 needs tomli; pip install tomli") from None
    return tomllib


def load_grid_file(path) -> dict:
    """The TOML grid at ``path`` as a dict; a syntax error names the file, line and problem."""
    tomllib = _toml()

    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        raise PrunetaxError(f"grid file {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise PrunetaxError(f"grid file {str(p)!r} is a folder; give a .toml file") from None
    try:
        config = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PrunetaxError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PrunetaxError(f"{p}: malformed TOML {_where(str(exc), text)}") from None
    unknown = sorted(set(config) - set(GRID_KEYS))
    if unknown:
        raise _unknown_key(str(p), unknown[0], GRID_KEYS)
    return config


def _where(message: str, text: bytes) -> str:
    """'at line L, column C: problem' from tomllib's 'problem (at line L, column C)'."""
    import re

    m = re.match(r"(.*) \(at line (\d+), column (\d+)\)$", message)
    end = re.match(r"(.*) \(at end of document\)$", message)
    if message.startswith("Unclosed array"):   # tomllib names where it noticed, not the '['
        lines = text.decode("utf-8", "replace").splitlines()
        stop = int(m.group(2)) if m else len(lines) + 1
        for k in range(min(stop, len(lines)), 0, -1):
            line = lines[k - 1].split("#", 1)[0]
            if "=" in line and line.count("[") > line.count("]"):
                return f"at line {k}: the array opened here is not closed (the parser stopped at line {stop})"
    if m:
        return f"at line {m.group(2)}, column {m.group(3)}: {m.group(1)}"
    if end:
        lines = text.count(b"\n") + 1
        return f"at line {lines} (end of file): {end.group(1)}"
    return f": {message}"


def _label(source: str, key: str) -> str:
    """How an error names a grid key: the flag the user typed (``--train-limit``) when the grid
    came from flags, ``FILE: key`` when it came from a grid file."""
    return f"--{key.replace('_', '-')}" if source == "flags" else f"{source}: {key}"


def _unknown_key(source: str, key: str, valid) -> PrunetaxError:
    import difflib

    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return PrunetaxError(f"{source}: unknown key {key!r}; {hint}valid keys are {', '.join(valid)}")


def _list(config: dict, key: str, kind: type, source: str) -> list:
    value = config.get(key)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise PrunetaxError(f"{_label(source, key)} must be a non-empty list of {kind.__name__}s, got {value!r}")
    for v in value:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise PrunetaxError(f"{_label(source, key)} must hold {kind.__name__}s, got {v!r}")
    return list(dict.fromkeys(value))


def expand_metrics(items: Iterable[str], metric_filter: str | None = None) -> tuple[str, ...]:
    """Presets become their metric ids (filtered by the glob ``metric_filter``); ids are made
    canonical, named metrics and ``random`` / ``oracle`` are kept as given. Order kept, no repeats.
    """
    from prunetax.enumerate import PRESETS, metric_space
    from prunetax.taxonomy import NAMED, parse_metric

    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item in PRESETS:
            out += [m.id for m in metric_space(item, metric_filter)]
        elif item in REFERENCES or item.lower() in NAMED:
            out.append(item.lower() if item.lower() in NAMED else item)
        else:
            out.append(str(parse_metric(item)))
    if not out:
        why = f" (metric_filter {metric_filter!r} matches none of the presets' metrics)" if metric_filter else ""
        raise PrunetaxError(f"the grid has no metrics{why}; give presets (paper, domino, extended), ids or names")
    return tuple(dict.fromkeys(out))


def _protocol(config: dict, source: str) -> Protocol:
    """The config's ``[protocol]`` table as a Protocol, each value's type checked against its field."""
    protocol_cfg = config.get("protocol", {})
    if not isinstance(protocol_cfg, dict):
        raise PrunetaxError(f"{source}: [protocol] must be a table of Protocol options")
    types = {f.name: f.type for f in dataclasses.fields(Protocol)}
    for k, v in protocol_cfg.items():
        want = {"float": (int, float), "bool": (bool,), "int": (int,), "str": (str,)}.get(str(types.get(k)), ())
        if want and (not isinstance(v, want) or (isinstance(v, bool) and bool not in want)):
            raise PrunetaxError(f"{_label(source, k) if source == 'flags' else source + ': [protocol] ' + k} "
                                f"must be a {types[k]}, got {v!r}")
    unknown = sorted(set(protocol_cfg) - set(types))
    if unknown:
        raise _unknown_key(f"{source}: [protocol]" if source != "flags" else "flags: [protocol]", unknown[0],
                           sorted(types))
    try:
        return Protocol.from_dict(protocol_cfg)
    except TypeError as exc:
        raise PrunetaxError(f"{source}: bad protocol option: {exc}") from None


def _check_names(networks: list[str], datasets: list[str], source: str) -> None:
    """Every network a registered model and every data set a registered one (or imagefolder:PATH),
    read from ``prunetax.benchmarks.names`` without torch; one line naming the key otherwise."""
    from prunetax.benchmarks.names import check_dataset, check_model

    for key, names, check in (("networks", networks, check_model), ("datasets", datasets, check_dataset)):
        for name in names:
            try:
                check(name)
            except PrunetaxError as exc:
                raise PrunetaxError(f"{_label(source, key)}: {exc}") from None


def grid_cells(config: dict, source: str = "grid", *, validate: bool = True, data_root=None) -> list[Cell]:
    """The cells of a grid config (the TOML keys, see ``GRID_KEYS``). Raises PrunetaxError.

    The config's own checks need no torch; ``validate`` then runs
    :func:`prunetax.benchmarks.grid.validate.validate_cells` (networks, data under ``data_root``,
    metrics on each network), which does."""
    unknown = sorted(set(config) - set(GRID_KEYS))
    if unknown:
        raise _unknown_key(source, unknown[0], GRID_KEYS)
    networks = _list(config, "networks", str, source)
    datasets = _list(config, "datasets", str, source)
    _check_names(networks, datasets, source)
    seeds = _list({"seeds": [0], **config}, "seeds", int, source)
    if any(s < 0 for s in seeds):
        raise PrunetaxError(f"{_label(source, 'seeds')} must be >= 0, got {seeds}")
    metric_items = _list({"metrics": ["paper"], **config}, "metrics", str, source)
    metric_filter = config.get("metric_filter")
    if metric_filter is not None and not isinstance(metric_filter, str):
        raise PrunetaxError(f"{_label(source, 'metric_filter')} must be a glob string, got {metric_filter!r}")
    metrics = expand_metrics(metric_items, metric_filter)
    protocol = _protocol(config, source)
    epochs, limit = config.get("epochs"), config.get("train_limit")
    for name, v in (("epochs", epochs), ("train_limit", limit)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise PrunetaxError(f"{_label(source, name)} must be a positive integer, got {v!r}")
    cells = [Cell(n, d, s, metrics, protocol, epochs, limit) for n in networks for d in datasets for s in seeds]
    if validate:
        from prunetax.benchmarks.grid.validate import validate_cells

        validate_cells(cells, data_root=data_root)
    return cells
