"""The readable labels of leaderboard groups: the protocol's and the recipe's fields that tell
groups of the same ``by`` values apart, and the group's one-line label."""
from __future__ import annotations

import json
from typing import Sequence

__all__ = ["plain_number", "parse_json", "protocol_label", "recipe_label", "differing", "label_groups"]


def plain_number(v: float) -> str:
    """A number as the labels write it (``5``, ``2.5``)."""
    return f"{v:g}"


def parse_json(text: str | None) -> dict | None:
    """The dict a JSON column holds; None when null, unreadable or not an object."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def protocol_label(p: dict | None, extra: Sequence[str]) -> str:
    """The protocol ``p`` (its dict) in words: its threshold, mode, schedule and the ``extra`` fields."""
    if p is None:
        return "unknown"
    bits = []
    if "threshold" in p:
        bits.append(f"threshold {plain_number(p['threshold'])} {'%' if p.get('relative') else 'points'}")
    for key in ("mode", "schedule"):
        if key in p:
            bits.append(f"{key} {p[key]}")
    bits += [f"{k}={p.get(k)}" for k in extra if k not in ("threshold", "relative", "mode", "schedule")]
    return ", ".join(bits) or "default"


def recipe_label(r: dict | None, extra: Sequence[str], digest: str | None) -> str:
    """The recipe ``r`` (its dict) in words: its epochs, limit, the ``extra`` fields and, given a
    ``digest`` (the recipe hash), its first 8 characters."""
    if r is None:
        return "unknown"
    bits = [f"epochs={r.get('epochs')}"] + ([f"limit={r['limit']}"] if r.get("limit") else [])
    bits += [f"{k}={r.get(k)}" for k in extra if k not in ("epochs", "limit")]
    return ", ".join(bits) + (f" ({digest[:8]})" if digest else "")


def differing(dicts: list[dict | None]) -> list[str]:
    """Keys whose values differ among the non-null ``dicts``, sorted."""
    known = [d for d in dicts if d is not None]
    keys = sorted({k for d in known for k in d})
    return [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in known}) > 1]


def _facts(metrics: dict[str, list[dict]], protocol: str | None) -> dict:
    """What the labels of one group read: its protocol and recipe (dicts), networks and data sets."""
    rows = [r for runs in metrics.values() for r in runs]
    recipe = next((r["recipe"] for r in rows if r["recipe"] is not None), None)
    return {"protocol": parse_json(protocol), "recipe": parse_json(recipe),
            "networks": {r["network"] for r in rows}, "datasets": {r["dataset"] for r in rows}}


def _label_siblings(info: dict[tuple, dict], keys: list[tuple]) -> None:
    """The protocol and recipe labels of groups with the same ``by`` values (``keys``): the fields
    that differ between them, and the recipe hash where two would read alike."""
    p_extra = differing([info[k]["protocol"] for k in keys])
    r_extra = differing([info[k]["recipe"] for k in keys])
    for k in keys:
        i = info[k]
        i["protocol_label"] = protocol_label(i["protocol"], p_extra)
        i["recipe_label"] = recipe_label(i["recipe"], r_extra, None)
    labels = [(info[k]["recipe_label"], info[k]["protocol_label"]) for k in keys]
    for k in keys:  # two recipes with the same visible fields (or unknown and known): add the hash
        if labels.count((info[k]["recipe_label"], info[k]["protocol_label"])) > 1 and k[-2]:
            info[k]["recipe_label"] = recipe_label(info[k]["recipe"], r_extra, k[-2])


def label_groups(groups: dict[tuple, dict[str, list[dict]]], by: Sequence[str]) -> dict[tuple, dict]:
    """Per group (key: the ``by`` values, the recipe hash, the protocol JSON; value: metric ->
    runs): its ``protocol`` and ``recipe`` (dicts, None where unknown), ``networks``,
    ``datasets``, ``protocol_label``, ``recipe_label`` and ``group`` (network / data set, several
    joined by '+' when pooled, the other ``by`` values, recipe and protocol)."""
    info = {key: _facts(metrics, key[-1]) for key, metrics in groups.items()}
    siblings: dict[tuple, list[tuple]] = {}
    for key in groups:
        siblings.setdefault(key[:len(by)], []).append(key)
    for keys in siblings.values():
        _label_siblings(info, keys)
    for key, i in info.items():
        where = " / ".join("+".join(sorted(map(str, vals))) for vals in (i["networks"], i["datasets"]))
        extra = ", ".join(f"{b}={v}" for b, v in zip(by, key) if b not in ("network", "dataset"))
        i["group"] = (f"{where}{' | ' + extra if extra else ''}"
                      f" | recipe {i['recipe_label']} | protocol {i['protocol_label']}")
    return info
