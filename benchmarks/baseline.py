"""Baselines: the trained network of a (model, data set, seed, recipe), behind one object.

``Baseline.for_cell(cell)`` resolves a cell's recipe once (the model's declared recipe, the
cell's epochs and training limit). ``baseline.get(env)`` returns ``(model, info)``: from the
cache when its entry is there, else trained (``training.fit``) under the entry's file lock and
stored. ``baseline.cached(env)`` only reads; ``baseline.load_data(env)`` loads the data set as
the recipe prepares it.

The cache key (``cache_key``) is the sha256 of (model, data set, seed, recipe,
``prunetax.benchmarks.__version__``), where the recipe includes how the data is prepared
(held-out split, ``limit``, ``pad_to``). Each entry is a folder
``<cache>/baselines/<model>_<dataset>_seed<seed>_<hash16>/`` holding ``model.pt`` (the state
dict) and ``info.json`` (recipe, accuracies, wall time, device, versions, the sha256 ``digest``
of model.pt), both written atomically. Training is deterministic on CPU for a given seed, thread
count and torch version (docs/data.md, "What is reproducible"); the key covers none of those, so
``info["digest"]`` (of the bytes loaded or written) says which weights a result came from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prunetax.benchmarks.data import Dataset, load_dataset, model_input_spec
from prunetax.benchmarks.io import atomic_path
from prunetax.benchmarks.env import Env, default_cache_dir
from prunetax.benchmarks.errors import BaselineError
from prunetax.benchmarks.recipes import DEFAULT_RECIPE, FALLBACK_EPOCHS, KEYED_WHEN_SET, Recipe, checked_recipe
from prunetax.benchmarks.sgd import deterministic, evaluate, fit
from prunetax.taxonomy.errors import PrunetaxError

if TYPE_CHECKING:
    from torch import nn

    from prunetax.benchmarks.cell import Cell

try:
    import fcntl
except ImportError:  # not POSIX: no lock, and two workers may both train one entry (the last write wins)
    fcntl = None

__all__ = ["Baseline", "BaselineError", "recipe_for", "cache_key", "default_cache_dir", "entry_lock", "LOCK_NOTICE_S"]

LOCK_NOTICE_S = 10.0  # a process waiting this long for another's training of the same entry says so




def recipe_for(model_name: str, dataset_name: str, epochs: int | None = None, **overrides) -> Recipe:
    """The recipe for ``model_name`` on ``dataset_name``: the Recipe's defaults, then the recipe
    the model declared at registration (``register_model(..., recipe=...)``; DEFAULT_RECIPE when
    it declared none), then ``epochs`` (when given) and ``overrides``. Crop/flip augmentation is
    on for colour data, off for grayscale (digits, Fashion-MNIST), unless the model sets it.
    """
    from prunetax.benchmarks.data import dataset_channels
    from prunetax.benchmarks.models import model_info
    declared = model_info(model_name).recipe  # unknown model: one line naming the zoo
    fields = {"augment": dataset_channels(dataset_name) == 3, **(DEFAULT_RECIPE if declared is None else declared)}
    fields.setdefault("epochs", FALLBACK_EPOCHS)
    if epochs is not None:
        fields["epochs"] = epochs
    return checked_recipe({**fields, **overrides}, "")


def cache_key(model_name: str, dataset_name: str, seed: int, recipe: Recipe) -> str:
    """sha256 (hex) of the model, data set, seed, recipe and package version. A field added to
    Recipe later counts only when set (``recipes.KEYED_WHEN_SET``), so older keys stay valid."""
    from prunetax.benchmarks._version import __version__
    fields = {k: v for k, v in dataclasses.asdict(recipe).items()
              if not (k in KEYED_WHEN_SET and v == KEYED_WHEN_SET[k])}
    blob = json.dumps({"model": model_name, "dataset": dataset_name, "seed": seed,
                       "recipe": fields, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PrunetaxError(f"seed must be an integer, got {seed!r}")


@dataclass(frozen=True)
class Baseline:
    """Which trained network: the model ``network`` on data set ``dataset`` (a name), trained with
    ``seed`` and ``recipe``. Equal baselines share one cache entry (``key``, ``entry``)."""
    network: str
    dataset: str
    seed: int
    recipe: Recipe

    def __post_init__(self):
        _check_seed(self.seed)

    @classmethod
    def for_cell(cls, cell: "Cell") -> "Baseline":
        """The baseline a cell prunes: its network, data set and seed, with the recipe the model
        declared, the cell's ``epochs`` (None: the recipe's) and ``train_limit`` (None: all images)."""
        return cls.resolve(cell.network, cell.dataset, cell.seed, cell.epochs, limit=cell.train_limit)

    @classmethod
    def resolve(cls, network: str, dataset: "str | Dataset", seed: int, epochs: int | None = None,
                recipe: Recipe | None = None, limit: int | None = None) -> "Baseline":
        """The baseline of ``network`` on ``dataset`` (a name, or a loaded Dataset), as
        ``train_baseline`` reads its arguments: ``recipe``, else ``recipe_for(network, dataset,
        epochs, limit=limit)`` (a Dataset brings its padding into the recipe, so into the cache key).
        ``epochs`` and ``limit`` given with ``recipe`` must agree with it."""
        _check_seed(seed)
        name = dataset.name if isinstance(dataset, Dataset) else dataset
        if recipe is None:  # recipe_for: an unknown model is a one-line error before any data is loaded
            fields = {"limit": limit} if limit is not None else {}
            if isinstance(dataset, Dataset):
                fields["pad_to"] = dataset.pad_to or None  # load_dataset pads only when pad_to is truthy
            recipe = recipe_for(network, name, epochs, **fields)
        else:
            from prunetax.benchmarks.models import model_info
            model_info(network)  # unknown model: a one-line error
            for field, value in (("epochs", epochs), ("limit", limit)):
                if value is not None and value != getattr(recipe, field):
                    raise PrunetaxError(f"{field}={value!r} contradicts the recipe's {field}="
                                        f"{getattr(recipe, field)!r}; give one of them")
        baseline = cls(network, name, seed, recipe)
        if isinstance(dataset, Dataset):
            baseline.check_split(dataset)
        return baseline

    @property
    def key(self) -> str:
        """The cache key: ``cache_key(network, dataset, seed, recipe)``."""
        return cache_key(self.network, self.dataset, self.seed, self.recipe)

    @property
    def desc(self) -> str:
        """``network/dataset/seedN``, as progress lines name the baseline."""
        return f"{self.network}/{self.dataset}/seed{self.seed}"

    def entry(self, cache_root: str | os.PathLike | None = None) -> Path:
        """The cache entry's folder under ``cache_root`` (None: ``default_cache_dir()``)."""
        root = Path(cache_root).expanduser() if cache_root is not None else default_cache_dir()
        safe = re.sub(r"[^A-Za-z0-9.-]+", "-", self.dataset).strip("-")[:40]
        return root / "baselines" / f"{self.network}_{safe}_seed{self.seed}_{self.key[:16]}"

    def check_split(self, data: Dataset) -> None:
        """A one-line error unless ``data`` was split and padded as the recipe says."""
        have = (data.eval_size, data.seed, data.pad_to or None)
        need = (self.recipe.eval_size, self.recipe.split_seed, self.recipe.pad_to)
        if have != need:
            raise PrunetaxError(f"data set {data.name} was loaded with eval_size={have[0]}, seed={have[1]}, "
                                f"pad_to={have[2]}; the recipe needs {need[0]}, {need[1]}, {need[2]}")

    def load_data(self, env: Env | None = None) -> Dataset:
        """The data set, split and padded as the recipe says, on ``env``'s device, read from
        ``env.data_root`` (downloaded there first when ``env.download`` and it is missing)."""
        env = Env.of(env)
        return load_dataset(self.dataset, root=env.data_root, eval_size=self.recipe.eval_size,
                            seed=self.recipe.split_seed, device=env.torch_device, download=env.download,
                            pad_to=self.recipe.pad_to)

    def cached(self, env: Env | None = None, data: Dataset | None = None):
        """The cached ``(model, info)`` in eval mode on ``env``'s device, or None when not cached.

        ``data``, when given, must be split as the recipe says and have the images the entry was
        trained on. ``info["digest"]`` is the sha256 (hex) of the model.pt bytes read here. An
        entry whose info.json records another digest (two unlocked writers interleaved) counts
        as not cached.
        """
        env = Env.of(env)
        if data is not None:
            self.check_split(data)
        entry = self.entry(env.cache)
        try:
            info = json.loads((entry / "info.json").read_text())
            blob = (entry / "model.pt").read_bytes()
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except (OSError, ValueError, RuntimeError, EOFError):
            return None  # missing or unreadable: not cached
        digest = hashlib.sha256(blob).hexdigest()
        if info.get("digest", digest) != digest:
            return None  # info.json describes other weights than model.pt holds: retrain over both
        if data is not None:
            _check_same_data(info, data, entry)
        from prunetax.benchmarks.models import create_model
        model = create_model(self.network, info["in_channels"], info["num_classes"], info["input_size"])
        try:
            model.load_state_dict(state)
        except RuntimeError:
            return None  # the model's definition changed under the same version: retrain over it
        dev = env.torch_device
        info.update(cached=True, path=str(entry / "model.pt"), digest=digest)
        return model.to(dev).eval(), info

    def get(self, env: Env | None = None, data: Dataset | None = None, *, progress: bool | str = True):
        """The trained ``(model, info)``: from the cache, else trained, stored and returned.

        ``data``: the data set already loaded (``load_data``), else loaded here when training.
        Processes that ask for the same missing entry at once train it once: the first holds a
        lock file beside the entry, the others wait for it and read its result.

        When it trains, one line on stderr before (model, data set, seed, recipe, device, cache
        entry) and one after (wall time, test accuracy); in between a bar over the batches with
        the epoch and the loss when ``progress`` is True and stderr is a terminal, or
        ``progress="always"``. ``info["digest"]``: the sha256 of model.pt as written (trained)
        or read (cached).
        """
        env = Env.of(env)
        found = self.cached(env, data)
        if found is not None:
            return found
        env.torch_device  # an unavailable device is an error before the lock is taken
        entry = self.entry(env.cache)
        with entry_lock(entry, self.desc):
            found = self.cached(env, data)
            if found is not None:  # another process trained it while this one waited
                return found
            return self._train_and_store(data, entry, env, progress)

    def describe(self, device=None, entry: Path | None = None) -> str:
        """The one line said before training: which recipe, and whose, on which device (when
        given), into which cache entry folder (when given)."""
        from prunetax.benchmarks.models import model_info
        r = self.recipe
        whose = ("default recipe: the model declares none" if model_info(self.network).recipe is None
                 else f"recipe of {self.network}")
        extra = "".join([f", momentum {r.momentum:g}", f", weight decay {r.weight_decay:g}",
                         f", batch {r.batch_size}", f", {r.schedule}", ", crop/flip" if r.augment else "",
                         f", gradient norm clipped at {r.clip_grad_norm:g}" if r.clip_grad_norm is not None else "",
                         f", first {r.limit} images" if r.limit is not None else ""])
        where = "".join([f" on {_device_label(device)}" if device is not None else "",
                         f"; cache {entry}" if entry is not None else ""])
        return (f"{self.network} on {self.dataset}, seed {self.seed}: training {r.epochs} "
                f"epoch{'s' * (r.epochs != 1)} at lr {r.lr:g}{extra} ({whose}){where}")

    def _train_and_store(self, data: Dataset | None, entry: Path, env: Env, progress: bool | str):
        """Load the data if needed, train, write ``model.pt`` and ``info.json`` (the caller holds the lock)."""
        dev = env.torch_device
        if data is None:
            data = self.load_data(env)
        elif data.device != dev:
            data = data.to(dev)
        _say(self.describe(dev, entry))
        model, train_loss, wall = self._train(data, dev, progress)
        info = self._info(model, data, dev, train_loss, wall)
        _store(model, info, entry)
        _say(f"trained {self.desc} in {wall:.1f} s: test accuracy {info['test_accuracy']:.2f} % (cache {entry})")
        info.update(cached=False, path=str(entry / "model.pt"))
        return model.eval(), info

    def _train(self, data: Dataset, dev: torch.device, progress: bool | str):
        """``(model, last epoch's mean training loss, wall seconds)``: a fresh model, initialised
        under the seed and trained on ``data`` deterministically; the global random state is kept."""
        from prunetax.benchmarks.models import create_model
        in_channels, input_size, num_classes = model_input_spec(data)
        start = time.perf_counter()
        devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), deterministic(dev):
            torch.manual_seed(self.seed)
            model = create_model(self.network, in_channels, num_classes, input_size).to(dev)
            train_loss = fit(model, data, self.recipe, self.seed, progress, self.desc)
        return model, train_loss, time.perf_counter() - start

    def _info(self, model: "nn.Module", data: Dataset, dev: torch.device, train_loss: float, wall: float) -> dict:
        """What info.json records of a network just trained (``digest`` is added when it is written)."""
        from prunetax.benchmarks._version import __version__
        in_channels, input_size, num_classes = model_input_spec(data)
        return {
            "model": self.network, "dataset": self.dataset, "seed": self.seed,
            "recipe": dataclasses.asdict(self.recipe), "key": self.key,
            "train_loss": round(train_loss, 6),  # mean over the last epoch; ln(classes) is chance
            "test_accuracy": evaluate(model, data.test_x, data.test_y),
            "eval_accuracy": evaluate(model, data.eval_x, data.eval_y) if len(data.eval_y) else None,
            "epochs": self.recipe.epochs, "wall_time_s": round(wall, 3), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__, "prunetax": __version__,
            "in_channels": in_channels, "input_size": input_size, "num_classes": num_classes,
            "train_images": len(data.train_y),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _store(model: "nn.Module", info: dict, entry: Path) -> None:
    """Write the model's state dict (CPU tensors) to ``entry/model.pt`` and ``info`` with its
    ``digest`` (of the bytes written: this process's own copy) to ``entry/info.json``, atomically."""
    entry.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    info["digest"] = hashlib.sha256(blob).hexdigest()
    with atomic_path(entry / "model.pt") as tmp, open(tmp, "wb") as fh:
        fh.write(blob)
    with atomic_path(entry / "info.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2))


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


@contextlib.contextmanager
def entry_lock(entry: Path, desc: str):
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
