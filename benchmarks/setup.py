"""Where a cell runs (``Env``) and its set-up (``prepare_cell``), written once.

``Env`` is the environment every runner threads through: the device, the baseline cache and
the data root. Its fields are plain strings (picklable for joblib / dask / ray workers) and are
resolved where they are used, so each worker resolves ``auto`` to its own device and an unset
cache to its own ``$PRUNETAX_CACHE``.

``prepare_cell(cell, env)`` does what every consumer of a trained cell needs before pruning or
scoring: the recipe, the data set (split and padded as the recipe says), the baseline (trained
or fetched from the cache), eval mode with gradients off, the structure analysis, the masked
network, the pruned structure (convolution producers unless ``prune_linear``), the protocol's
test images and the baseline's accuracy on them. ``run_cell``, ``prunetax saliency`` and the
perf scripts (gpu_cell, harness_vs_loop) all go through it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from prunetax.benchmarks.cell import Cell

if TYPE_CHECKING:  # imported lazily at run time: ``Env`` stays light for the grid runner
    import torch
    from torch import nn

    from prunetax.benchmarks.data import Dataset
    from prunetax.benchmarks.training import Recipe
    from prunetax.metrics import MaskedModel

__all__ = ["Env", "CellSetup", "prepare_cell", "check_baseline"]


@dataclass(frozen=True)
class Env:
    """Where cells run and what they read.

    ``device``: ``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:1``...,
    resolved by ``training.resolve_device`` where used (``torch_device``). ``cache_dir``: the
    baseline cache; None = ``$PRUNETAX_CACHE`` or ``~/.cache/prunetax``, read where used
    (``cache``). ``data_root``: the folder holding the data sets' files (None: their defaults).
    Paths and devices given are stored as strings, so an Env pickles to any worker.
    """
    device: str = "auto"
    cache_dir: str | None = None
    data_root: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "device", str(self.device))
        for name in ("cache_dir", "data_root"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value))

    @classmethod
    def of(cls, env: "Env | str | torch.device | None" = None, *, device=None, cache_dir=None,
           data_root=None) -> "Env":
        """``env`` (an Env; None: the defaults; a device name or torch.device, as the old positional
        ``device`` argument), with each of the old keywords that is not None on top."""
        if env is None:
            base = cls()
        elif isinstance(env, Env):
            base = env
        else:
            base = cls(device=env)
        given = {k: v for k, v in (("device", device), ("cache_dir", cache_dir), ("data_root", data_root))
                 if v is not None}
        return dataclasses.replace(base, **given) if given else base

    @classmethod
    def from_args(cls, args) -> "Env":
        """The Env of a command's parsed ``--device``, ``--cache-dir`` and ``--data-root`` (absent: defaults)."""
        return cls(device=getattr(args, "device", None) or "auto", cache_dir=getattr(args, "cache_dir", None),
                   data_root=getattr(args, "data_root", None))

    @property
    def torch_device(self) -> "torch.device":
        """The device, resolved here (``auto`` → cuda when available); an unavailable one is an error."""
        from prunetax.benchmarks.training import resolve_device
        return resolve_device(self.device)

    @property
    def cache(self) -> Path:
        """The baseline cache folder, resolved here (``$PRUNETAX_CACHE`` or ``~/.cache/prunetax`` when unset)."""
        from prunetax.benchmarks.training import default_cache_dir
        return Path(self.cache_dir).expanduser() if self.cache_dir is not None else default_cache_dir()


@dataclass(frozen=True, eq=False)
class CellSetup:
    """A cell ready to prune: everything ``prepare_cell`` built, in the state the protocol needs."""
    cell: Cell
    env: Env
    device: "torch.device"               # env.device, resolved
    recipe: "Recipe"
    data: "Dataset"                      # train / eval (saliency images) / test splits on ``device``
    model: "nn.Module"                   # the baseline, eval mode, requires_grad off
    info: dict                           # train_baseline's info (cached, path, accuracies, ...)
    full_structure: Any                  # metrics.analyze of the whole network (what MaskedModel masks)
    structure: Any                       # the pruned units: conv producers, or all with prune_linear
    masked: "MaskedModel"                # MaskedModel(model, full_structure), sharing the parameters
    test_x: "torch.Tensor"               # the protocol's test images (test_images first; 0 = all)
    test_y: "torch.Tensor"
    baseline_accuracy: float | None      # evaluate(model, test_x, test_y); None with accuracy=False


def prepare_cell(cell: Cell, env: Env | None = None, *, progress: bool = False,
                 load_model: Callable[["Dataset", "torch.device"], tuple] | None = None,
                 accuracy: bool = True) -> CellSetup:
    """Set up ``cell`` in ``env`` (None: the defaults): recipe, data, baseline, structure, masked
    network, test images, baseline accuracy.

    The baseline is ``train_baseline(cell.network, data, cell.seed, epochs=cell.epochs,
    limit=cell.train_limit)`` (trained once, then read from ``env.cache``; ``progress`` shows the
    training bar), unless ``load_model(data, device)`` gives ``(model, info)`` instead (a
    checkpoint). ``accuracy=False`` skips the baseline's test pass (``baseline_accuracy`` None).
    """
    from prunetax.benchmarks.data import load_dataset
    from prunetax.benchmarks.training import evaluate, recipe_for, train_baseline
    from prunetax.metrics import MaskedModel, analyze

    env = Env.of(env)
    p = cell.protocol
    dev = env.torch_device
    overrides = {"limit": cell.train_limit} if cell.train_limit else {}
    recipe = recipe_for(cell.network, cell.dataset, cell.epochs, **overrides)
    data = load_dataset(cell.dataset, root=env.data_root, eval_size=recipe.eval_size, seed=recipe.split_seed,
                        device=dev, pad_to=recipe.pad_to)
    if load_model is None:
        model, info = train_baseline(cell.network, data, cell.seed, epochs=cell.epochs, device=dev,
                                     cache_dir=env.cache, progress=progress, limit=cell.train_limit)
    else:
        model, info = load_model(data, dev)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    full = analyze(model, data.test_x[:1])
    masked = MaskedModel(model, full)
    structure = full if p.prune_linear else full.restricted(("conv",))
    test_x, test_y = p.test_split(data.test_x, data.test_y)
    baseline = evaluate(model, test_x, test_y) if accuracy else None
    return CellSetup(cell=cell, env=env, device=dev, recipe=recipe, data=data, model=model, info=dict(info),
                     full_structure=full, structure=structure, masked=masked, test_x=test_x, test_y=test_y,
                     baseline_accuracy=baseline)


def check_baseline(setup: CellSetup) -> None:
    """Refuse to prune a baseline whose accuracy target lies at or below chance.

    The rate is read where accuracy falls below ``Protocol.target(baseline)``; when that target is
    not above chance (100 / classes), no metric can cross it and every metric would be ranked by
    its final rate, whatever it is worth. One-line BaselineError (a PrunetaxError) naming the accuracy, the chance
    level and the recipe; ``prunetax bench --allow-weak-baseline`` (``run_cell(...,
    allow_weak_baseline=True)``) prunes it anyway.
    """
    from prunetax.taxonomy.errors import BaselineError

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
