"""Where a cell runs (``Env``) and its set-up (``prepare_cell``), written once.

``Env`` is the environment every runner threads through, from the command line down: the
device, the baseline cache, the data root and whether a missing data set may be downloaded. Its
fields are plain strings and a bool (picklable for joblib / dask / ray workers) and are resolved
where they are used, so each worker resolves ``auto`` to its own device and an unset cache to
its own ``$PRUNETAX_CACHE``. A command builds its Env from its flags (``Env.from_args``).

``prepare_cell(cell, env)`` does what every consumer of a trained cell needs before pruning or
scoring, in this order: the recipe (``Baseline.for_cell``), the data set (split and padded as
the recipe says), the model (the baseline, from the cache or trained), eval mode with gradients
off, the structure analysis, the masked network, the pruned structure (convolution producers
unless ``prune_linear``), the protocol's test images and the baseline's accuracy on them.
``run_cell``, ``prunetax saliency`` and ``prunetax similarity`` and the perf scripts (gpu_cell,
harness_vs_loop) all go through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from prunetax.benchmarks.cell import Cell
from prunetax.benchmarks.env import Env

if TYPE_CHECKING:  # imported lazily at run time: ``Env`` stays light for the grid runner
    import torch
    from torch import nn

    from prunetax.benchmarks.data import Dataset
    from prunetax.benchmarks.recipes import Recipe
    from prunetax.metrics import MaskedModel

__all__ = ["Env", "CellSetup", "prepare_cell", "check_baseline"]


@dataclass(frozen=True, eq=False)
class CellSetup:
    """A cell ready to prune: everything ``prepare_cell`` built, in the state the protocol needs."""
    cell: Cell
    env: Env
    device: "torch.device"               # env.device, resolved
    recipe: "Recipe"
    data: "Dataset"                      # train / eval (saliency images) / test splits on ``device``
    model: "nn.Module"                   # the baseline, eval mode, requires_grad off
    info: dict                           # Baseline.get's info (cached, path, accuracies, ...)
    full_structure: Any                  # metrics.analyze of the whole network (what MaskedModel masks)
    structure: Any                       # the pruned units: conv producers, or all with prune_linear
    masked: "MaskedModel"                # MaskedModel(model, full_structure), sharing the parameters
    test_x: "torch.Tensor"               # the protocol's test images (test_images first; 0 = all)
    test_y: "torch.Tensor"
    baseline_accuracy: float | None      # evaluate(model, test_x, test_y); None with accuracy=False


def prepare_cell(cell: Cell, env: Env | None = None, *, progress: bool | str = False,
                 load_model: Callable[["Dataset", Env], tuple] | None = None,
                 accuracy: bool = True) -> CellSetup:
    """Set up ``cell`` in ``env`` (None: the defaults): recipe, data, model (the baseline),
    structure, masked network, test images, baseline accuracy.

    The model is the cell's baseline, ``Baseline.for_cell(cell).get(env, data)`` (trained once,
    then read from ``env.cache``; ``progress`` shows the training bar), unless
    ``load_model(data, env)`` gives ``(model, info)`` instead (a checkpoint, on
    ``env.torch_device``). ``accuracy=False`` skips the baseline's test pass
    (``baseline_accuracy`` None).
    """
    from prunetax.benchmarks.baseline import Baseline
    from prunetax.benchmarks.sgd import evaluate
    from prunetax.metrics import MaskedModel, analyze

    env = Env.of(env)
    dev = env.torch_device
    baseline = Baseline.for_cell(cell)                   # the recipe, resolved once
    data = baseline.load_data(env)                       # the data, split and padded as the recipe says
    if load_model is None:                               # the model: the baseline, cached or trained
        model, info = baseline.get(env, data, progress=progress)
    else:
        model, info = load_model(data, env)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    full = analyze(model, data.test_x[:1])
    masked = MaskedModel(model, full)
    p = cell.protocol
    structure = full if p.prune_linear else full.restricted(("conv",))
    test_x, test_y = p.test_split(data.test_x, data.test_y)
    baseline_accuracy = evaluate(model, test_x, test_y) if accuracy else None
    return CellSetup(cell=cell, env=env, device=dev, recipe=baseline.recipe, data=data, model=model, info=dict(info),
                     full_structure=full, structure=structure, masked=masked, test_x=test_x, test_y=test_y,
                     baseline_accuracy=baseline_accuracy)


def check_baseline(setup: CellSetup) -> None:
    """Refuse to prune a baseline whose accuracy target lies at or below chance.

    The rate is read where accuracy falls below ``Protocol.target(baseline)``; when that target is
    not above chance (100 / classes), no metric can cross it and every metric would be ranked by
    its final rate, whatever it is worth. One-line BaselineError (a PrunetaxError) naming the accuracy, the chance
    level and the recipe; ``prunetax bench --allow-weak-baseline`` (``run_cell(...,
    allow_weak_baseline=True)``) prunes it anyway.
    """
    from prunetax.benchmarks.baseline import BaselineError

    c, acc = setup.cell, setup.baseline_accuracy
    chance = 100.0 / setup.data.num_classes
    target = c.protocol.target(acc)
    if target > chance:
        return
    r = setup.recipe
    recipe = (f"{r.epochs} epoch{'s' * (r.epochs != 1)} at lr {r.lr:g}"
              + (f" on the first {r.limit} images" if r.limit is not None else ""))
    raise BaselineError(
        f"baseline {c.network}/{c.dataset}/seed{c.seed} reaches {acc:.2f} % test accuracy (chance {chance:.2f} %), "
        f"so its target {target:.2f} % is not above chance and no metric could cross it; train it longer "
        f"(recipe: {recipe}; --epochs, --train-limit) or pass --allow-weak-baseline to prune it anyway")
