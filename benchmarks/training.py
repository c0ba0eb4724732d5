"""Baseline training: one recipe per model, cached by the hash of everything that shapes it.

``train_baseline(model, dataset, seed)`` returns the trained network, from the cache when it is
there. The cache key is the sha256 of (model, dataset, seed, recipe, ``prunetax.benchmarks.__version__``),
where the recipe includes how the data is prepared (held-out split, ``limit``, ``pad_to``);
each entry is a folder ``<cache>/baselines/<model>_<dataset>_seed<seed>_<hash16>/`` holding
``model.pt`` (the state dict) and ``info.json`` (recipe, accuracies, wall time, device, versions,
the sha256 ``digest`` of model.pt), both written atomically. Training is deterministic on CPU for
a given seed, thread count and torch version (docs/data.md, "What is reproducible"); the key
covers none of those, so ``info["digest"]`` (of the bytes loaded or written) says which weights a
result came from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from prunetax.benchmarks.data import Dataset, dataset_channels, load_dataset, model_input_spec
from prunetax.benchmarks.io import atomic_path
from prunetax.benchmarks.recipes import (  # noqa: F401  (re-exported: the recipe API's old home)
    _KEYED_WHEN_SET, DEFAULT_RECIPE, FALLBACK_EPOCHS, Recipe, _checked, check_recipe_fields)
from prunetax.taxonomy.errors import BaselineError, PrunetaxError

try:
    import fcntl
except ImportError:  # not POSIX: no lock, and two workers may both train one entry (the last write wins)
    fcntl = None

__all__ = ["Recipe", "recipe_for", "train_baseline", "load_baseline", "evaluate", "default_cache_dir",
           "cache_key", "resolve_device", "DEFAULT_RECIPE", "FALLBACK_EPOCHS", "check_recipe_fields"]

LOCK_NOTICE_S = 10.0  # a process waiting this long for another's training of the same entry says so


def recipe_for(model_name: str, dataset_name: str, epochs: int | None = None, **overrides) -> Recipe:
    """The recipe for ``model_name`` on ``dataset_name``: the Recipe's defaults, then the recipe
    the model declared at registration (``register_model(..., recipe=...)``; DEFAULT_RECIPE when
    it declared none), then ``epochs`` (when given) and ``overrides``. Crop/flip augmentation is
    on for colour data, off for grayscale (digits, Fashion-MNIST), unless the model sets it.
    """
    from prunetax.benchmarks.models import model_info
    declared = model_info(model_name).recipe  # unknown model: one line naming the zoo
    fields = {"augment": dataset_channels(dataset_name) == 3, **(DEFAULT_RECIPE if declared is None else declared)}
    fields.setdefault("epochs", FALLBACK_EPOCHS)
    if epochs is not None:
        fields["epochs"] = epochs
    return _checked({**fields, **overrides}, "")


def _describe(model_name: str, dataset_name: str, seed: int, recipe: Recipe, device=None, entry=None) -> str:
    """The one line ``train_baseline`` prints before it trains: which recipe, and whose, on which
    device (when given), into which cache entry folder (when given)."""
    from prunetax.benchmarks.models import model_info
    whose = ("default recipe: the model declares none" if model_info(model_name).recipe is None
             else f"recipe of {model_name}")
    extra = "".join([f", momentum {recipe.momentum:g}", f", weight decay {recipe.weight_decay:g}",
                     f", batch {recipe.batch_size}", f", {recipe.schedule}", ", crop/flip" if recipe.augment else "",
                     f", gradient norm clipped at {recipe.clip_grad_norm:g}" if recipe.clip_grad_norm is not None else "",
                     f", first {recipe.limit} images" if recipe.limit is not None else ""])
    where = "".join([f" on {_device_label(device)}" if device is not None else "",
                     f"; cache {entry}" if entry is not None else ""])
    return (f"{model_name} on {dataset_name}, seed {seed}: training {recipe.epochs} epoch{'s' * (recipe.epochs != 1)} "
            f"at lr {recipe.lr:g}{extra} ({whose}){where}")


def _device_label(device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``: the device and, for a GPU, its model."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)


def _say(line: str) -> None:
    """Print ``line`` on stderr above any tqdm bar of this process (not onto the bar's line)."""
    from tqdm import tqdm
    tqdm.write(line, file=sys.stderr)
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()


def default_cache_dir() -> Path:
    """``$PRUNETAX_CACHE`` or ``~/.cache/prunetax``."""
    env = os.environ.get("PRUNETAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunetax"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → cuda when available, else cpu; an unavailable or unknown device is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunetaxError(f"unknown device '{device}'; choose one of auto, cpu, cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrunetaxError("device 'cuda' requested but CUDA is not available here; use --device cpu or auto")
    return dev


def cache_key(model_name: str, dataset_name: str, seed: int, recipe: Recipe) -> str:
    """sha256 (hex) of the model, data set, seed, recipe and package version. A field added to
    Recipe later counts only when set (``_KEYED_WHEN_SET``), so older keys stay valid."""
    from prunetax.benchmarks._version import __version__
    fields = {k: v for k, v in dataclasses.asdict(recipe).items()
              if not (k in _KEYED_WHEN_SET and v == _KEYED_WHEN_SET[k])}
    blob = json.dumps({"model": model_name, "dataset": dataset_name, "seed": seed,
                       "recipe": fields, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _entry_dir(cache_dir, model_name: str, dataset_name: str, seed: int, recipe: Recipe) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", dataset_name).strip("-")[:40]
    key = cache_key(model_name, dataset_name, seed, recipe)
    return root / "baselines" / f"{model_name}_{safe}_seed{seed}_{key[:16]}"


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
def _deterministic(device: torch.device):
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


def _fit(model: nn.Module, data: Dataset, recipe: Recipe, seed: int, progress: bool | str, desc: str) -> float:
    """Train ``model`` in place; return the mean training loss of the last epoch (train mode).
    The bar (``_progress``) shows the epoch, the loss of every 50th batch, and each epoch's mean."""
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


def _resolve(model_name, dataset, seed, epochs, recipe, limit):
    """``(recipe, dataset name, Dataset or None)``. A loaded Dataset brings its padding into the
    recipe (so into the cache key); its split must be the recipe's."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PrunetaxError(f"seed must be an integer, got {seed!r}")
    from prunetax.benchmarks.models import model_info
    model_info(model_name)  # unknown model → one-line error before any data is loaded
    loaded = isinstance(dataset, Dataset)
    name = dataset.name if loaded else dataset
    if recipe is None:
        fields = {"limit": limit} if limit is not None else {}
        if loaded:
            fields["pad_to"] = dataset.pad_to or None  # load_dataset pads only when pad_to is truthy
        recipe = recipe_for(model_name, name, epochs, **fields)
    else:
        for field, value in (("epochs", epochs), ("limit", limit)):
            if value is not None and value != getattr(recipe, field):
                raise PrunetaxError(f"{field}={value!r} contradicts the recipe's {field}={getattr(recipe, field)!r}; "
                                    f"give one of them")
    if loaded:
        have = (dataset.eval_size, dataset.seed, dataset.pad_to or None)
        need = (recipe.eval_size, recipe.split_seed, recipe.pad_to)
        if have != need:
            raise PrunetaxError(f"data set {dataset.name} was loaded with eval_size={have[0]}, seed={have[1]}, "
                                f"pad_to={have[2]}; the recipe needs {need[0]}, {need[1]}, {need[2]}")
        return recipe, dataset.name, dataset
    return recipe, dataset, None


def _check_same_data(info: dict, data: Dataset, entry: Path) -> None:
    """A cache entry is found by the data set's name and preparation; its images must also have
    the shape (and the training split the size) the entry was trained on."""
    have = (*model_input_spec(data), len(data.train_y))
    trained = tuple(info.get(k) for k in ("in_channels", "input_size", "num_classes", "train_images"))
    if any(t is not None and t != h for t, h in zip(trained, have)):
        raise PrunetaxError(
            f"cached baseline {entry} was trained on {trained[0]}x{trained[1]}x{trained[1]} images, {trained[2]} "
            f"classes, {trained[3]} training images; data set {data.name} has {have[0]}x{have[1]}x{have[1]}, "
            f"{have[2]}, {have[3]} (another copy of the data under the same name?); delete that folder or use "
            f"another cache dir")


def load_baseline(model_name: str, dataset: str | Dataset, seed: int, epochs: int | None = None,
                  device="auto", cache_dir=None, recipe: Recipe | None = None, limit: int | None = None):
    """The cached baseline ``(model, info)`` in eval mode on ``device``, or None when not cached.

    ``info["digest"]`` is the sha256 (hex) of the model.pt bytes read here. An entry whose
    info.json records another digest (two unlocked writers interleaved) counts as not cached.
    """
    recipe, name, _ = _resolve(model_name, dataset, seed, epochs, recipe, limit)
    entry = _entry_dir(cache_dir, model_name, name, seed, recipe)
    try:
        info = json.loads((entry / "info.json").read_text())
        blob = (entry / "model.pt").read_bytes()
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError):
        return None  # missing or unreadable: not cached
    digest = hashlib.sha256(blob).hexdigest()
    if info.get("digest", digest) != digest:
        return None  # info.json describes other weights than model.pt holds: retrain over both
    if isinstance(dataset, Dataset):
        _check_same_data(info, dataset, entry)
    from prunetax.benchmarks.models import create_model
    model = create_model(model_name, info["in_channels"], info["num_classes"], info["input_size"])
    try:
        model.load_state_dict(state)
    except RuntimeError:
        return None  # the model's definition changed under the same version: retrain over it
    dev = resolve_device(device)
    info.update(cached=True, path=str(entry / "model.pt"), digest=digest)
    return model.to(dev).eval(), info


@contextlib.contextmanager
def _entry_lock(entry: Path, desc: str):
    """Hold an exclusive ``flock`` on ``<entry>.lock`` beside the entry's folder.

    One process trains an entry while the others wait (polling), then read what it wrote. The
    kernel releases a flock when its process dies, so a killed trainer never blocks the next
    one; the lock file stays (deleting it would race with a waiter). It holds the holder's pid,
    for the message a waiter prints after ``LOCK_NOTICE_S`` seconds.
    """
    if fcntl is None:
        warnings.warn(f"{desc}: no fcntl.flock on this platform; training without a lock", stacklevel=3)
        yield
        return
    path = entry.with_name(entry.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            except OSError as exc:  # a file system without flock (some network mounts)
                warnings.warn(f"{desc}: cannot lock {path} ({exc}); training without a lock", stacklevel=3)
                break
            waited = time.monotonic() - start
            if not told and waited >= LOCK_NOTICE_S:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                _say(f"{desc}: waiting for process {holder}, which is training this baseline (lock {path}); "
                     f"its result will be read from the cache")
                told = True
            time.sleep(0.2)
        if told:
            _say(f"{desc}: waited {time.monotonic() - start:.0f} s for the lock")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def train_baseline(model_name: str, dataset: str | Dataset, seed: int, epochs: int | None = None,
                   device="auto", cache_dir=None, data_root=None, progress: bool | str = True,
                   recipe: Recipe | None = None, limit: int | None = None, download: bool = False):
    """The trained baseline ``(model, info)``: from the cache, else trained, cached and returned.

    ``dataset`` is a name or an already loaded :class:`Dataset` (split as the recipe says).
    ``limit`` trains on the first ``limit`` training images only (part of the cache key).
    Processes that ask for the same missing entry at once train it once: the first holds a lock
    file beside the entry, the others wait for it and read its result.

    When it trains, one line on stderr before (model, data set, seed, recipe, device, cache entry)
    and one after (wall time, test accuracy); in between a bar over the batches with the epoch and
    the loss when ``progress`` is True and stderr is a terminal, or ``progress="always"``.
    ``info["digest"]``: the sha256 of model.pt as written (trained) or read (cached).
    """
    cached = load_baseline(model_name, dataset, seed, epochs, device, cache_dir, recipe, limit)
    if cached is not None:
        return cached
    recipe, name, data = _resolve(model_name, dataset, seed, epochs, recipe, limit)
    dev = resolve_device(device)
    entry = _entry_dir(cache_dir, model_name, name, seed, recipe)
    with _entry_lock(entry, f"{model_name}/{name}/seed{seed}"):
        cached = load_baseline(model_name, dataset, seed, epochs, dev, cache_dir, recipe, limit)
        if cached is not None:  # another process trained it while this one waited
            return cached
        return _train_and_store(model_name, name, data, seed, recipe, entry, dev, data_root, download, progress)


def _train_and_store(model_name, name, data, seed, recipe, entry, dev, data_root, download, progress):
    """Load the data if needed, train, write ``model.pt`` and ``info.json`` (the caller holds the lock)."""
    if data is None:
        data = load_dataset(name, root=data_root, eval_size=recipe.eval_size, seed=recipe.split_seed,
                            device=dev, download=download, pad_to=recipe.pad_to)
    elif data.device != dev:
        data = data.to(dev)
    from prunetax.benchmarks.models import create_model
    in_channels, input_size, num_classes = model_input_spec(data)
    desc = f"{model_name}/{name}/seed{seed}"
    _say(_describe(model_name, name, seed, recipe, dev, entry))
    start = time.perf_counter()
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _deterministic(dev):
        torch.manual_seed(seed)
        model = create_model(model_name, in_channels, num_classes, input_size).to(dev)
        train_loss = _fit(model, data, recipe, seed, progress, desc)
    wall = time.perf_counter() - start
    from prunetax.benchmarks._version import __version__
    info = {
        "model": model_name, "dataset": name, "seed": seed, "recipe": dataclasses.asdict(recipe),
        "key": cache_key(model_name, name, seed, recipe),
        "train_loss": round(train_loss, 6),  # mean over the last epoch; ln(classes) is chance
        "test_accuracy": evaluate(model, data.test_x, data.test_y),
        "eval_accuracy": evaluate(model, data.eval_x, data.eval_y) if len(data.eval_y) else None,
        "epochs": recipe.epochs, "wall_time_s": round(wall, 3), "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "prunetax": __version__,
        "in_channels": in_channels, "input_size": input_size, "num_classes": num_classes,
        "train_images": len(data.train_y),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    entry.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    info["digest"] = hashlib.sha256(blob).hexdigest()  # of the bytes written: this process's own copy
    with atomic_path(entry / "model.pt") as tmp, open(tmp, "wb") as fh:
        fh.write(blob)
    with atomic_path(entry / "info.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2))
    _say(f"trained {desc} in {wall:.1f} s: test accuracy {info['test_accuracy']:.2f} % (cache {entry})")
    info.update(cached=False, path=str(entry / "model.pt"))
    return model.eval(), info
