"""prunetax similarity: which metrics rank a network's channels alike (Spearman, Kendall, clusters)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

HELP = ("rank correlations (Spearman, Kendall) between the channel rankings of every two metrics on a trained "
        "network, clusters of metrics that rank alike, and a clustered heatmap")


def add_arguments(p) -> None:
    from prunetax.benchmarks.commands.saliency import add_network_arguments

    add_network_arguments(p)
    p.add_argument("--metrics", default="paper", metavar="PRESET|ID[,ID...]",
                   help="comma-separated presets (paper, domino, extended; default paper), ids, authors' names, "
                        "named metrics, expressions (as prunetax saliency)")
    p.add_argument("--images", type=int, default=256, help="saliency images from the eval split (default 256)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward/backward (default 128)")
    p.add_argument("--include-linear", action="store_true",
                   help="also rank linear producers' units (default: convolution channels only, as the protocol)")
    p.add_argument("--results", metavar="DIR", default=None,
                   help="a results folder: also the overlap of two metrics' first --first removals on this "
                        "network and data set, averaged over its cells")
    p.add_argument("--first", type=int, default=10, metavar="N", help="removals compared with --results (default 10)")
    p.add_argument("--min-rho", type=float, default=0.9,
                   help="a cluster: metrics whose average Spearman rho is at least this (default 0.9)")
    p.add_argument("--out", default="similarity", metavar="DIR", help="output folder (default ./similarity)")
    p.add_argument("--format", default="png,svg,pdf", help="heatmap formats: png, svg, pdf (default all three)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data-root", default=None, help="folder holding the data set's files")
    p.add_argument("--cache-dir", default=None, help="baseline cache (default $PRUNETAX_CACHE or ~/.cache/prunetax)")


def command_line(args) -> str:
    import shlex

    words = ["prunetax", "similarity", "--model", args.model, "--dataset", args.dataset]
    words += ["--checkpoint", str(args.checkpoint)] if args.checkpoint else ["--seed", str(args.seed or 0)]
    for flag, value, default in (("--epochs", args.epochs, None), ("--train-limit", args.train_limit, None),
                                 ("--metrics", args.metrics, None), ("--images", args.images, 256),
                                 ("--results", args.results, None), ("--first", args.first, 10),
                                 ("--min-rho", args.min_rho, 0.9), ("--out", args.out, None),
                                 ("--format", args.format, None)):
        if value is not None and value != default:
            words += [flag, str(value)]
    if args.include_linear:
        words.append("--include-linear")
    return shlex.join(words)


def _common(specs) -> str:
    """The components every metric of a cluster shares, as 'axis=value, ...'."""
    from prunetax.taxonomy.spec import MetricSpec
    from prunetax.taxonomy.vocab import AXES

    comps = [s.components() for s in specs if isinstance(s, MetricSpec)]
    if len(comps) != len(specs) or not comps:
        return ""
    return ", ".join(f"{a}={comps[0][i]}" for i, a in enumerate(AXES) if len({c[i] for c in comps}) == 1)


def _checked(args) -> tuple[list[str], list]:
    """The heatmap's formats and the metrics, once every argument that needs no trained network is
    known good (as prunetax saliency), else an error."""
    from prunetax.benchmarks.commands._flags import at_least
    from prunetax.benchmarks.commands.saliency import check_network_arguments, parse_metric_list
    from prunetax.benchmarks.grid import expand_metrics
    from prunetax.benchmarks.plots import FORMATS
    from prunetax.taxonomy.errors import PrunetaxError

    at_least("--images", args.images, 1)
    at_least("--batch-size", args.batch_size, 1)
    at_least("--first", args.first, 1)
    if not -1 <= args.min_rho <= 1:
        raise PrunetaxError(f"--min-rho {args.min_rho:g}: must be in [-1, 1]")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS] or ([] if formats else [""])
    if bad:
        raise PrunetaxError(f"--format {bad[0]!r}: choose from {', '.join(FORMATS)}")
    check_network_arguments(args)
    metrics = parse_metric_list(args.metrics)
    if len(set(expand_metrics(metrics))) < 2:
        raise PrunetaxError(f"--metrics {args.metrics}: one metric; similarity compares two or more")
    return formats, metrics


@dataclass
class _Saliencies:
    """The metrics' unit saliencies on the baseline: ``ids`` (as bench writes them), ``values``
    [metrics, units], ``specs`` (id -> the metric), the baseline's ``info``, ``source`` (what
    the printed line names) and ``provenance`` (what the written files name)."""
    ids: list[str]
    values: "np.ndarray"
    specs: dict
    info: dict
    source: str
    provenance: str


def _saliencies(args, metrics) -> _Saliencies:
    """The baseline (trained, cached or ``--checkpoint``) and every metric's saliency of each of
    its ranked units (convolution channels; with ``--include-linear``, linear units too)."""
    from pathlib import Path

    import numpy as np
    import torch

    from prunetax.benchmarks.cell import Cell, Protocol
    from prunetax.benchmarks.commands.saliency import baseline_loader, check_finite
    from prunetax.benchmarks.grid import expand_metrics
    from prunetax.benchmarks.setup import Env, prepare_cell
    from prunetax.metrics import saliencies

    cell = Cell(args.model, args.dataset, args.seed, (), Protocol(prune_linear=args.include_linear),
                epochs=args.epochs, train_limit=args.train_limit)
    setup = prepare_cell(cell, Env.from_args(args), load_model=baseline_loader(args, metrics), accuracy=False)
    model, data, structure = setup.model, setup.data, setup.structure
    source = setup.info.get("source") or f"baseline {setup.info['path']}"
    if not args.checkpoint:
        check_finite(model, source)
    # what the written files name: a cached baseline by its cache entry, not by this machine's path
    provenance = setup.info.get("source") or f"cached baseline {Path(setup.info['path']).parent.name}"
    x, y = data.eval_x[: args.images], data.eval_y[: args.images]
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, len(y), args.batch_size)]
    result = saliencies(model, structure, batches, metrics)
    # the ids bench writes for these metrics (canonical ids; named metrics by name): they match its results
    ids = [expand_metrics([result.name(m)])[0] for m in result.values]
    scored = sorted({int(u) for p in structure.producers for u in structure.layers[p].out_units.tolist() if u >= 0})
    values = np.stack([result.unit_saliency(m)[torch.tensor(scored)].numpy() for m in result.values])
    return _Saliencies(ids, values, dict(zip(ids, result.values)), setup.info, source, provenance)


def _from_results(args, ids: list[str]) -> dict | None:
    """With ``--results``: what the metrics did on this network and data set there, as
    ``analysis.removal_overlap`` (``overlap``, ``cells``) and ``analysis.rate_gap`` (``gap``,
    ``gap_cells``) give it; None without."""
    if not args.results:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    from prunetax.benchmarks.analysis import rate_gap, removal_overlap
    from prunetax.benchmarks.commands._flags import flag
    from prunetax.benchmarks.results import read_scores, read_trajectories
    from prunetax.taxonomy.errors import PrunetaxError

    def ours(table):
        return table.filter(pc.and_(pc.and_(pc.equal(table.column("network"), args.model),
                                            pc.equal(table.column("dataset"), args.dataset)),
                                    pc.is_in(table.column("metric_id"), value_set=pa.array(ids, pa.string()))))
    with flag("--results", args.results):
        table, scores = read_trajectories(args.results), read_scores(args.results)
    overlap, cells = removal_overlap(ours(table).to_pylist(), ids, args.first)
    gap, gap_cells = rate_gap(ours(scores).to_pylist(), ids)
    if not (cells > 0).any():
        raise PrunetaxError(f"--results {args.results}: no trajectory of these metrics on {args.model} / "
                            f"{args.dataset} with {args.first} steps (--first)")
    return {"overlap": overlap, "cells": cells, "gap": gap, "gap_cells": gap_cells}


def _write_pairs(path, ids: list[str], rho, tau, done: dict | None, meta: dict) -> None:
    """The pairs table: every ordered pair of metrics, its Spearman and Kendall, and with
    ``--results`` (``done``) the overlap of their first removals and their rate gap."""
    import numpy as np
    import pyarrow as pa

    from prunetax.benchmarks.io import write_parquet

    M = len(ids)
    a, b = np.repeat(np.arange(M), M), np.tile(np.arange(M), M)

    def col(m):
        return pa.array([None if np.isnan(v) else float(v) for v in m.ravel()], pa.float64())

    pairs = {"metric_a": pa.array([ids[i] for i in a], pa.string()), "metric_b": pa.array([ids[j] for j in b]),
             "spearman": col(rho), "kendall": col(tau)}
    if done is not None:
        pairs["overlap_first_n"] = col(done["overlap"])
        pairs["overlap_cells"] = pa.array(done["cells"].ravel().astype(np.int64), pa.int64())
        pairs["rate_gap"] = col(done["gap"])
        pairs["rate_cells"] = pa.array(done["gap_cells"].ravel().astype(np.int64), pa.int64())
    write_parquet(pa.table(pairs), str(path), meta)


def _cluster_members(rho, order: list[int], label: list[int]) -> tuple[list[list[int]], list[float | None]]:
    """Each cluster's metrics (in the dendrogram's order) and its mean rho between distinct
    members (None for one metric or no finite rho)."""
    import numpy as np

    members = [[m for m in order if label[m] == c] for c in range(max(label) + 1)]
    inner = []
    for ms in members:
        sub = rho[np.ix_(ms, ms)][~np.eye(len(ms), dtype=bool)]
        inner.append(float(np.nanmean(sub)) if len(ms) > 1 and np.isfinite(sub).any() else None)
    return members, inner


def _write_clusters(path, sal: _Saliencies, order: list[int], label: list[int], members, inner, meta: dict) -> None:
    """The clusters table: one row per metric in the dendrogram's order with its cluster."""
    import pyarrow as pa

    from prunetax.benchmarks.io import write_parquet

    ids = sal.ids
    rows = [{"metric_id": ids[m], "cluster": label[m] + 1, "cluster_size": len(members[label[m]]),
             "order": pos, "cluster_mean_rho": inner[label[m]]} for pos, m in enumerate(order)]
    write_parquet(pa.Table.from_pylist(rows, schema=pa.schema([
        ("metric_id", pa.string()), ("cluster", pa.int64()), ("cluster_size", pa.int64()), ("order", pa.int64()),
        ("cluster_mean_rho", pa.float64())])), str(path), meta)


def _clusters_markdown(args, sal: _Saliencies, rho, members, inner) -> str:
    """The heading and the clusters' table of clusters_*.md."""
    import numpy as np

    from prunetax.benchmarks.io import format_markdown

    ids = sal.ids
    M, U = sal.values.shape
    table = [{"cluster": str(c + 1), "size": str(len(ms)),
              "mean rho": "" if inner[c] is None else f"{inner[c]:.3f}",
              "shared components": _common([sal.specs[ids[m]] for m in ms]),
              "metrics": ", ".join(ids[m] for m in ms)} for c, ms in enumerate(members)]
    off = rho[~np.eye(M, dtype=bool)]
    return (f"# Metric similarity: {args.model} / {args.dataset}\n\n"
            f"{M} metrics ranking {U} units ({sal.provenance}; {args.images} eval images). Spearman's rho between "
            f"every two metrics' unit rankings: median {np.nanmedian(off):.3f}, min {np.nanmin(off):.3f}. Clusters: "
            f"average linkage on 1 - rho, cut where the average rho falls below {args.min_rho:g}.\n\n"
            f"{format_markdown(table, ['cluster', 'size', 'mean rho', 'shared components', 'metrics'])}\n")


def _write_figure(plt, path_stem, formats: list[str], fig, title: str, command: str) -> None:
    """The heatmap in each of ``formats`` (``path_stem``.<format>), with ``command`` in its metadata."""
    from prunetax.benchmarks._version import __version__
    from prunetax.benchmarks.io import atomic_path

    fmeta = {"png": {"Title": title, "Source": command, "Software": f"prunetax {__version__}"},
             "svg": {"Title": title, "Source": command, "Creator": f"prunetax {__version__}", "Date": None},
             "pdf": {"Title": title, "Subject": command, "Creator": f"prunetax {__version__}", "CreationDate": None}}
    for fmt in formats:
        with atomic_path(f"{path_stem}.{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, metadata=fmeta[fmt], bbox_inches="tight")
    plt.close(fig)


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from prunetax.benchmarks._version import __version__
    from prunetax.benchmarks.analysis import alike, clusters, rank_similarity, similarity_figure
    from prunetax.benchmarks.io import atomic_path
    from prunetax.benchmarks.plots import pyplot

    formats, metrics = _checked(args)   # everything that needs no trained network first, as prunetax saliency
    plt = pyplot()  # before the baseline is trained: a missing matplotlib is one line at once
    sal = _saliencies(args, metrics)
    rho, tau = rank_similarity(sal.values)
    order, label = clusters(rho, args.min_rho)
    done = _from_results(args, sal.ids)

    command = command_line(args)
    out, tag = Path(args.out), f"{args.model}_{args.dataset}".replace("/", "-").replace(":", "-")
    M, U = sal.values.shape
    meta = {"prunetax_command": command, "prunetax_version": __version__, "prunetax_source": sal.provenance,
            "prunetax_digest": str(sal.info.get("digest")), "prunetax_images": str(args.images)}
    _write_pairs(out / f"similarity_{tag}.parquet", sal.ids, rho, tau, done, meta)
    members, inner = _cluster_members(rho, order, label)
    _write_clusters(out / f"clusters_{tag}.parquet", sal, order, label, members, inner, meta)
    md, said = _clusters_markdown(args, sal, rho, members, inner), ""
    if done is not None:
        bands, corr = alike(rho, done["overlap"], done["gap"])
        md += "\n" + _alike_section(bands, corr, args.first, args.results)
        said = (f"; rank alike -> prune alike: Spearman of rho with the first-{args.first} overlap "
                f"{_num(corr['rho_vs_overlap'])}, with the rate gap {_num(corr['rho_vs_gap'])}")
    md += f"\n`{command}`\n"
    with atomic_path(out / f"clusters_{tag}.md") as tmp:
        tmp.write_text(md, encoding="utf-8")

    title = (f"{args.model} / {args.dataset}: Spearman's rho between metrics' unit rankings at the baseline\n"
             f"{M} metrics, {U} units, {args.images} images; boxes: clusters with average rho >= {args.min_rho:g}")
    fig = similarity_figure(plt, rho, sal.ids, order, label, title)
    _write_figure(plt, out / f"similarity_{tag}", formats, fig, title, command)
    off = rho[~np.eye(M, dtype=bool)]
    big = max(len(ms) for ms in members)
    print(f"similarity: {M} metrics x {U} units of {args.model} / {args.dataset} ({sal.source}); median rho "
          f"{np.nanmedian(off):.3f}; {sum(len(ms) > 1 for ms in members)} clusters of 2+ at rho >= {args.min_rho:g} "
          f"(largest {big}){said}; wrote {3 + len(formats)} files to {out}")
    return 0


def _num(v, fmt: str = "+.3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _alike_section(bands: list[dict], corr: dict, first: int, results) -> str:
    """The markdown of ``analysis.alike``: rank alike, prune alike?"""
    from prunetax.benchmarks.io import format_markdown

    rows = [{"rho": (f">= {b['rho_low']:g}" if b["rho_high"] is None else f"[{b['rho_low']:g}, {b['rho_high']:g})"),
             "pairs": str(b["pairs"]), "mean rho": _num(b["mean_rho"], ".3f"),
             f"overlap of first {first}": f"{_num(b['mean_overlap'], '.3f')} ({b['overlap_pairs']})",
             "rate gap (points)": f"{_num(b['mean_gap'], '.2f')} ({b['gap_pairs']})"} for b in bands]
    return (f"## Do metrics that rank alike prune alike?\n\n"
            f"Pairs of distinct metrics by their rho at the baseline, against what {results} shows they did: the "
            f"overlap of their first {first} removals and the gap between their rates (|rate a - rate b|, "
            f"points of % conv weights removed), each averaged over the cells where both ran (the pairs "
            f"behind each mean in brackets). Across pairs, Spearman's correlation of rho with the overlap: "
            f"{_num(corr['rho_vs_overlap'])} ({corr['overlap_pairs']} pairs); with the rate gap: "
            f"{_num(corr['rho_vs_gap'])} ({corr['gap_pairs']} pairs).\n\n"
            + format_markdown(rows, ["rho", "pairs", "mean rho", f"overlap of first {first}", "rate gap (points)"]))
