"""The pruning protocol: batched equals one-at-a-time, fast equals exact, crossings by hand."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch

from prunetax.benchmarks.cell import Cell, Measurement, Protocol
from prunetax.benchmarks.protocol import CellPruning, Network, Pruner, Pruning, Trajectory, crossing
from prunetax.benchmarks.setup import Env, prepare_cell
from prunetax.metrics import MaskedModel, analyze, saliencies
from prunetax.taxonomy import parse_metric
from prunetax.taxonomy.errors import PrunetaxError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(cache):
    """A LeNet-5 trained briefly on 1,500 MNIST images (float64), with a small test set."""
    from prunetax.benchmarks.data import load_dataset
    from prunetax.benchmarks.training import evaluate, train_baseline

    data = load_dataset("mnist", eval_size=5000, seed=0)
    model, _ = train_baseline("lenet5", data, 0, epochs=1, env=Env("cpu", cache), progress=False, limit=1500)
    model = model.double().eval()
    small = SimpleNamespace(eval_x=data.eval_x[:600].double(), eval_y=data.eval_y[:600],
                            test_x=data.test_x[:200].double(), test_y=data.test_y[:200])
    full = analyze(model, small.test_x[:1])
    base = evaluate(model, small.test_x, small.test_y)
    return model, full.restricted(("conv",)), small, base, MaskedModel(model, full)


def _network(trained, **changes) -> Network:
    model, st, data, base, masked = trained
    return Network(model, st, masked, data, 0, base).replace(**changes)


def _pruner(trained, protocol=None, share=True, **changes) -> Pruner:
    return Pruner(_network(trained, **changes), protocol or Protocol(), Measurement(share=share))


def _prune(network, metrics, protocol, **measurement):
    return CellPruning(network, metrics, protocol, Measurement(**measurement)).run()


def _run(trained, metrics, evaluator=None, **proto):
    p = Protocol(**{"saliency_batches": 1, "batch_size": 16, "threshold": 5.0, **proto})
    trajs = _prune(_network(trained), metrics, p, evaluator=evaluator)
    return {t.name: t for t in trajs}, trained[3]


METRICS = ["weight-value-l2-weights_removed", "activation-taylor-abs_sum-elements", "random"]


def test_batched_equals_one_metric_at_a_time(trained):
    together, _ = _run(trained, METRICS, schedule="exact")
    for m in METRICS:
        alone, _ = _run(trained, [m], schedule="exact")
        assert alone[m].removed == together[m].removed, m
        assert alone[m].accuracy == pytest.approx(together[m].accuracy)


def test_max_trajectories_chunks_without_changing_the_result(trained):
    st, data = trained[1], trained[2]
    pr, chunked = _pruner(trained), _pruner(trained, Protocol(max_trajectories=1))
    ms = [parse_metric(m) for m in ("activation-taylor-abs_sum-elements", "activation-taylor-l2-none")]
    keep = torch.ones(2, st.num_units, dtype=torch.bool)
    keep[1, :4] = False
    x, y = data.eval_x[:16], data.eval_y[:16]
    assert torch.equal(pr.saliency.unit_saliencies(ms, keep, x, y), chunked.saliency.unit_saliencies(ms, keep, x, y))


def test_fast_equals_exact_within_one_step(trained):
    exact, base = _run(trained, METRICS, schedule="exact")
    fast, _ = _run(trained, METRICS, schedule="fast")
    target = base - 5.0
    for m in METRICS:
        (r_exact, s_exact), (r_fast, s_fast) = crossing(exact[m], target), crossing(fast[m], target)
        assert s_exact is not None and abs(s_exact - s_fast) <= 1, m
        if s_exact == s_fast:
            assert r_fast == pytest.approx(r_exact)
        assert len(fast[m].tested) < len(exact[m].tested) or len(exact[m].tested) < 30


def test_crossing_is_linear_interpolation_by_hand():
    t = Trajectory("m", "random", "random")
    t.rates = [(0.0, 0.0, 0.0), (10.0, 5.0, 8.0), (30.0, 15.0, 20.0), (50.0, 20.0, 40.0)]
    t.accuracy = {0: 90.0, 1: 89.0, 2: 87.0, 3: 80.0}
    rates, step = crossing(t, 85.0)          # between step 2 (87) and 3 (80): t = 2/7
    assert step == 3
    assert rates == pytest.approx((30 + 2 / 7 * 20, 15 + 2 / 7 * 5, 20 + 2 / 7 * 20))
    assert crossing(t, 70.0) == (None, None)


def test_target_by_hand():
    assert Protocol(threshold=5.0).target(90.0) == 85.0                     # 5 points below
    assert Protocol(threshold=5.0, relative=True).target(90.0) == 85.5      # 5 % of 90 = 4.5 points
    assert Protocol(threshold=2.5, relative=True).target(80.0) == 78.0      # 2.5 % of 80 = 2 points
    assert Protocol(threshold=0.5).target(99.25) == 98.75


def test_the_loop_steps_once_per_call_and_runs_its_after_step_strategy(trained):
    st, base = trained[1], trained[3]
    p = Protocol(saliency_batches=1, batch_size=16, threshold=5.0, relative=True, schedule="exact")
    pr = _pruner(trained, p)
    calls = []
    pruning = Pruning(pr, ["weight-value-l1-none", "filter_l1", "random"], base,
                      after_step=lambda keep_row: calls.append(int(keep_row.sum())))
    assert pruning.target == p.target(base) and len(pruning.active) == 2     # filter_l1 runs as the spec
    pruning.step()
    assert pruning.step_no == 1 and calls == [st.num_units - 1] * 2
    assert all(len(t.step_end) == 2 and len(t.removed) == 1 for t in pruning.active)
    while pruning.pending:
        pruning.step()
    got = {t.name: t for t in pruning.results()}
    assert got["filter_l1"].removed == got["weight-value-l1-none"].removed
    steps = sum(len(t.step_end) - 1 for t in pruning.active)
    assert len(calls) == steps                                               # once per pending trajectory and step
    alone = _prune(_network(trained), ["weight-value-l1-none", "random"], p)
    for t in alone:                                                          # a hook that changes nothing changes nothing
        assert t.removed == got[t.name].removed and t.accuracy == got[t.name].accuracy


def test_prepare_cell_is_the_trained_model_on_the_test_subset(trained, cache):
    from prunetax.benchmarks.training import evaluate, train_baseline

    cell = Cell("lenet5", "mnist", 0, ("random",), Protocol(test_images=300), epochs=1, train_limit=1500)
    s = prepare_cell(cell, Env("cpu", cache))
    assert s.info["cached"] and s.device == torch.device("cpu") and s.cell is cell
    by_hand, _ = train_baseline("lenet5", s.data, 0, epochs=1, env=Env("cpu", cache), progress=False, limit=1500)
    assert s.baseline_accuracy == evaluate(by_hand, s.data.test_x[:300], s.data.test_y[:300])
    assert torch.equal(s.test_x, s.data.test_x[:300]) and len(s.test_y) == 300
    assert not s.model.training and not any(prm.requires_grad for prm in s.model.parameters())
    assert [s.structure.layers[q].kind for q in s.structure.producers] == ["conv", "conv"]
    assert len(s.full_structure.producers) > len(s.structure.producers) and s.masked.structure is s.full_structure
    linear = prepare_cell(Cell("lenet5", "mnist", 0, (), Protocol(prune_linear=True), 1, 1500), Env("cpu", cache),
                          load_model=lambda data, dev: (s.model, {"source": "here"}), accuracy=False)
    assert linear.structure is linear.full_structure and linear.baseline_accuracy is None
    assert linear.info == {"source": "here"} and len(linear.test_y) == len(linear.data.test_y)


def test_one_shot_follows_the_baseline_ranking(trained):
    model, st, data, _, _ = trained
    m = "weight-value-l1-none"
    got, _ = _run(trained, [m], schedule="exact", one_shot=True)
    order = torch.argsort(saliencies(model, st, [(data.eval_x[:32], data.eval_y[:32])], [m])
                          .unit_saliency(parse_metric(m)), stable=True).tolist()
    removed = got[m].removed
    assert removed == [u for u in order if u in set(removed)][: len(removed)]


def test_no_layer_is_ever_emptied(trained):
    st = trained[1]
    pr = _pruner(trained)
    keep = torch.ones(1, st.num_units, dtype=torch.bool)
    first = st.layers[st.producers[0]].out_units     # conv1: 20 single-channel units
    keep[0, first[1:]] = False                         # one channel of conv1 left
    ok = pr.removable(keep)[0]
    assert not bool(ok[first[0]])                      # its last unit may not go
    assert bool(ok[st.layers[st.producers[1]].out_units[0]])
    assert not bool(ok[first[1]])                      # removed units are not removable either
    fc = st.layers["5"].out_units                      # LeNet-5's fc1: a linear producer, not scored
    assert not bool(ok[fc].any())


def test_rates_count_conv_weights_by_hand(trained):
    st = trained[1]
    pr = _pruner(trained)
    keep = torch.ones(1, st.num_units, dtype=torch.bool)
    keep[0, st.layers[st.producers[0]].out_units[0]] = False   # one conv1 channel of LeNet-5
    conv, channels, _ = pr.rates(keep)[0]
    # conv1 1x5x5x20 = 500, conv2 20x5x5x50 = 25,000; one conv1 filter (25) and its conv2 slice (50x25)
    assert conv == pytest.approx(100 * (25 + 50 * 25) / 25500)
    assert channels == pytest.approx(100 * 1 / 70)


def test_retrain_mode_trains_a_copy_and_with_zero_steps_equals_no_retraining(trained):
    from prunetax.benchmarks.data import load_dataset

    model, st, data, base, masked = trained
    d = load_dataset("mnist")
    data = SimpleNamespace(**vars(data), train_x=d.train_x[:512].double(), train_y=d.train_y[:512])
    before = copy.deepcopy(model.state_dict())
    p0 = Protocol(saliency_batches=1, batch_size=16, threshold=1.0, schedule="exact")
    net = _network(trained, data=data)
    plain = _prune(net, ["weight-value-l1-none"], p0)[0]
    p1 = Protocol(saliency_batches=1, batch_size=16, threshold=1.0, mode="retrain", retrain_steps=0)
    zero = _prune(net, ["weight-value-l1-none"], p1)[0]
    assert zero.removed == plain.removed
    p2 = Protocol(saliency_batches=1, batch_size=16, threshold=1.0, mode="retrain", retrain_steps=2)
    _prune(net, ["weight-value-l1-none"], p2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the baseline is untouched


@pytest.mark.parametrize("schedule", ["exact", "fast"])
def test_gpu_code_path_equals_cpu_code_path(trained, schedule):
    """evaluator="masked" (the GPU's batched test passes, whole brackets in one pass) run here on
    the CPU gives the trajectories and accuracies of the slimmed-network evaluator."""
    slim_run, _ = _run(trained, METRICS, schedule=schedule, evaluator="slim", threshold=2.0)
    masked_run, _ = _run(trained, METRICS, schedule=schedule, evaluator="masked", threshold=2.0)
    for m in METRICS:
        a, b = slim_run[m], masked_run[m]
        assert a.removed == b.removed and a.step_end == b.step_end, m
        if schedule == "exact":
            assert set(a.accuracy) == set(b.accuracy), m
        for s in set(a.accuracy) & set(b.accuracy):
            assert a.accuracy[s] == pytest.approx(b.accuracy[s], abs=1e-9), (m, s)


def test_a_step_costs_a_constant_number_of_host_syncs_and_no_host_tensors(trained):
    """On the GPU code path a step needs at most 3 device-to-host transfers (the units removed;
    the rates with 'anything left'; the accuracies), however many trajectories run, and no
    tensor is created on the host by accident (a factory without device=)."""
    from prunetax.benchmarks.perf.audit import Audit

    metrics = METRICS + ["weight-value-l1-none", "activation-taylor-abs_sum-weights_removed-domino_io"]
    with Audit(op_sites=False) as a:
        run, _ = _run(trained, metrics, schedule="exact", evaluator="masked", threshold=2.0, sequential_test=False)
    steps = max(len(t.step_end) - 1 for t in run.values())
    assert a.factory_count == 0, a.factories
    assert steps > 5 and a.sync_count <= 3 * steps + 10, (steps, a.syncs.most_common(8))
    # the sequential test: one transfer per chunk of test images read (7 chunks of the 200 here),
    # and as many again for the steps completed when trajectories leave
    with Audit(op_sites=False) as a:
        run, _ = _run(trained, metrics, schedule="exact", evaluator="masked", threshold=2.0)
    steps = max(len(t.step_end) - 1 for t in run.values())
    assert a.factory_count == 0, a.factories
    assert steps > 5 and a.sync_count <= (2 + 2 * 7) * steps + 10, (steps, a.syncs.most_common(8))
    with Audit(op_sites=False) as a:                  # the oracle and one-shot paths: no host tensors
        _run(trained, ["oracle", "weight-value-l1-none"], schedule="fast", evaluator="masked", threshold=2.0,
             oracle_candidates=4)
        _run(trained, ["activation-taylor-abs_sum-elements"], schedule="fast", evaluator="masked", threshold=2.0,
             one_shot=True)
    assert a.factory_count == 0, a.factories


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run in a GPU session: docs/gpu.md)")
def test_cuda_run_equals_cpu_run(trained):
    """The whole harness on a GPU (float64, so no TF32 rounding) removes the same units and
    measures the same accuracies as on the CPU."""
    model, st, data, base, masked = trained
    cpu, _ = _run(trained, METRICS, schedule="fast", evaluator="masked")
    dev = torch.device("cuda")
    gmodel = copy.deepcopy(model).to(dev)
    gdata = SimpleNamespace(**{k: v.to(dev) for k, v in vars(data).items()})
    full = analyze(gmodel, gdata.test_x[:1])
    p = Protocol(saliency_batches=1, batch_size=16, threshold=5.0, schedule="fast")
    net = Network(gmodel, full.restricted(("conv",)), MaskedModel(gmodel, full), gdata, 0, base)
    gpu = {t.name: t for t in _prune(net, METRICS, p)}
    for m in METRICS:
        assert gpu[m].removed == cpu[m].removed, m
        for s in cpu[m].accuracy:
            assert gpu[m].accuracy.get(s, cpu[m].accuracy[s]) == pytest.approx(cpu[m].accuracy[s], abs=1e-9), (m, s)


# -- issue 13: shared masks and the sequential test ---------------------------------------------------

SHARED = ["weight-gradient-l1-none", "weight-gradient-l2-weights_removed", "activation-taylor-abs_sum-elements",
          "activation-taylor-l2-none", "weight-value-l1-none", "weight-value-l2-none",
          "activation-value-l1-elements"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_saliency_passes_equal_one_row_per_trajectory(trained, threads, dtype):
    """Trajectories with equal masks share one row of their signal group's pass (weight
    gradients split into passes of 5 images here, weight values, activations), and each gets
    the bits of its own row in the unshared pass, in float32 and float64, on 1 and 2 threads;
    the shared pass reads fewer image-rows."""
    model, st, data, _, masked = trained
    model = copy.deepcopy(model).to(dtype)
    masked = MaskedModel(model, masked.structure)
    x, y = data.eval_x[:45].to(dtype), data.eval_y[:45]
    g = torch.Generator().manual_seed(3)
    scored = torch.nonzero(_pruner(trained, model=model, masked=masked).scored).flatten()
    masks = torch.ones(4, st.num_units, dtype=torch.bool)
    for r in range(1, 4):
        masks[r, scored[torch.randperm(len(scored), generator=g)[:3 * r]]] = False
    ms = [parse_metric(m) for m in SHARED for _ in range(6)]     # 42 trajectories, 6 per metric
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for pick in ([0, 1] * 15 + [2, 3, 3] * 4, [0] * 42):   # 2 masks per signal group; 1
            keep = masks[pick]
            keys = [frozenset(torch.nonzero(~row).flatten().tolist()) for row in keep]
            alone = _pruner(trained, share=False, model=model, masked=masked)
            shared = _pruner(trained, model=model, masked=masked)
            a = alone.saliency.unit_saliencies(ms, keep, x, y)
            b = shared.saliency.unit_saliencies(ms, keep, x, y, keys)
            assert torch.equal(a, b), (pick, (a != b).any(1).nonzero().flatten().tolist())
            assert shared.work.report()["saliency_images"] < alone.work.report()["saliency_images"]
            assert shared.work.report()["saliency_images_unshared"] == alone.work.report()["saliency_images"]
    finally:
        torch.set_num_threads(n)


def test_decide_by_hand_and_the_bound_holds():
    from prunetax.benchmarks.protocol.sequential import decide

    N, cstar = 1000, 900                                  # above the target: at least 900 of 1,000 right
    assert decide(900, 950, N, cstar, None) is True      # certain: 900 already
    assert decide(10, 150, N, cstar, None) is False      # certain: at most 10 + 850 = 860
    assert decide(140, 150, N, cstar, None) is None      # 93 % of 150: not certain
    assert decide(149, 150, N, cstar, 0.0) is True       # any evidence will do with log_bound 0
    # with 899 right of 1,000 (just below): P(149+ of 150 right) = 6.0e-7 (by hand: Fractions of
    # binomial coefficients) > 1e-10 = delta / 10: not enough; P(495+ of 500) = 3.4e-25: above
    assert decide(149, 150, N, cstar, math.log(10 / 1e-9)) is None
    assert decide(495, 500, N, cstar, math.log(10 / 1e-9)) is True
    assert decide(149, 150, N, cstar, math.log(1 / 1e-6)) is True    # 6.0e-7 <= 1e-6
    # the bound, by simulation: a mask just below the target (899 right) tested in random orders
    # at checkpoints 100, 200, ...: wrong "above" decisions at most delta of the time
    delta, trials = 0.2, 2000
    log_bound = math.log(10 / delta)
    g = torch.Generator().manual_seed(0)

    def wrong_share(n_right: int, wrong_side: bool) -> float:
        right = torch.zeros(N, dtype=torch.long)
        right[:n_right] = 1
        wrong = 0
        for _ in range(trials):
            seen = right[torch.randperm(N, generator=g)].cumsum(0)
            for n in range(100, N + 1, 100):
                side = decide(int(seen[n - 1]), n, N, cstar, log_bound)
                if side is not None:
                    wrong += side is wrong_side
                    break
        return wrong / trials

    assert wrong_share(899, True) <= delta      # just below the target: wrongly "above"
    assert wrong_share(900, False) <= delta     # just at the target: wrongly "below"


def test_hypergeometric_cuts_equal_rational_arithmetic():
    """The sequential test's thresholds, against hypergeometric tails summed exactly in
    Fractions of binomial coefficients, for every target count and sample size of small sets."""
    from fractions import Fraction
    from math import comb

    from prunetax.benchmarks.protocol.sequential import hypergeometric_cuts

    def tail(N, K, n, xs):
        return Fraction(sum(comb(K, x) * comb(N - K, n - x) for x in xs), comb(N, n))

    checked = 0
    for N in (9, 30):
        for log_bound in (math.log(5 / 0.2), math.log(5 / 1e-4)):
            alpha = Fraction(math.exp(-log_bound))
            for cstar in range(1, N + 1):
                for n in range(1, N):
                    above = next((c for c in range(n + 1) if tail(N, cstar - 1, n, range(c, n + 1)) <= alpha), n + 1)
                    below = max((c for c in range(n + 1) if tail(N, cstar, n, range(0, c + 1)) <= alpha), default=-1)
                    assert hypergeometric_cuts(n, N, cstar, log_bound) == (above, below), (N, cstar, n, log_bound)
                    checked += above <= n or below >= 0
    assert checked > 100      # many of them decide something


def test_sequential_test_and_shared_masks_give_the_exhaustive_crossings(trained):
    """Metrics whose masks coincide, a test set of 1,000 images and a target 20 points down:
    the sequential test stops most tests early, sharing merges equal masks, and every
    trajectory removes the same units and reads the same crossing and final accuracy as one
    pass per trajectory on the whole test set."""
    from prunetax.benchmarks.data import load_dataset
    from prunetax.benchmarks.results import trajectory_rows

    from prunetax.benchmarks.training import evaluate

    model, st, small, _, masked = trained
    model = copy.deepcopy(model).float()                 # the cells' precision
    masked = MaskedModel(model, masked.structure)
    d = load_dataset("mnist", eval_size=5000, seed=0)
    data = SimpleNamespace(eval_x=small.eval_x.float(), eval_y=small.eval_y, test_x=d.test_x[:1000],
                           test_y=d.test_y[:1000])
    base = evaluate(model, data.test_x, data.test_y)
    metrics = [f"activation-taylor-{r}-{c}" for r in ("l1", "l2") for c in ("none", "elements", "layer_l1")]
    metrics += ["weight-gradient-l1-none", "weight-gradient-l2-none", "weight-value-l1-none", "random"]
    runs = {}
    for share, seq in ((False, False), (True, True)):
        p = Protocol(saliency_batches=1, batch_size=16, threshold=20.0, schedule="exact", units_per_step=3,
                     sequential_test=seq)
        run = CellPruning(Network(model, st, masked, data, 0, base), metrics, p, Measurement(share=share))
        runs[share] = ({t.name: t for t in run.run()}, run.work())
    (off, w_off), (on, w_on) = runs[False], runs[True]
    target = base - 20.0
    for m in metrics:
        assert on[m].removed == off[m].removed, m
        assert crossing(on[m], target) == crossing(off[m], target), m
        last = max(off[m].accuracy)
        assert on[m].accuracy[last] == off[m].accuracy[last] and max(on[m].accuracy) == last, m
        assert all(on[m].tested[s][1] == 1000 for s in on[m].accuracy if s > 0), m     # whole-set only
        assert set(on[m].tested) == set(off[m].tested), m                               # the same steps tested
    early = [(m, s) for m in metrics for s in on[m].early]
    assert len(early) > 20 and all(on[m].tested[s][1] < 1000 for m, s in early)
    assert w_off["test_images"] == w_on["test_images_exhaustive"]
    assert w_on["test_images"] < 0.75 * w_on["test_images_exhaustive"]
    assert w_on["saliency_images"] < w_off["saliency_images"] == w_on["saliency_images_unshared"]
    assert w_on["test_decisions_reversed"] == 0
    cell = Cell("lenet5", "mnist", 0, tuple(metrics), Protocol())
    m, s = early[0]
    rows = trajectory_rows(cell, on[m])
    row = rows[s - 1]
    assert row["accuracy"] is None and row["test_images"] == on[m].tested[s][1] < 1000
    assert row["test_correct"] == on[m].tested[s][0]


def test_new_protocol_options_keep_the_cell_ids():
    """Options added for issue 13 are hashed only when set: a default cell keeps the id it had."""
    cell = Cell("lenet5", "mnist", 0, ("weight-value-l1-none", "random"), Protocol(test_images=100, schedule="exact"),
                epochs=1, train_limit=2000)
    assert cell.id == "lenet5_mnist_s0_67d61a274aa0"                  # computed before the options existed
    off = Cell("lenet5", "mnist", 0, ("weight-value-l1-none", "random"),
               Protocol(test_images=100, schedule="exact", sequential_test=False), epochs=1, train_limit=2000)
    assert off.id != cell.id and Protocol.from_dict(off.protocol.to_dict()) == off.protocol
    assert "sequential_test" not in cell.protocol.to_dict()
    assert Protocol.from_dict(cell.protocol.to_dict()) == cell.protocol
    with pytest.raises(PrunetaxError):
        Protocol(sequential_delta=1.0)
