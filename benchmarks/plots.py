"""Figures of a results folder (matplotlib, Agg backend; ``pip install prunetax[plot]``).

One set of figures per leaderboard group: (network, data set, baseline recipe, protocol), named
``<figure>_<network>_<dataset>`` (plus ``_r<recipe>-p<protocol>``, 6 hex of a hash of each, when
a results folder holds several recipes or protocols of one network and data set; the figure's
title names them):

- ``accuracy``: test accuracy against % conv weights removed for chosen metrics (default: the
  group's top 5 that crossed, ``random`` and ``oracle``), one curve per seed starting at the
  baseline (0 % removed); colour and marker per metric, line style per seed; each seed's
  accuracy target as a grey line in that seed's style; a note names curves that coincide; a step
  the sequential test decided on part of the test set is drawn at its accuracy on the images
  it read (``test_correct / test_images``), and a note says how many such points there are;
- ``reduction_scaling`` / ``pointwise_input``: mean rate by reduction x scaling and by pointwise
  function x base input (grouped bars, as the taxonomy paper) over the single-spec metrics with
  channel structure: each bar the mean of its metrics' mean rates, error bar +-1 sd over those
  metrics, n on the bar; averaged over the combinations of the other components present in
  every bar (balanced), or said to be unbalanced;
- ``domino``: the same metric with structure channel / domino_o / domino_io (where Domino
  variants ran): each bar a metric's mean over seeds, +-1 sd over seeds; hatched where the
  Domino variant ran as the channel metric (equivalent on this network: ``ran_as``).

Every figure says when its baseline is within the threshold of chance level, and carries the
command that made it in its metadata (PNG text ``Source``, SVG ``Source``, PDF ``Subject``).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from prunetax.taxonomy.errors import PrunetaxError
from prunetax.taxonomy.vocab import AXES

if TYPE_CHECKING:
    from prunetax.benchmarks.cell import Protocol

__all__ = ["plot_results", "FIGURES", "FORMATS"]

FIGURES = ("accuracy", "reduction_scaling", "pointwise_input", "domino")
FORMATS = ("png", "svg", "pdf")
_STRUCTURES = ("channel", "domino_o", "domino_io")
_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}  # chance = 100 / classes
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
_SEED_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def pyplot():
    """matplotlib's pyplot on the Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise PrunetaxError("plots need matplotlib; pip install prunetax[plot]") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")


def _short(text) -> str:
    return hashlib.sha256(str(text).encode()).hexdigest()[:6]


def chance_warning(dataset: str, baselines: Sequence[float], protocol: Protocol | None) -> str | None:
    """A sentence when a baseline's accuracy target (``protocol.target``) is at or below chance
    level (rates mean nothing), else None; None too without a protocol."""
    classes = _CLASSES.get(dataset)
    if classes is None or protocol is None or not baselines:
        return None
    chance = 100.0 / classes
    low = [b for b in baselines if protocol.target(b) <= chance]
    if not low:
        return None
    return (f"baseline accuracy {min(low):.1f} % is within the threshold of chance ({chance:.0f} %): "
            "these rates do not rank the metrics")


def _note(fig, lines: Sequence[str], warn: str | None = None) -> None:
    """Notes under the axes (grey) and a warning above them (red)."""
    text = [t for t in lines if t]
    if text:
        fig.text(0.01, 0.005, "\n".join(text), fontsize=7, color="0.3", ha="left", va="bottom", wrap=True)
    if warn:
        fig.text(0.5, 0.995, warn, fontsize=8, color="tab:red", ha="center", va="top", weight="bold")


def _layout(fig, notes: int, warn: bool) -> None:
    """Room for the notes under the axes and the warning above (the legend sits right of the axes,
    and savefig crops to what is drawn)."""
    height = fig.get_size_inches()[1]
    bottom = (0.1 + 0.13 * notes) / height if notes else 0.0
    fig.tight_layout(rect=(0, min(bottom, 0.4), 1, 1 - 0.25 / height if warn else 1))


# ---------------------------------------------------------------------------------------------
# accuracy against rate

def _point(t: dict) -> float | None:
    """A trajectory row's accuracy (%): on the whole test set, or, where the sequential test
    stopped early, on the images its test read (``test_correct / test_images``); None untested."""
    if t["accuracy"] is not None:
        return t["accuracy"]
    if t.get("test_images"):
        return 100.0 * t["test_correct"] / t["test_images"]
    return None


def partial_points(traj: list[dict], chosen: Sequence[str]) -> int:
    """How many of the chosen metrics' drawn points were tested on part of the test set."""
    return sum(1 for t in traj if t["metric_id"] in chosen and t["accuracy"] is None and t.get("test_images"))


def accuracy_curves(traj: list[dict], base: dict[tuple, float], metric: str) -> dict[int, list[tuple[float, float]]]:
    """seed -> [(rate, accuracy)] from the baseline (0, its accuracy) on, tested steps only
    (a step the sequential test decided early: its accuracy on the images it read)."""
    runs: dict[int, list] = {}
    for t in traj:
        if t["metric_id"] == metric and _point(t) is not None:
            runs.setdefault(t["seed"], []).append((t["step"], t["conv_weights_removed_pct"], _point(t)))
    out = {}
    for seed, pts in runs.items():
        pts.sort()
        start = [(0.0, base[seed])] if base.get(seed) is not None else []
        out[seed] = start + [(p[1], p[2]) for p in pts]
    return out


def _accuracy_figure(plt, traj, scores, chosen, title, protocol, warn):
    """Accuracy against rate: one curve per chosen metric and seed from its baseline, each seed's
    target (``protocol.target`` of its baseline; none without a protocol) as a grey line."""
    from matplotlib.lines import Line2D

    base = {r["seed"]: r["baseline_accuracy"] for r in scores}
    seeds = sorted({t["seed"] for t in traj} | set(base))
    curves = {m: accuracy_curves(traj, base, m) for m in chosen}
    chosen = [m for m in chosen if curves[m]]
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    style = {s: _SEED_STYLES[i % len(_SEED_STYLES)] for i, s in enumerate(seeds)}
    for i, metric in enumerate(chosen):
        color = "0.45" if metric in ("random", "oracle") else colors[i % len(colors)]
        marker = _MARKERS[i % len(_MARKERS)]
        for seed, pts in sorted(curves[metric].items()):
            n = len(pts)
            every = max(1, n // 6)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, ls=style[seed], lw=1.3, alpha=0.85,
                    marker=marker, ms=4.5, markevery=(min(i % every, n - 1), every), mfc="none" if i % 2 else color)
    # each seed's own accuracy target, as the protocol reads it
    targets = {s: protocol.target(base[s]) for s in seeds if base.get(s) is not None and protocol is not None}
    for s, y in targets.items():
        ax.axhline(y, color="0.5", ls=style[s], lw=0.9)
    ax.set_xlabel("conv weights removed (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], color="0.45" if m in ("random", "oracle") else colors[i % len(colors)],
                      marker=_MARKERS[i % len(_MARKERS)], mfc="none" if i % 2 else None, label=m)
               for i, m in enumerate(chosen)]
    if len(seeds) > 1:
        handles += [Line2D([], [], color="k", ls=style[s], label=f"seed {s}") for s in seeds]
    if targets:
        what = f"{protocol.threshold:g} % of baseline" if protocol.relative else f"{protocol.threshold:g} points"
        handles.append(Line2D([], [], color="0.5", lw=0.9, label=f"target: baseline - {what}"
                              + (" (per seed)" if len(targets) > 1 else "")))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    same = _identical(curves, chosen)
    notes = [f"identical curves (drawn over each other): {' = '.join(g)}" for g in same]
    notes += [f"not drawn (no evaluated step): {m}" for m in curves if not curves[m]]
    partial = partial_points(traj, chosen)
    if partial:
        notes.append(f"{partial} points on part of the test set (the sequential test stopped once the side of the "
                     "target was certain); the crossings are on the whole set")
    _note(fig, notes, warn)
    _layout(fig, len(notes), bool(warn))
    return fig


def _identical(curves: dict, chosen: Sequence[str]) -> list[list[str]]:
    groups: dict[tuple, list[str]] = {}
    for m in chosen:
        key = tuple(sorted((s, tuple(pts)) for s, pts in curves[m].items()))
        groups.setdefault(key, []).append(m)
    return [g for g in groups.values() if len(g) > 1]


# ---------------------------------------------------------------------------------------------
# bars

@dataclass(frozen=True)
class BarTexts:
    """The words of a bar figure: its title, the x axis's label, the legend's title (the series),
    the y axis's label, the notes under the axes and the warning above them (None: none)."""
    title: str
    xlabel: str
    legend: str
    ylabel: str
    notes: Sequence[str] = ()
    warn: str | None = None


RATE_LABEL = "conv weights removed at the threshold (%)"   # the y axis of every bar figure


def _bars(plt, texts: BarTexts, groups, series, cells, hatched=None):
    """Grouped bars: x = ``groups``, one bar per ``series``; ``cells[(g, s)]`` = (mean, sd or None, n);
    ``hatched``: the (group, series) bars drawn hatched."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(min(12.0, max(6.5, (0.35 + 0.3 * len(series)) * len(groups) + 2.5)), 4.8))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    top = max([c[0] + (c[1] or 0) for c in cells.values()] + [1.0])
    for i, s in enumerate(series):
        pos = x + (i - (len(series) - 1) / 2) * width
        vals = [cells.get((g, s)) for g in groups]
        means = [np.nan if v is None else v[0] for v in vals]
        errs = [np.nan if v is None or v[1] is None else v[1] for v in vals]
        bars = ax.bar(pos, means, width, yerr=errs, capsize=2, label=s, error_kw={"lw": 0.8})
        for b, v, g in zip(bars, vals, groups):
            if v is None:
                continue
            if hatched and (g, s) in hatched:
                b.set_hatch("///")
                b.set_edgecolor("white")
            ax.text(b.get_x() + b.get_width() / 2, v[0] + (v[1] or 0) + top * 0.01, f"n={v[2]}",
                    ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, groups, rotation=20 if max(len(str(g)) for g in groups) > 8 else 0, ha="right"
                  if max(len(str(g)) for g in groups) > 8 else "center", fontsize=8)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_xlabel(texts.xlabel)
    ax.set_ylabel(texts.ylabel)
    ax.set_ylim(0, top * 1.12)
    ax.set_title(texts.title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, title=texts.legend, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1),
              frameon=False)
    _note(fig, texts.notes, texts.warn)
    _layout(fig, len(texts.notes), bool(texts.warn))
    return fig


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def component_cells(board: list[dict], a: str, b: str):
    """Bars of mean rate by (component a, component b) over the group's channel-structure specs,
    balanced when possible. Returns (groups, series, cells, notes) or None."""
    import numpy as np

    from prunetax.benchmarks.analysis import level_order

    others = [c for c in AXES if c not in (a, b, "structure")]
    specs = {}
    left_out = 0
    for r in board:
        if r["kind"] not in ("spec", "named") or r["structure"] != "channel" or r["mean"] is None:
            continue
        if any(r[c] is None for c in AXES):
            continue
        if r["censored"]:
            left_out += 1
            continue
        specs.setdefault(tuple(r[c] for c in AXES), r["mean"])  # a named metric = its spec: once
    if not specs:
        return None
    idx = {c: AXES.index(c) for c in AXES}
    by_context: dict[tuple, dict[tuple, float]] = {}
    for comps, mean in specs.items():
        ctx = tuple(comps[idx[c]] for c in others)
        by_context.setdefault(ctx, {})[(comps[idx[a]], comps[idx[b]])] = mean
    pairs = sorted({p for d in by_context.values() for p in d})
    balanced = [ctx for ctx, d in by_context.items() if all(p in d for p in pairs)]
    notes = []
    use = balanced or list(by_context)
    if balanced and len(balanced) < len(by_context):
        notes.append(f"balanced: averaged over the {len(balanced)} combinations of {', '.join(others)} present in "
                     f"every bar ({_count(len(by_context) - len(balanced), 'other')} left out)")
    elif not balanced:
        notes.append(f"unbalanced: no combination of {', '.join(others)} is present in every bar; "
                     "bars average different sets of metrics")
    if left_out:
        notes.append(f"{left_out} metric{'s' if left_out > 1 else ''} that never crossed the threshold on some seed "
                     "left out (censored rates)")
    notes.append("bar: mean of the metrics' mean rates; error bar: +-1 sd over those metrics; n: metrics")
    vals: dict[tuple, list[float]] = {}
    for ctx in use:
        for p, mean in by_context[ctx].items():
            vals.setdefault(p, []).append(mean)
    cells = {p: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None, len(v)) for p, v in vals.items()}
    groups = level_order(a, {p[0] for p in pairs})
    series = level_order(b, {p[1] for p in pairs})
    return groups, series, cells, notes


def _domino_cells(board: list[dict], limit: int = 8):
    stems: dict[str, dict[str, dict]] = {}
    censored = set()
    for r in board:
        if r["kind"] in ("spec", "named") and r["structure"] in _STRUCTURES and r["mean"] is not None:
            mid = r["metric_id"]
            stem = mid[: -len("-" + r["structure"])] if mid.endswith("-" + r["structure"]) else mid
            stems.setdefault(stem, {})[r["structure"]] = r
            if r["censored"]:
                censored.add(stem)
    pairs = {k: v for k, v in stems.items() if "channel" in v and len(v) > 1 and k not in censored}
    if not pairs:
        return None
    best = sorted(pairs, key=lambda k: (-max(x["mean"] for x in pairs[k].values()), k))[:limit]
    cells, hatched = {}, set()
    for k in best:
        chan = pairs[k]["channel"]
        for s, r in pairs[k].items():
            cells[(k, s)] = (r["mean"], r["std"], r["n_runs"])
            if s != "channel" and r["ran_as"] is not None and r["ran_as"] in (chan["metric_id"], chan["ran_as"]):
                hatched.add((k, s))
    series = [s for s in _STRUCTURES if any((k, s) in cells for k in best)]
    notes = [f"the {len(best)} metrics with the highest rate of {len(pairs)} with a Domino variant"
             if len(pairs) > len(best) else ""]
    notes.append("bar: the metric's mean rate over seeds; error bar: +-1 sd over seeds; n: seeds")
    if censored:
        notes.append(f"{len(censored)} metric{'s' if len(censored) > 1 else ''} left out: a structure of it never "
                     "crossed the threshold on some seed (censored rate)")
    if hatched:
        notes.append("hatched: the Domino variant ran as the channel metric (the same metric on this network: ran_as)")
    return best, series, cells, hatched, [n for n in notes if n]


# ---------------------------------------------------------------------------------------------

def _chosen(rows: list[dict], metrics: Sequence[str] | None, top: int) -> list[str]:
    """The accuracy figure's metrics of a group: ``metrics`` that ran in it, or its ``top`` that
    crossed on every seed, with random and oracle."""
    ran = {r["metric_id"] for r in rows}
    if metrics:
        return [m for m in metrics if m in ran]
    best = [r["metric_id"] for r in rows if r["metric_id"] not in ("random", "oracle") and not r["censored"]]
    return best[:top] + [m for m in ("random", "oracle") if m in ran]


@dataclass
class _Figures:
    """Where the figures of one ``plot_results`` call go: ``out`` in each of ``formats``, with
    ``command`` in their metadata; ``written``: the paths so far."""
    plt: object
    out: Path
    formats: Sequence[str]
    command: str | None
    written: list = field(default_factory=list)

    def save(self, fig, name: str, title: str, label: str) -> None:
        """Write ``fig`` as ``out/<name>.<format>`` (``title`` and the group's ``label`` in its
        metadata), then close it."""
        from prunetax.benchmarks._version import __version__
        from prunetax.benchmarks.io import atomic_path

        command = self.command or ""
        meta = {"png": {"Title": title, "Description": label, "Software": f"prunetax {__version__}",
                        "Source": command},
                "svg": {"Title": title, "Description": label, "Creator": f"prunetax {__version__}",
                        "Source": command, "Date": None},
                "pdf": {"Title": title, "Keywords": label, "Creator": f"prunetax {__version__}",
                        "Subject": command, "CreationDate": None}}
        for fmt in self.formats:
            path = self.out / f"{name}.{fmt}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=150, metadata=meta[fmt], bbox_inches="tight", pad_inches=0.08)
            self.written.append(path)
        self.plt.close(fig)


def _group_figures(figs: _Figures, rows: list[dict], scores: list[dict], traj: list[dict], tag: str,
                   chosen: Sequence[str]) -> None:
    """Every figure of one leaderboard group: ``rows`` (its leaderboard rows), ``scores`` (its
    score rows), ``traj`` (trajectory rows of the drawn metrics, any group's), ``tag`` (the end of
    the file names), ``chosen`` (the accuracy figure's metrics)."""
    from prunetax.benchmarks.results import row_protocol

    net, data, label = rows[0]["network"], rows[0]["dataset"], rows[0]["group"]
    protocol = row_protocol(rows[0])
    firsts = {}
    for r in scores:
        firsts.setdefault(r["seed"], r)
    warn = chance_warning(data, [r["baseline_accuracy"] for r in firsts.values() if r["baseline_accuracy"]
                                 is not None], protocol)
    subtitle = f"{net} / {data}\nrecipe {rows[0]['recipe_label']}; protocol {rows[0]['protocol_label']}"
    cells = {r["cell_id"] for r in scores}
    tj = [t for t in traj if t["cell_id"] in cells]
    sc = [{"seed": s, "baseline_accuracy": r["baseline_accuracy"]} for s, r in firsts.items()]
    title = f"accuracy while pruning: {subtitle}"
    figs.save(_accuracy_figure(figs.plt, tj, sc, chosen, title, protocol, warn), f"accuracy_{tag}", title, label)
    for name, a, b, what in (("reduction_scaling", "reduction", "scaling", "reduction x scaling"),
                             ("pointwise_input", "pointwise", "base_input", "pointwise x base input")):
        got = component_cells(rows, a, b)
        if got:
            g, s, c, notes = got
            texts = BarTexts(f"mean rate by {what}: {subtitle}", a.replace("_", " "), b.replace("_", " "),
                             RATE_LABEL, notes, warn)
            figs.save(_bars(figs.plt, texts, g, s, c), f"{name}_{tag}", texts.title, label)
    got = _domino_cells(rows)
    if got:
        best, series, c, hatched, notes = got
        texts = BarTexts(f"channel vs Domino structure: {subtitle}", "metric (without its structure)", "structure",
                         RATE_LABEL, notes, warn)
        figs.save(_bars(figs.plt, texts, best, series, c, hatched), f"domino_{tag}", texts.title, label)


def _drawn_trajectories(results_dir, metrics: Sequence[str]) -> list[dict]:
    """The trajectory rows of ``metrics`` only (a grid's trajectories can be millions of rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from prunetax.benchmarks.results import read_trajectories

    table = read_trajectories(results_dir)
    return table.filter(pc.is_in(table.column("metric_id"), value_set=pa.array(metrics, pa.string()))).to_pylist()


def plot_results(results_dir, out_dir, metrics: Sequence[str] | None = None,
                 formats: Sequence[str] = FORMATS, top: int = 5, command: str | None = None) -> list[Path]:
    """Write every figure of ``results_dir`` into ``out_dir`` in ``formats``; returns the paths.

    ``metrics``: the accuracy figure's metrics (default: each group's ``top`` that crossed, with
    random and oracle); ``command``: the command line stored in each file's metadata.
    """
    from prunetax.benchmarks.ranking import rank_scores
    from prunetax.benchmarks.results import read_scores

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise PrunetaxError(f"unknown plot format {(bad or [''])[0]!r}; choose from {', '.join(FORMATS)}")
    plt = pyplot()
    scores = read_scores(results_dir)
    board = rank_scores(scores, source=str(results_dir)).to_pylist()
    known = {r["metric_id"] for r in board}
    if metrics:
        missing = [m for m in metrics if m not in known]
        if missing:
            raise PrunetaxError(f"metric {missing[0]!r} is not in {results_dir}; choose from the leaderboard's ids")
    score_rows = scores.to_pylist()
    groups: dict[tuple, list[dict]] = {}
    for r in board:
        groups.setdefault((r["network"], r["dataset"], r["recipe_hash"], r["protocol"]), []).append(r)
    drawn = sorted({m for rows in groups.values() for m in _chosen(rows, metrics, top)})
    traj = _drawn_trajectories(results_dir, drawn)
    per_data: dict[tuple, int] = {}
    for key in groups:
        per_data[key[:2]] = per_data.get(key[:2], 0) + 1
    figs = _Figures(plt, Path(out_dir), formats, command)
    for key in sorted(groups, key=lambda k: (k[0], k[1], groups[k][0]["group"])):
        net, data, rhash, proto = key
        tag = f"{_safe(net)}_{_safe(data)}" + (f"_r{_short(rhash)}-p{_short(proto)}" if per_data[key[:2]] > 1 else "")
        mine = [r for r in score_rows if (r["network"], r["dataset"], r["recipe_hash"], r["protocol"]) == key]
        _group_figures(figs, groups[key], mine, traj, tag, _chosen(groups[key], metrics, top))
    return figs.written
