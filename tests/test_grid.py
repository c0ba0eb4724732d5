"""Grid building, validation and the runner (with a fake run_cell; the real one in test_bench_cli.py)."""
from __future__ import annotations

import hashlib
import sys
import warnings

import pytest
import torch
from torch import nn

import prunetax.benchmarks as benchmarks
from prunetax.benchmarks import grid, protocol
from prunetax.benchmarks.baseline import Baseline, BaselineError
from prunetax.benchmarks.cell import Cell, CellResult, Protocol, RunOptions
from prunetax.benchmarks.grid import GridOptions, expand_metrics, grid_cells, load_grid_file, run_grid
from prunetax.benchmarks.grid import runner as grid_runner
from prunetax.benchmarks.results import ROW_COLUMNS, cell_done, read_scores
from prunetax.benchmarks.setup import Env
from prunetax.enumerate import metric_space
from prunetax.taxonomy.errors import PrunetaxError


def fake_rate(cell: Cell, metric: str) -> float:
    digest = hashlib.sha256(f"{cell.network}/{cell.dataset}/{cell.seed}/{metric}".encode()).digest()
    return round(digest[0] / 2.55, 3)


def fake_run_cell(cell: Cell, env: Env, options: RunOptions | None = None) -> CellResult:
    FAKE_CALLS.append(cell.id)
    ENVS.append(env)
    OPTIONS.append(options)
    rows = []
    for m in cell.metrics:
        r = dict.fromkeys(ROW_COLUMNS)
        r.update(cell_id=cell.id, metric_id=m, kind="reference", network=cell.network, dataset=cell.dataset,
                 seed=cell.seed, conv_weights_removed_pct=fake_rate(cell, m), protocol="{}", wall_seconds=0.1)
        rows.append(r)
    return CellResult(cell, rows, [], 0.1)


FAKE_CALLS: list[str] = []
ENVS: list[Env] = []
OPTIONS: list[RunOptions] = []
QUIET = GridOptions(progress=False)


@pytest.fixture
def fake(monkeypatch):
    """``protocol.run_cell`` (what a grid runs by default, and the deprecated ``run``) is the fake."""
    FAKE_CALLS.clear()
    ENVS.clear()
    OPTIONS.clear()
    monkeypatch.setattr(protocol, "run_cell", fake_run_cell)
    return FAKE_CALLS


class Rolled(nn.Module):
    """Channels rotated with torch.roll: the structure analysis cannot place it."""

    def __init__(self, in_channels=1, num_classes=10, input_size=32):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(in_channels, 4, 3), nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4 * (input_size - 4) ** 2, num_classes)

    def forward(self, x):
        return self.fc(self.c2(torch.roll(self.c1(x), 1, dims=1)).flatten(1))


@pytest.fixture
def rolled_model():
    """A zoo entry the structure analysis rejects (torch.roll on channels), removed afterwards."""
    from prunetax.benchmarks.models import register_model, unregister_model
    register_model(lambda in_channels, num_classes, input_size: Rolled(in_channels, num_classes, input_size),
                   name="test_rolled_grid")
    yield "test_rolled_grid"
    unregister_model("test_rolled_grid")


BASE = {"networks": ["lenet5"], "datasets": ["mnist"], "seeds": [0, 1], "metrics": ["random"],
        "protocol": {"test_images": 100}}


def test_cells_from_config():
    cells = grid_cells({**BASE, "networks": ["lenet5", "cifar10_quick"], "epochs": 1, "train_limit": 50})
    assert [(c.network, c.seed) for c in cells] == [("lenet5", 0), ("lenet5", 1), ("cifar10_quick", 0),
                                                    ("cifar10_quick", 1)]
    assert all(c.metrics == ("random",) and c.protocol == Protocol(test_images=100) for c in cells)
    assert all(c.epochs == 1 and c.train_limit == 50 for c in cells)
    assert len({c.id for c in cells}) == 4


def test_metric_expansion():
    paper = expand_metrics(["paper"])
    assert len(paper) == 308 and paper == tuple(m.id for m in metric_space("paper"))
    act = expand_metrics(["paper", "random", "oracle"], "activation-*")
    assert act[-2:] == ("random", "oracle")
    assert all(m.startswith("activation-") for m in act[:-2]) and len(act) - 2 == \
        sum(m.id.startswith("activation-") for m in metric_space("paper"))
    # authors' names become canonical ids; named metrics stay names; repeats dropped
    assert expand_metrics(["activation-taylor-abs_sum_norm-weights_removed", "GFBS",
                           "activation-taylor-abs_sum-weights_removed"]) == \
        ("activation-taylor-abs_sum-weights_removed", "gfbs")
    with pytest.raises(PrunetaxError, match="no metrics"):
        expand_metrics(["paper"], "nothing-matches-*")


def test_toml_file(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('networks = ["lenet5"]\ndatasets = ["mnist"]\nseeds = [0, 1, 2]\nmetrics = ["paper"]\n'
                 'metric_filter = "weight-*"\nepochs = 2\n[protocol]\nthreshold = 2.5\nschedule = "exact"\n')
    cells = grid_cells(load_grid_file(p), str(p))
    assert len(cells) == 3 and cells[0].protocol == Protocol(threshold=2.5, schedule="exact")
    assert cells[0].epochs == 2 and all(m.startswith("weight-") for m in cells[0].metrics)


@pytest.mark.parametrize("text, match", [
    ('networks = ["lenet5"\n', r"g\.toml: malformed TOML at line 1: the array opened here is not closed"),
    ('networks = ["lenet5"\ndatasets = ["mnist"]\n', r"g\.toml: malformed TOML at line 1: the array opened here "
                                                   r"is not closed \(the parser stopped at line 2\)"),
    ('networks = ["lenet5"]\ndatasets = mnist\n', r"g\.toml: malformed TOML at line 2, column 12: Invalid value"),
    ('networks = ["lenet5"]\ndatasets = ["mnist"]\ncolour = 1\n',
     "g.toml: unknown key 'colour'; valid keys are networks, datasets, seeds"),
    ('networks = ["lenetX"]\ndatasets = ["mnist"]\n', "unknown model 'lenetX'"),
    ('networks = ["lenet5"]\ndatasets = ["mnistt"]\n', "unknown data set 'mnistt'; choose one of .*mnist"),
    ('networks = ["lenet5"]\ndatasets = ["mnist"]\nmetrics = ["weight-value-l3-none"]\n', "reduction"),
    ('networks = ["lenet5"]\ndatasets = ["mnist"]\n[protocol]\nthreshold = 150.0\n', "threshold 150.0 is out of range"),
    ('networks = ["lenet5"]\ndatasets = ["mnist"]\n[protocol]\nthreshhold = 5.0\n', r"g\.toml: \[protocol\]: unknown key 'threshhold'; did you mean 'threshold'\? valid keys are "),
    ('networks = ["lenet5"]\ndatasets = ["mnist"]\n[protocol]\nschedule = 3\n', "schedule must be a str"),
    ('networks = ["lenet5"]\ndatasets = ["mnist"]\nseeds = ["a"]\n', "seeds must hold ints"),
    ('networks = ["lenet5"]\ndatasets = ["mnist"]\nepochs = 0\n', "epochs must be a positive integer"),
])
def test_bad_grids_are_one_line_errors(tmp_path, text, match):
    p = tmp_path / "g.toml"
    p.write_text(text)
    with pytest.raises(PrunetaxError, match=match) as info:
        grid_cells(load_grid_file(p), str(p))
    assert "\n" not in str(info.value)


def test_structure_rejection_up_front(rolled_model):
    with pytest.raises(PrunetaxError, match="network 'test_rolled_grid' cannot be pruned: .*roll"):
        grid_cells({**BASE, "networks": ["test_rolled_grid"]})


def test_run_grid_resumes_and_skips(tmp_path, fake):
    cells = grid_cells(BASE)
    s = run_grid(cells, tmp_path / "r", options=QUIET)
    assert sorted(s.ran) == sorted(c.id for c in cells) and s.skipped == []
    assert all(cell_done(tmp_path / "r", c) for c in cells)
    got = {(r["seed"], r["metric_id"]): r["conv_weights_removed_pct"] for r in read_scores(tmp_path / "r").to_pylist()}
    assert got == {(c.seed, "random"): fake_rate(c, "random") for c in cells}
    fake.clear()
    more = grid_cells({**BASE, "seeds": [0, 1, 2]})
    s2 = run_grid(more, tmp_path / "r", options=QUIET)
    assert fake == [more[2].id] and sorted(s2.skipped) == sorted(c.id for c in cells)
    assert read_scores(tmp_path / "r").num_rows == 3


def test_run_grid_refuses_done_cells_of_another_recipe(tmp_path, monkeypatch):
    """A model's declared recipe is not in the cell id: after it changes, a done cell computed on
    the old recipe's baseline stops the grid with one line naming its file, before any cell runs."""
    from prunetax.benchmarks.models import register_model, unregister_model
    from prunetax.benchmarks.results import recipe_hash
    from prunetax.benchmarks.training import recipe_for

    ran = []

    def runner(cell, env, options=None):     # records the recipe as the real cell does
        ran.append(cell.id)
        result = fake_run_cell(cell, env)
        for r in result.rows:
            r["recipe_hash"] = recipe_hash(recipe_for(cell.network, cell.dataset, cell.epochs))
        return result

    quiet = GridOptions(progress=False, runner=runner)
    name = "_test_recipe_change"
    config = {**BASE, "networks": [name], "seeds": [0]}
    register_model(lambda in_channels, num_classes, input_size: nn.Linear(1, 1), name=name,
                   recipe={"epochs": 2, "lr": 0.05})
    try:
        cells = grid_cells(config, validate=False)
        assert run_grid(cells, tmp_path / "r", options=quiet).ran == [cells[0].id]
        assert run_grid(cells, tmp_path / "r", options=quiet).skipped == [cells[0].id]   # same recipe: done
        unregister_model(name)
        register_model(lambda in_channels, num_classes, input_size: nn.Linear(1, 1), name=name,
                       recipe={"epochs": 2, "lr": 0.05, "clip_grad_norm": 5.0})
        again = grid_cells(config, validate=False)
        assert [c.id for c in again] == [c.id for c in cells]                             # the id cannot tell
        with pytest.raises(PrunetaxError, match=r"another recipe .* clip_grad_norm 5\.0\); remove that file") as e:
            run_grid(again, tmp_path / "r", options=quiet)
        assert "\n" not in str(e.value) and cells[0].id in str(e.value) and ran == [cells[0].id]
    finally:
        unregister_model(name)


def test_a_failed_baseline_fails_its_cell_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
    """Seed 1's baseline fails (BaselineError, as a diverged training or a chance-level baseline
    raises it): seeds 0 and 2 are still computed and written, the failure is reported when it
    happens, and the grid ends with one line counting it (a non-zero exit in the CLI)."""
    def runner(cell, env, options=None):
        if cell.seed == 1:
            raise BaselineError("baseline lenet5/mnist/seed1 reaches 11.35 % test accuracy (chance 10.00 %)")
        return fake_run_cell(cell, env)

    cells = grid_cells({**BASE, "seeds": [0, 1, 2]})
    with pytest.raises(BaselineError) as e:
        run_grid(cells, tmp_path / "r", options=GridOptions(progress=False, runner=runner))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("1 of 3 cells could not run, their baselines failed (first: "
                                               f"{cells[1].id}: baseline lenet5/mnist/seed1 reaches 11.35 %")
    assert msg.endswith(f"the other 2 are written under {tmp_path / 'r'}")
    assert [cell_done(tmp_path / "r", c) for c in cells] == [True, False, True]
    assert f"cell 2/3 failed: {cells[1].id}: baseline lenet5/mnist/seed1" in capsys.readouterr().err
    # with workers, baselines are trained first: one that fails there drops its cells the same way
    def train(baseline, env, progress=True):
        if baseline.seed == 1:
            raise BaselineError("lenet5/mnist/seed1: training diverged (loss nan) in epoch 1")
    monkeypatch.setattr(Baseline, "get", train)
    assert grid.train_baselines(cells, Env(), False) == {cells[1].id: "lenet5/mnist/seed1: training diverged "
                                                                      "(loss nan) in epoch 1"}


def test_public_run_writes_one_cell(tmp_path, fake):
    """``prunetax.run``, deprecated: a warning naming its replacements, then run_cell and the write."""
    c = grid_cells(BASE)[0]
    with pytest.warns(DeprecationWarning, match=r"run_cell\(cell, env, RunOptions.*write_cell_result"):
        res = benchmarks.run(c, results=tmp_path)
    assert res.cell == c and cell_done(tmp_path, c)
    assert OPTIONS == [RunOptions(progress=False)]


def test_runner_errors(tmp_path, fake):
    cells = grid_cells(BASE)
    with pytest.raises(PrunetaxError, match="unknown backend 'spark'"):
        run_grid(cells, tmp_path, backend="spark", options=QUIET)
    with pytest.raises(PrunetaxError, match="n_jobs"):
        run_grid(cells, tmp_path, n_jobs=0, options=QUIET)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrunetaxError, match="is a file"):
        run_grid(cells, tmp_path / "file", options=QUIET)
    with pytest.raises(PrunetaxError, match="--scheduler needs"):
        run_grid(cells, tmp_path / "r", scheduler="tcp://x:8786", options=QUIET)


@pytest.mark.parametrize("backend, module, extra", [("dask", "dask.distributed", "dask"), ("ray", "ray", "ray")])
def test_missing_backend_names_the_extra(tmp_path, fake, monkeypatch, backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)   # as if the extra were not installed
    with pytest.raises(PrunetaxError, match=rf"pip install prunetax\[{extra}\]"):
        run_grid(grid_cells(BASE), tmp_path / "r", backend=backend, options=QUIET)
    assert not (tmp_path / "r").exists()


def test_parallel_loky_trains_each_baseline_once_then_fans_out(tmp_path, fake, monkeypatch):
    trained = []
    monkeypatch.setattr(grid_runner, "train_baselines", lambda cells, *a: trained.append([c.id for c in cells]) or {})
    cells = grid_cells({**BASE, "seeds": [0, 1, 2]})
    done = run_grid(cells[:1], tmp_path / "r", options=QUIET)  # one cell already there
    assert trained == []  # n_jobs=1: run_cell trains
    s = run_grid(cells, tmp_path / "r", n_jobs=2, options=QUIET)
    assert trained == [[c.id for c in cells[1:]]] and s.skipped == done.ran
    assert sorted(s.ran) == sorted(c.id for c in cells[1:])
    got = {(r["seed"], r["metric_id"]): r["conv_weights_removed_pct"] for r in read_scores(tmp_path / "r").to_pylist()}
    assert got == {(c.seed, "random"): fake_rate(c, "random") for c in cells}


def test_train_baselines_dedupes(monkeypatch):
    calls = []
    monkeypatch.setattr(Baseline, "get", lambda self, env, progress=True: calls.append((self, env, progress)))
    cells = grid_cells({**BASE, "seeds": [0, 1]}) + grid_cells({**BASE, "seeds": [0, 1], "metrics": ["oracle"]})
    grid.train_baselines(cells, Env("cpu"), False)
    assert calls == [(Baseline.for_cell(cells[0]), Env("cpu"), False), (Baseline.for_cell(cells[1]), Env("cpu"), False)]
    assert [(b.network, b.dataset, b.seed) for b, _, _ in calls] == [("lenet5", "mnist", 0), ("lenet5", "mnist", 1)]


def test_env_defaults_old_keywords_and_pickling(tmp_path, monkeypatch):
    import pickle

    env = Env()
    assert (env.device, env.cache_dir, env.data_root) == ("auto", None, None)
    monkeypatch.setenv("PRUNETAX_CACHE", str(tmp_path / "c"))
    assert env.cache == tmp_path / "c"                    # resolved where used, not when built
    assert Env(cache_dir=tmp_path).cache_dir == str(tmp_path) and Env(cache_dir=tmp_path).cache == tmp_path
    assert Env(torch.device("cpu")).torch_device == torch.device("cpu")
    assert Env.of(None, device="cpu", data_root=tmp_path) == Env("cpu", None, str(tmp_path))
    assert Env.of(Env("cpu", "/c"), data_root="/d") == Env("cpu", "/c", "/d")
    assert Env.of("cpu") == Env("cpu")                    # the old positional device
    e = Env("cuda:1", str(tmp_path), "/data")
    assert pickle.loads(pickle.dumps(e)) == e
    with pytest.raises(PrunetaxError, match="unknown device"):
        Env("tpu").torch_device


def test_runner_sends_one_env_to_the_cells(tmp_path, fake, monkeypatch):
    cells = grid_cells({**BASE, "seeds": [0, 1]})
    run_grid(cells, tmp_path / "a", env=Env("cpu", tmp_path / "c"), options=QUIET)
    assert ENVS == [Env("cpu", str(tmp_path / "c"), None)] * 2
    ENVS.clear()
    monkeypatch.setenv("PRUNETAX_CACHE", str(tmp_path / "client-cache"))
    monkeypatch.chdir(tmp_path)
    env = Env("cpu", None, "d")
    run_grid(cells, "b", env=env, options=QUIET)
    # the grid resolves every path on the client: the cells get absolute ones, the client's cache
    assert ENVS == [Env("cpu", str(tmp_path / "client-cache"), str(tmp_path / "d"))] * 2
    assert cell_done(tmp_path / "b", cells[0])
    ENVS.clear()
    with pytest.warns(DeprecationWarning):
        benchmarks.run(cells[0], env=env)
    with pytest.warns(DeprecationWarning):
        benchmarks.run(cells[0], device="cpu", data_root="d")
    assert ENVS == [env] * 2


def test_runner_sends_each_cell_its_run_options(tmp_path, fake):
    """Each cell gets the grid's options as RunOptions, with its own state file; at n_jobs 1 the
    cell's progress is plain lines when the grid's is off."""
    cells = grid_cells({**BASE, "seeds": [0, 1]})
    options = GridOptions(progress=False, checkpoint_every=60, allow_weak_baseline=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)         # the new form warns about nothing
        run_grid(cells, tmp_path / "r", env=Env("cpu"), options=options)
    assert OPTIONS == [RunOptions(progress="lines", checkpoint=str(grid.state_path(tmp_path / "r", c)),
                                  checkpoint_every=60.0, allow_weak_baseline=True) for c in cells]
    with pytest.raises(PrunetaxError, match="checkpoint_every must be >= 0 seconds"):
        GridOptions(checkpoint_every=-1)


def test_legacy_keywords_still_work_and_warn(tmp_path, fake):
    """``run_grid``'s older keywords (public API): the same run as the new form, after a
    DeprecationWarning naming them; an unknown keyword is a TypeError as before."""
    cells = grid_cells({**BASE, "seeds": [0, 1]})
    with pytest.warns(DeprecationWarning, match="device, cache_dir, progress, checkpoint_every, "
                                                "allow_weak_baseline are deprecated"):
        old = run_grid(cells, tmp_path / "a", device="cpu", cache_dir=tmp_path / "c", progress=False,
                       checkpoint_every=60, allow_weak_baseline=True)
    got = list(zip(ENVS, OPTIONS))
    ENVS.clear()
    OPTIONS.clear()
    new = run_grid(cells, tmp_path / "b", env=Env("cpu", tmp_path / "c"),
                   options=GridOptions(progress=False, checkpoint_every=60, allow_weak_baseline=True))
    assert sorted(old.ran) == sorted(new.ran) == sorted(c.id for c in cells)
    assert [(e, o.checkpoint_every, o.allow_weak_baseline, o.progress) for e, o in got] == \
        [(e, o.checkpoint_every, o.allow_weak_baseline, o.progress) for e, o in zip(ENVS, OPTIONS)]
    assert read_scores(tmp_path / "a").sort_by("cell_id").equals(read_scores(tmp_path / "b").sort_by("cell_id"))
    calls = []
    with pytest.warns(DeprecationWarning, match="runner"):     # the stand-in given the old way
        run_grid(cells, tmp_path / "c", runner=lambda c, e, o: calls.append(c.id) or fake_run_cell(c, e, o),
                 options=QUIET)
    assert calls == [c.id for c in cells]
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        run_grid(cells, tmp_path / "d", colour="red")
