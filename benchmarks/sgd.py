"""The SGD loop that fits a network to its recipe, and ``evaluate``.

``fit(model, data, recipe, seed, progress, desc)`` trains a network in place, deterministically
on CPU for a given seed, thread count and torch version (docs/data.md, "What is reproducible");
``evaluate`` measures top-1 accuracy. Which network is trained, and the cache that keeps it, is
``prunetax.benchmarks.baseline.Baseline``'s; ``prunetax.benchmarks.training`` gathers the public
names of both.
"""
from __future__ import annotations

import contextlib
import math
import sys
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunetax.benchmarks.errors import BaselineError
from prunetax.taxonomy.errors import PrunetaxError

if TYPE_CHECKING:
    from prunetax.benchmarks.data import Dataset
    from prunetax.benchmarks.recipes import Recipe

__all__ = ["evaluate", "fit", "deterministic"]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (%) of ``model`` on ``(x, y)``, in eval mode, in batches of ``batch_size``."""
    if len(y) == 0:
        raise PrunetaxError("cannot evaluate on an empty split")
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(y), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    finally:
        model.train(was_training)
    return 100.0 * correct / len(y)


def _augment(xb: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding (0 is the mean after normalisation) and horizontal flip."""
    b, _, h, w = xb.shape
    padded = nn.functional.pad(xb, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(xb.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(xb.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(xb.device)
    rows = oy[:, None] + torch.arange(h, device=xb.device)  # [B, H]
    cols = ox[:, None] + torch.arange(w, device=xb.device)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded[torch.arange(b, device=xb.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indices first: [B, H, W, C] → [B, C, H, W]


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Deterministic algorithms on (warn only) and, on a GPU, cuDNN's deterministic kernels
    without benchmarking, for the block; the settings before are restored after it."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def _progress(total: int, desc: str, enabled: bool | str):
    """The training bar over batches: shown when ``enabled`` is True and stderr is a terminal, or
    ``enabled == "always"`` (asked for, e.g. for a log file followed with ``tail -f``)."""
    from tqdm import tqdm
    show = enabled == "always" or (enabled is True and _isatty(sys.stderr))
    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False, disable=not show,
                dynamic_ncols=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def fit(model: nn.Module, data: Dataset, recipe: Recipe, seed: int, progress: bool | str, desc: str) -> float:
    """Train ``model`` in place on ``data``'s training split as ``recipe`` says, shuffling and
    augmenting with a generator seeded with ``seed``; return the mean training loss of the last
    epoch (train mode). The bar (``_progress``, titled ``desc``) shows the epoch, the loss of
    every 50th batch, and each epoch's mean. A loss that is not finite is a BaselineError."""
    x, y = data.train_x, data.train_y
    if recipe.limit is not None:
        x, y = x[:recipe.limit], y[:recipe.limit]
    n = len(y)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    factor = (lambda s: 0.5 * (1 + math.cos(math.pi * s / total))) if recipe.schedule == "cosine" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    with _progress(total, desc, progress) as bar:
        for epoch in range(recipe.epochs):
            epoch_no = f"{epoch + 1}/{recipe.epochs}"
            perm = torch.randperm(n, generator=gen).to(x.device)
            epoch_loss = torch.zeros((), dtype=torch.float64, device=x.device)
            for i in range(steps_per_epoch):
                idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                xb = _augment(x[idx], gen) if recipe.augment else x[idx]
                loss = loss_fn(model(xb), y[idx])
                epoch_loss += loss.detach() * len(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.clip_grad_norm is not None:  # bounds every step, whatever the rounding (docs/data.md)
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad_norm)
                opt.step()
                sched.step()
                bar.update(1)
                if i % 50 == 0:
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        raise BaselineError(f"{desc}: training diverged (loss {loss_value}) in epoch {epoch + 1}; "
                                            f"lower the learning rate of its recipe")
                    bar.set_postfix(epoch=epoch_no, loss=f"{loss_value:.3f}")
            if not bar.disable:  # one sync per epoch, only when someone watches
                bar.set_postfix(epoch=epoch_no, loss=f"{epoch_loss.item() / n:.3f}")
    return epoch_loss.item() / n
