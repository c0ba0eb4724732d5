"""Host syncs and kernel launches per pruning step, counted on any device (no GPU needed).

    python -m prunetax.benchmarks.perf.step_overhead                                # lenet5, 13 metrics
    python -m prunetax.benchmarks.perf.step_overhead --model resnet20 --metrics paper --steps 2

On a GPU a step of the harness pays, besides its FLOPs, a few microseconds of CPU per aten op
(kernel launch) and a pipeline drain per host sync (``.item()``, ``bool(t)``, ``.tolist()``,
boolean-mask indexing...). Both are exact counts, the same on a CPU as on a GPU for the same
code path, so they can be measured and reduced here. The harness runs with the GPU's code path
(``Measurement(evaluator="masked")``: K masks per batched test pass) on randomly initialised
weights, with the threshold out of reach (baseline 0 %) so that no trajectory stops early, for
``--steps`` steps after one warm-up step; the script prints the counts per step and their call
sites, and the CPU wall time of a step (which on a CPU is mostly arithmetic, not overhead). A
second run of the same steps on one saliency image and one test image, under torch.profiler,
gives the *host Python time* per step: wall time minus the time inside top-level aten
operators, which a faster device cannot remove (an upper bound: the profiler adds a little per
operator). On a GPU a step costs at least that plus a few microseconds of launch per op.
Last line: ``syncs/step: S ops/step: O device-less factories/step: F host Python s/step: H``.
"""
from __future__ import annotations

import argparse
import platform
import time
from types import SimpleNamespace

import torch


class _Stop(Exception):
    pass


class _Profiled:
    """Stands in for an Audit: runs the counted steps under torch.profiler (CPU activity)."""

    def __enter__(self):
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.prof.__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.prof.__exit__(*exc)
        return False


def build(model_name: str, dataset: str, test_images: int, eval_images: int, seed: int, device):
    """A randomly initialised zoo model as a ``prunetax.benchmarks.protocol.Network`` (its
    structure, masked copy and a small data set; seed 0, baseline accuracy 0 %: the threshold is
    out of reach)."""
    from prunetax.benchmarks.data import load_dataset
    from prunetax.benchmarks.models import create_model
    from prunetax.benchmarks.protocol import Network
    from prunetax.metrics import MaskedModel, analyze

    data = load_dataset(dataset, eval_size=max(eval_images, 1), seed=0, device=device)
    torch.manual_seed(seed)
    model = create_model(model_name, in_channels=data.test_x.shape[1], num_classes=data.num_classes,
                         input_size=data.test_x.shape[-1]).to(device).eval()
    for m in model.modules():          # random BatchNorm statistics, as a trained net would have
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    for prm in model.parameters():
        prm.requires_grad_(False)
    small = SimpleNamespace(eval_x=data.eval_x[:eval_images], eval_y=data.eval_y[:eval_images],
                            test_x=data.test_x[:test_images], test_y=data.test_y[:test_images])
    full = analyze(model, small.test_x[:1])
    return Network(model, full.restricted(("conv",)), MaskedModel(model, full), small, 0, 0.0)


def run_steps(network, metrics, protocol, steps: int, evaluator: str, audit=None):
    """Run the harness on ``network`` for ``steps`` steps (plus one warm-up step outside ``audit``)."""
    from prunetax.benchmarks.cell import Measurement
    from prunetax.benchmarks.protocol import CellPruning

    state = {"t": None}

    def progress(step, pending, K):
        if step == 1 and audit is not None:          # step 1 warms up caches; count from step 2
            state["cm"] = audit.__enter__()
            state["t"] = time.perf_counter()
        if step == steps + 1:
            raise _Stop
    try:
        CellPruning(network, metrics, protocol, Measurement(evaluator=evaluator), progress=progress).run()
    except _Stop:
        pass
    finally:
        if audit is not None and "cm" in state:
            audit.__exit__(None, None, None)
    return time.perf_counter() - state["t"] if state["t"] else float("nan")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--metrics", default="quick", help="a preset, 'quick' (grids/quick.toml's 13), ids, or a glob")
    ap.add_argument("--steps", type=int, default=3, help="steps counted (after one warm-up step)")
    ap.add_argument("--schedule", default="exact", choices=("exact", "fast"))
    ap.add_argument("--evaluator", default="masked", choices=("masked", "slim"))
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=64, help="saliency images per batch (1 batch per step)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=15, help="call sites listed")
    ap.add_argument("--cpu-chunks", action="store_true",
                    help="keep the CPU's small per-image chunks (by default the counts use the GPU's chunk "
                         "size, prunetax.metrics.engine.stream.GPU_WEIGHT_CHUNK_BYTES, as a GPU run would)")
    ap.add_argument("--no-host-floor", dest="host_floor", action="store_false",
                    help="skip the second, profiled run on one image (the host's Python time per step)")
    return ap.parse_args(argv)


def metric_list(text: str) -> list[str]:
    """The metrics of ``--metrics``: 'quick' is grids/quick.toml's list; anything else as
    ``gpu_cell.resolve_metric_list`` reads it."""
    from prunetax.benchmarks.perf.gpu_cell import resolve_metric_list

    if text == "quick":
        import tomllib
        from pathlib import Path
        grid = tomllib.loads((Path(__file__).resolve().parents[2] / "grids" / "quick.toml").read_text())
        text = ",".join(grid["metrics"])
    return resolve_metric_list(text)


def host_floor(network, metrics, args) -> float:
    """The host's own work per step, in seconds: the same steps on one saliency image and one
    test image under torch.profiler; the wall time minus the time inside top-level aten operators
    (their dispatch and arithmetic) is the Python around them: building the passes, dictionaries,
    loops over layers and metrics. No faster device removes it; profiling adds a little per
    operator, so it is an upper bound."""
    from prunetax.benchmarks.cell import Protocol

    data, n = network.data, args.steps
    tiny = SimpleNamespace(eval_x=data.eval_x[:1], eval_y=data.eval_y[:1], test_x=data.test_x[:1],
                           test_y=data.test_y[:1])
    p1 = Protocol(schedule=args.schedule, saliency_batches=1, batch_size=1, threshold=99.0, test_images=1)
    prof = _Profiled()
    run_steps(network.replace(data=tiny), metrics, p1, n, args.evaluator, prof)
    inside = sum(e.cpu_time_total for e in prof.prof.events() if e.cpu_parent is None) / 1e6
    floor = (prof.wall - inside) / n
    print(f"host Python per step: {floor:.3f} s (torch.profiler, 1 saliency image and 1 test image: "
          f"{prof.wall / n:.3f} s wall, {inside / n:.3f} s inside aten operators)")
    return floor


def main(argv=None) -> int:
    from prunetax.benchmarks.cell import Protocol
    from prunetax.benchmarks.perf.audit import Audit
    from prunetax.benchmarks.protocol import resolve_metrics
    from prunetax.benchmarks.training import resolve_device

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    if not args.cpu_chunks:
        import prunetax.metrics.engine.stream as engine_stream   # the engine's chunk-size setting
        engine_stream.WEIGHT_CHUNK_BYTES = engine_stream.GPU_WEIGHT_CHUNK_BYTES
    network = build(args.model, args.dataset, args.test_images, 4 * args.batch_size, 0, dev)
    st = network.structure
    metrics = [t.name for t in resolve_metrics(metric_list(args.metrics), st)]
    proto = Protocol(schedule=args.schedule, saliency_batches=1, batch_size=args.batch_size, threshold=99.0,
                     test_images=args.test_images)
    print(f"# step_overhead: {args.model} / {args.dataset} (random weights), {len(metrics)} metrics, "
          f"{st.num_units} units, schedule {args.schedule}, evaluator {args.evaluator}, "
          f"{args.batch_size} saliency images, {len(network.data.test_y)} test images, "
          f"{'CPU' if args.cpu_chunks else 'GPU'} chunk sizes; device {dev} "
          f"({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}", flush=True)
    audit = Audit()
    wall = run_steps(network, metrics, proto, args.steps, args.evaluator, audit)
    n = args.steps
    print(f"per step (mean of {n} steps after a warm-up step): {audit.sync_count / n:.1f} host syncs, "
          f"{audit.ops / n:.0f} aten ops (+ {audit.views / n:.0f} views), "
          f"{audit.factory_count / n:.1f} device-less factory calls, {wall / n:.2f} s wall on this device")
    print("host syncs per step, by call site:")
    print("\n".join(audit.by_site(audit.syncs, n, args.top)) or "  none")
    print("aten ops per step, by call site:")
    print("\n".join(audit.by_site(audit.op_sites, n, args.top)))
    print("device-less factory calls per step, by call site:")
    print("\n".join(audit.by_site(audit.factories, n, args.top)) or "  none")
    floor = host_floor(network, metrics, args) if args.host_floor else float("nan")
    print(f"syncs/step: {audit.sync_count / n:.1f} ops/step: {audit.ops / n:.0f} "
          f"device-less factories/step: {audit.factory_count / n:.1f} host Python s/step: {floor:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
