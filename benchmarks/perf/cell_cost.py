"""Issue 13: cheaper cells -- shared masks and the sequential test, measured on one cell.

    python -m prunetax.benchmarks.perf.cell_cost --size tiny         # seconds; what the test runs
    python -m prunetax.benchmarks.perf.cell_cost --size lenet5       # lenet5 x paper-308, fast
    python -m prunetax.benchmarks.perf.cell_cost --size resnet20 --only-on   # resnet20 x paper-308, exact, small counts
    python -m prunetax.benchmarks.perf.cell_cost --size resnet20 --device cuda --saliency-images 256 --test-images 0

Runs one cell twice in one process, on one prepared baseline: first with the sharing of equal
masks and the sequential test off (``Measurement(share=False)`` and
``Protocol(sequential_test=False)``: one saliency pass row and one whole-test-set pass per
trajectory, as before issue 13), then with both on (the defaults). It checks that every score
is equal (each metric's removed units, crossing rates, crossing step, crossed, final accuracy)
and prints for each run the image-passes of the saliency passes, of the oracle's candidates and
of the test passes, the FLOP-weighted work (image-passes x the MACs of the mask each went
through; a saliency pass counts 3 forwards, as docs/gpu.md counts it), the wall time and the load
average, then one line per ratio (off / on) ending ``ratio: X``.

The saliency counts scale with the saliency images; the test counts do not: the sequential test
stops after a number of images set by the accuracy's distance to the target and the error bound,
not by the test set's size, so its saving grows with the test set (see docs/performance.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

import torch

# 8 + 6 metrics of two signal groups (masks coincide within a group, and a shared pass saves rows
# only in a group of more than BLAS_BLOCK trajectories: protocol.saliency_pass), weight values, random
TINY_METRICS = tuple(f"activation-taylor-{r}-{c}" for r in ("l1", "l2") for c in ("none", "elements", "layer_l1",
                                                                                    "layer_l2")) + \
    tuple(f"weight-gradient-{r}-{c}" for r in ("l1", "l2") for c in ("none", "elements", "layer_l1")) + \
    ("weight-value-l1-none", "weight-value-l2-none", "random")

SIZES = {
    # network, training (epochs, limit; None: the recipe's), metrics, schedule, saliency images
    # (batches x batch size), test images (0: all), threshold, units per step
    "tiny": dict(network="lenet5", epochs=1, limit=1500, metrics=",".join(TINY_METRICS), schedule="fast",
                 saliency_batches=1, batch_size=32, test_images=500, threshold=5.0, units_per_step=2),
    "lenet5": dict(network="lenet5", epochs=None, limit=None, metrics="paper", schedule="fast",
                   saliency_batches=1, batch_size=32, test_images=2000, threshold=5.0, units_per_step=1),
    # resnet20: the authors' one unit per step (longer trajectories: most tests are of masks far above
    # the target), a 2-epoch baseline on all images, 2,000 test images; 2 saliency images (the
    # tests are 99.9 % of the FLOPs). Its 'on' run takes about 45 min on one CPU thread, its 'off'
    # run about four times that: use --only-on here.
    "resnet20": dict(network="resnet20", epochs=2, limit=None, metrics="paper", schedule="exact",
                     saliency_batches=1, batch_size=2, test_images=2000, threshold=5.0, units_per_step=1),
}
_COMPARED = ("conv_weights_removed_pct", "channels_removed_pct", "macs_removed_pct", "steps", "crossed",
             "final_accuracy", "ran_as")


def _load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def run_once(setup, share: bool, sequential: bool, progress: bool = False):
    """One run of the prepared cell with sharing and the sequential test as given: its score
    rows, trajectories, work (``CellPruning.work``), wall seconds and the load after it."""
    from prunetax.benchmarks.cell import Measurement
    from prunetax.benchmarks.protocol import CellPruning, Network, cell_rows

    cell = dataclasses.replace(setup.cell, protocol=dataclasses.replace(setup.cell.protocol,
                                                                         sequential_test=sequential))
    setup = dataclasses.replace(setup, cell=cell)
    load0 = os.getloadavg()[0]

    def show(step, pending, K):
        if progress and (step % 10 == 0 or pending == 0):
            print(f"  step {step}: {pending}/{K} running, {time.perf_counter() - t0:.0f} s, {_load()}",
                  file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    run = CellPruning(Network.of(setup), cell.metrics, cell.protocol, Measurement(share=share), progress=show)
    run.run()
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)
    wall = time.perf_counter() - t0
    rows, trajs = cell_rows(setup, run, wall)
    return rows, run.results(), run.work(), wall, (load0, os.getloadavg()[0])


def flop_work(w: dict) -> float:
    """FLOP-weighted work in forward-MACs: a saliency pass (forward + backward) counts 3 forwards."""
    return 3 * w["saliency_macs"] + w["oracle_macs"] + w["test_macs"]


def counted_off(w: dict) -> dict:
    """The work of the 'off' run as the 'on' run counted it (the passes without sharing, every test
    on the whole test set): equal to the 'off' run's own counts when the trajectories are equal."""
    return {"saliency_images": w["saliency_images_unshared"], "saliency_macs": w["saliency_macs_unshared"],
            "oracle_images": w["oracle_images_unshared"], "oracle_macs": w["oracle_macs_unshared"],
            "test_images": w["test_images_exhaustive"], "test_macs": w["test_macs_exhaustive"]}


def compare(rows_a, trajs_a, rows_b, trajs_b) -> list[str]:
    """The metrics whose scores or removed units differ between two runs."""
    bad = []
    by_b = {r["metric_id"]: r for r in rows_b}
    tb = {t.name: t for t in trajs_b}
    for r in rows_a:
        other = by_b.get(r["metric_id"])
        if other is None or any(r[c] != other[c] for c in _COMPARED):
            bad.append(r["metric_id"])
    for t in trajs_a:
        if t.name in tb and (t.removed != tb[t.name].removed) and t.name not in bad:
            bad.append(t.name)
    return bad


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--metrics", help="a preset, ids or a glob over the paper's ids (default: the size's)")
    ap.add_argument("--schedule", choices=("fast", "exact"))
    ap.add_argument("--saliency-images", type=int, help="saliency images per step (one batch)")
    ap.add_argument("--test-images", type=int, help="test images (0: all)")
    ap.add_argument("--units-per-step", type=int)
    ap.add_argument("--epochs", type=int, help="baseline training epochs (default: the size's)")
    ap.add_argument("--train-limit", type=int, help="train on the first N images (0: all)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--cache-dir", help="baseline cache (default: $PRUNETAX_CACHE)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="a line every 10 steps on stderr")
    ap.add_argument("--only-on", action="store_true",
                    help="run only with the levers on, and read the 'off' work from its counts of what the "
                         "passes would have been without them (for sizes whose 'off' run is too long here; "
                         "no score comparison, no wall ratio)")
    return ap.parse_args(argv)


def make_cell(args):
    """The cell of ``--size`` with the command line's overrides."""
    from prunetax.benchmarks.cell import Cell, Protocol
    from prunetax.benchmarks.perf.gpu_cell import resolve_metric_list

    size = dict(SIZES[args.size])
    for key, value in (("metrics", args.metrics), ("schedule", args.schedule), ("units_per_step", args.units_per_step),
                       ("test_images", args.test_images), ("epochs", args.epochs), ("limit", args.train_limit)):
        if value is not None:
            size[key] = value or None if key in ("epochs", "limit") else value
    if args.saliency_images:
        size["saliency_batches"], size["batch_size"] = 1, args.saliency_images
    metrics = tuple(resolve_metric_list(size["metrics"]))
    protocol = Protocol(threshold=size["threshold"], schedule=size["schedule"],
                        saliency_batches=size["saliency_batches"], batch_size=size["batch_size"],
                        test_images=size["test_images"], units_per_step=size["units_per_step"])
    return Cell(size["network"], args.dataset, args.seed, metrics, protocol, epochs=size["epochs"],
                train_limit=size["limit"])


def describe(args, setup) -> None:
    """The machine and the cell, two lines."""
    cell = setup.cell
    protocol = cell.protocol
    print(f"# {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {setup.device}")
    trained = ("the recipe's training" if cell.epochs is None
               else f"{cell.epochs} epoch(s) on {cell.train_limit or 'all'} images")
    print(f"# {args.size}: {cell.network}/{cell.dataset} (baseline {setup.baseline_accuracy:.2f} %, {trained}), "
          f"{len(cell.metrics)} metrics, {protocol.schedule} schedule, {protocol.units_per_step} unit(s) per step, "
          f"{protocol.saliency_batches * protocol.batch_size} saliency images per step, {len(setup.test_y)} test "
          f"images, threshold {protocol.threshold}, target {protocol.target(setup.baseline_accuracy):.2f} %, "
          f"sequential_delta {protocol.sequential_delta:g}")


def run_both(args, setup) -> dict:
    """The 'off' run (unless ``--only-on``) and the 'on' run, each with a line of its work:
    {name: (rows, trajectories, work, wall seconds)}."""
    runs = {}
    for name, share, seq in (("off", False, False), ("on", True, True)):
        if name == "off" and args.only_on:
            continue
        rows, trajs, work, wall, (l0, l1) = run_once(setup, share, seq, args.progress)
        runs[name] = (rows, trajs, work, wall)
        steps = max(len(t.rates) - 1 for t in trajs)
        print(f"{name:>3} (share={share}, sequential_test={seq}): {steps} steps; "
              f"saliency {work['saliency_images']:,} image-passes ({work['saliency_macs']:.3g} MAC); "
              f"oracle {work['oracle_images']:,} ({work['oracle_macs']:.3g} MAC); "
              f"test {work['test_images']:,} ({work['test_macs']:.3g} MAC; whole test set every time: "
              f"{work['test_images_exhaustive']:,}); work {flop_work(work):.3g} forward-MAC; "
              f"wall {wall:.1f} s (load {l0:.1f} before, {l1:.1f} after); "
              f"decisions overturned {work['test_decisions_reversed']}", flush=True)
    return runs


def off_run(runs: dict) -> tuple[dict, float | None, list[str]]:
    """``(work, wall seconds, metrics that differ)`` of the 'off' run, checked against the 'on'
    run; without an 'off' run (``--only-on``), the 'on' run's counts of the passes without the
    levers, no wall time and no check."""
    rb, tb, wb, _ = runs["on"]
    counted = counted_off(wb)
    if "off" not in runs:
        print("off: not run (--only-on); its work is the 'on' run's count of the passes without sharing and "
              "on the whole test set: " + ", ".join(f"{k} {v:.4g}" for k, v in counted.items()))
        return counted, None, []
    ra, ta, wa, sa = runs["off"]
    bad = compare(ra, ta, rb, tb)
    same = all(wa[k] == counted[k] for k in counted if k.endswith("_images"))
    print(f"scores: {len(ra) - len(bad)} of {len(ra)} metrics equal (removed units, crossing rates, step, "
          f"crossed, final accuracy){'; differ: ' + ', '.join(bad[:8]) if bad else ''}")
    print(f"the 'on' run's counts of the passes without the levers equal the 'off' run's image-passes: {same}")
    return wa, sa, bad + ([] if same else ["(counts)"])


def print_ratios(wa: dict, sa: float | None, wb: dict, sb: float) -> None:
    """One line per ratio off / on, each ending ``ratio: X`` (the wall time's only with an 'off' run)."""
    def ratio(a, b):
        return a / b if b else float("inf")
    print(f"saliency image-passes off/on: {wa['saliency_images']:,} / {wb['saliency_images']:,} "
          f"ratio: {ratio(wa['saliency_images'], wb['saliency_images']):.2f}")
    print(f"test image-passes off/on: {wa['test_images']:,} / {wb['test_images']:,} "
          f"ratio: {ratio(wa['test_images'], wb['test_images']):.2f}")
    print(f"test MAC-weighted off/on: {wa['test_macs']:.3g} / {wb['test_macs']:.3g} "
          f"ratio: {ratio(wa['test_macs'], wb['test_macs']):.2f}")
    print(f"FLOP-weighted work off/on: {flop_work(wa):.3g} / {flop_work(wb):.3g} "
          f"ratio: {ratio(flop_work(wa), flop_work(wb)):.2f}")
    if sa is not None:
        print(f"wall time off/on ({_load()}): {sa:.1f} s / {sb:.1f} s ratio: {ratio(sa, sb):.2f}")
    else:
        print(f"wall time on ({_load()}): {sb:.1f} s (off not run: no ratio)")


def main(argv=None) -> int:
    from prunetax.benchmarks.setup import Env, prepare_cell

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = prepare_cell(make_cell(args), Env(args.device, args.cache_dir))
    describe(args, setup)
    runs = run_both(args, setup)
    wa, sa, bad = off_run(runs)
    _, _, wb, sb = runs["on"]
    print_ratios(wa, sa, wb, sb)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
