"""Data sets: train / eval / test splits as normalised tensors, resident on one device.

``load_dataset(name)`` returns a frozen :class:`Dataset`. ``mnist`` ships with the package;
``fashion-mnist`` reads the Debian package's IDX files; ``cifar10`` / ``cifar100`` read CIFAR's
own python (pickle) batches from a folder (torchvision downloads them where it imports and
``download=True``); ``imagefolder:PATH`` reads ``PATH/train`` and ``PATH/test`` (or ``val``)
through torchvision. docs/data.md gives the sources, splits, normalisation and licences.

Pipeline, the same for every data set: raw uint8 images ``[N, C, H, W]`` → the evaluation
split (``eval_size`` training images chosen by ``seed``) is held out → images smaller than
``pad_to`` are zero-padded, centred → scaled to [0, 1] and normalised with the per-channel
mean and (population) standard deviation of the training split.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from prunetax.benchmarks import names
from prunetax.benchmarks.names import DataError

__all__ = [
    "Dataset", "RawData", "DataError", "load_dataset", "load_raw", "list_datasets", "register_dataset",
    "model_input_spec", "dataset_channels", "pad_images", "read_idx", "read_cifar_batch", "default_data_root",
]

DATA_FILES = Path(__file__).resolve().parent / "data_files"
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class RawData:
    """What a data set loader returns: uint8 images ``[N, C, H, W]`` and integer labels."""
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int


@dataclass(frozen=True, eq=False)
class Dataset:
    """Normalised float32 images ``[N, C, H, W]`` and int64 labels for the three splits."""
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_size: int
    seed: int
    pad_to: int | None

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train_x.shape[2])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"``, ``"eval"`` or ``"test"``."""
        if which not in ("train", "eval", "test"):
            raise DataError(f"unknown split '{which}'; choose one of train, eval, test")
        return getattr(self, f"{which}_x"), getattr(self, f"{which}_y")

    def to(self, device) -> "Dataset":
        """A copy with every tensor on ``device`` (moved once; no DataLoader needed)."""
        moved = {f: getattr(self, f).to(device) for f in
                 ("train_x", "train_y", "eval_x", "eval_y", "test_x", "test_y")}
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.train_y)}, eval={len(self.eval_y)}, "
                f"test={len(self.test_y)}, shape={tuple(self.train_x.shape[1:])}, "
                f"classes={self.num_classes}, device={self.device})")


def model_input_spec(dataset: Dataset) -> tuple[int, int, int]:
    """``(in_channels, input_size, num_classes)`` to build a model for ``dataset``.

    The rule for small grayscale images: they are zero-padded to 32×32 at load time and keep
    their single channel, so a model is built with ``in_channels=1, input_size=32``.
    """
    return dataset.in_channels, dataset.input_size, dataset.num_classes


# ---------------------------------------------------------------------------------------------
# File formats

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip-compressed or not."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path} is a corrupt IDX file (header of {ndim} dimensions is truncated)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path} is a corrupt IDX file ({len(data)} bytes; shape {shape} needs {expected})")
    return np.frombuffer(bytearray(data), dtype, offset=header).reshape(shape)  # writable copy


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches contain: dicts, lists, bytes and numpy arrays."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: uint8 images ``[N, 3, 32, 32]`` and int64 labels."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {exc}") from None
    except Exception as exc:  # any unpickling failure means a corrupt or foreign file
        raise DataError(f"{path} is not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR python batch (holds a {type(batch).__name__}, not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    labels = batch.get("labels", batch.get("fine_labels"))
    if "data" not in batch or labels is None:
        raise DataError(f"{path} is not a CIFAR python batch (needs keys data and labels or fine_labels)")
    data = np.asarray(batch["data"])
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path} is a corrupt CIFAR batch (data {data.dtype} {data.shape}, "
                        f"{len(labels)} labels; expected uint8 [N, 3072] and N labels)")
    return data.reshape(-1, 3, 32, 32), labels


# ---------------------------------------------------------------------------------------------
# The registry of data sets

_LOADERS: dict[str, Callable[[Path | None, bool], RawData]] = {}


def register_dataset(name: str, channels: int = 3):
    """Decorator: register ``loader(root: Path | None, download: bool) -> RawData`` as ``name``.

    ``channels`` (1 grayscale, 3 colour) is known before loading, so recipes can depend on it.
    The name and its channels are kept in ``prunetax.benchmarks.names`` (torch-free), where
    commands check a name before they import torch.
    """
    def deco(fn):
        if name in _LOADERS:
            raise DataError(f"data set '{name}' is already registered")
        _LOADERS[name] = fn
        names.add_dataset(name, channels)
        return fn
    return deco


def dataset_channels(name: str) -> int:
    """Image channels of data set ``name`` without loading it (``imagefolder:`` images are RGB)."""
    return names.check_dataset(name)


def list_datasets() -> list[str]:
    """The registered data set names; ``imagefolder:PATH`` is accepted as well."""
    return names.dataset_names()


def default_data_root() -> Path:
    """Where downloadable data sets live: ``$PRUNETAX_DATA`` or ``~/.cache/prunetax/data``."""
    env = os.environ.get("PRUNETAX_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunetax" / "data"


def _idx_file(folder: Path, stem: str, what: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{what}: no {stem}(.gz) in {folder}")


def _load_idx_folder(folder: Path, what: str, hint: str) -> RawData:
    if not folder.is_dir():
        raise DataError(f"{what}: folder {folder} does not exist; {hint}")
    try:
        paths = [_idx_file(folder, stem, what) for stem in IDX_NAMES]
    except DataError as exc:
        raise DataError(f"{exc}; {hint}") from None
    tr_x, tr_y, te_x, te_y = (read_idx(p) for p in paths)
    for x, y, p in ((tr_x, tr_y, paths[0]), (te_x, te_y, paths[2])):
        if x.ndim != 3 or x.dtype != np.uint8 or len(x) != len(y) or y.ndim != 1:
            raise DataError(f"{p}: expected uint8 images [N, H, W] and N labels, got {x.dtype} {x.shape} "
                            f"and {y.shape} labels")
    return RawData(tr_x[:, None], tr_y.astype(np.int64), te_x[:, None], te_y.astype(np.int64),
                   int(max(tr_y.max(), te_y.max())) + 1)


@register_dataset("mnist", channels=1)
def _mnist(root: Path | None, download: bool) -> RawData:
    """MNIST digits, embedded in the package (gzip IDX files); ``root`` overrides the copy."""
    return _load_idx_folder(root or DATA_FILES, "mnist",
                            "reinstall prunetax, or pass --data-root DIR holding the four MNIST IDX files")


@register_dataset("fashion-mnist", channels=1)
def _fashion_mnist(root: Path | None, download: bool) -> RawData:
    """Fashion-MNIST (Zalando), from the Debian package dataset-fashion-mnist or a folder."""
    folder = root or FASHION_MNIST_ROOT
    if root is not None and not (root / "train-images-idx3-ubyte.gz").exists() and (root / "fashion-mnist").is_dir():
        folder = root / "fashion-mnist"
    return _load_idx_folder(folder, "fashion-mnist",
                            "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                            "or pass --data-root DIR holding the four Fashion-MNIST IDX files")


def _load_cifar(root: Path | None, download: bool, subdir: str, train: list[str], tv_class: str,
                num_classes: int) -> RawData:
    base = root or default_data_root()
    folder = base if (base / train[0]).is_file() else base / subdir
    if not (folder / train[0]).is_file() and download:
        _torchvision_download(tv_class, base)
    missing = [n for n in train + ["test" if subdir == "cifar-100-python" else "test_batch"]
               if not (folder / n).is_file()]
    if missing:
        name = tv_class.lower()
        if root is not None:
            why, again = "--data-root", f" --data-root {shlex.quote(str(root))}"
        elif os.environ.get("PRUNETAX_DATA"):
            why, again = "$PRUNETAX_DATA", ""
        else:
            why, again = "the default: set PRUNETAX_DATA or pass --data-root DIR to look elsewhere", ""
        raise DataError(
            f"{name}: no {missing[0]} in {folder} (data folder {base}, from {why}; $PRUNETAX_CACHE does not move "
            f"it); put CIFAR's python version ({subdir}/) there, or download it there with 'prunetax train "
            f"--model lenet5 --dataset {name} --download --epochs 1 --train-limit 256{again}' (needs torchvision "
            f"and the internet; it also trains a throwaway 1-epoch baseline in seconds)")
    parts = [read_cifar_batch(folder / n) for n in train]
    test_x, test_y = read_cifar_batch(folder / ("test" if subdir == "cifar-100-python" else "test_batch"))
    return RawData(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   test_x, test_y, num_classes)


def _torchvision_download(tv_class: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd  # optional; imported only here
    except Exception as exc:
        raise DataError(f"{tv_class.lower()}: download=True needs torchvision, which does not import "
                        f"({type(exc).__name__}); put the files under {root} yourself") from None
    try:
        getattr(tvd, tv_class)(str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(f"{tv_class.lower()}: download into {root} failed "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


@register_dataset("cifar10")
def _cifar10(root: Path | None, download: bool) -> RawData:
    """CIFAR-10, CIFAR's python batches (cifar-10-batches-py/data_batch_1..5, test_batch)."""
    return _load_cifar(root, download, "cifar-10-batches-py",
                       [f"data_batch_{i}" for i in range(1, 6)], "CIFAR10", 10)


@register_dataset("cifar100")
def _cifar100(root: Path | None, download: bool) -> RawData:
    """CIFAR-100 (fine labels), CIFAR's python files (cifar-100-python/train, test)."""
    return _load_cifar(root, download, "cifar-100-python", ["train"], "CIFAR100", 100)


def _imagefolder(path: Path) -> RawData:
    try:
        from torchvision.datasets import ImageFolder
        from torchvision.transforms.functional import pil_to_tensor
    except Exception as exc:
        raise DataError(f"imagefolder:{path} needs torchvision, which does not import ({type(exc).__name__})") from None
    test_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
    if not (path / "train").is_dir() or test_dir is None:
        raise DataError(f"imagefolder:{path} needs {path}/train/<class>/*.png and {path}/test/<class>/*.png (or val/)")
    splits = []
    for folder in (path / "train", test_dir):
        ds = ImageFolder(str(folder))
        images = [pil_to_tensor(img) for img, _ in ds]
        if len({tuple(t.shape) for t in images}) > 1:
            raise DataError(f"imagefolder:{folder} holds images of different sizes; resize them to one size first")
        splits.append((torch.stack(images).numpy(), np.asarray(ds.targets, dtype=np.int64), ds.classes))
    if splits[0][2] != splits[1][2]:
        raise DataError(f"imagefolder:{path}: train and {test_dir.name} have different class folders")
    return RawData(splits[0][0], splits[0][1], splits[1][0], splits[1][1], len(splits[0][2]))


# ---------------------------------------------------------------------------------------------
# From raw images to a Dataset

def pad_images(x: np.ndarray | torch.Tensor, size: int):
    """Zero-pad images ``[N, C, H, W]`` smaller than ``size`` to ``size × size``, centred."""
    h, w = x.shape[-2:]
    if h >= size and w >= size:
        return x
    top, left = max(size - h, 0) // 2, max(size - w, 0) // 2
    bottom, right = max(size - h, 0) - top, max(size - w, 0) - left
    if isinstance(x, torch.Tensor):
        return torch.nn.functional.pad(x, (left, right, top, bottom))
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def _eval_indices(n: int, eval_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[eval_size:].sort().values, perm[:eval_size].sort().values


def _channel_stats(u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and population std of ``u8 / 255``, from a 256-bin histogram."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(u8.shape[1]):
        counts = torch.bincount(u8[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = counts / counts.sum()
        m = (p * values).sum()
        means.append(m)
        sd = (p * (values - m).square()).sum().sqrt()
        stds.append(sd if sd > 1e-8 else torch.ones((), dtype=torch.float64))  # constant channel: std 1
    return torch.stack(means), torch.stack(stds)


def load_raw(name: str, root: str | os.PathLike | None = None, download: bool = False) -> RawData:
    """Data set ``name``'s images and labels as read from its files (uint8, unsplit, unpadded);
    a missing or malformed file is a one-line DataError naming it and what would fix it."""
    if not isinstance(name, str) or not name:
        raise DataError(f"data set name must be a non-empty string, got {name!r}")
    dataset_channels(name)  # the one-line error for an unknown name
    if name.startswith("imagefolder:"):
        return _imagefolder(Path(name.split(":", 1)[1]).expanduser())
    return _LOADERS[name](Path(root).expanduser() if root is not None else None, download)


def load_dataset(name: str, root: str | os.PathLike | None = None, eval_size: int = 5000, seed: int = 0,
                 device="cpu", download: bool = False, pad_to: int | None = 32) -> Dataset:
    """Load data set ``name`` as normalised tensors on ``device``.

    ``eval_size`` training images, chosen by ``seed``, form the evaluation split (saliency
    batches); the rest is the training split. ``pad_to`` zero-pads smaller images (None: never).
    """
    raw = load_raw(name, root, download)
    n = len(raw.train_y)
    if not isinstance(eval_size, int) or not 0 <= eval_size < n:
        raise DataError(f"eval_size must be an integer in [0, {n}) for {name} ({n} training images), got {eval_size!r}")
    return _build(name, raw, eval_size, seed, device, pad_to)


def _build(name: str, raw: RawData, eval_size: int, seed: int, device, pad_to: int | None) -> Dataset:
    train_idx, eval_idx = _eval_indices(len(raw.train_y), eval_size, seed)
    train_u8 = torch.from_numpy(np.ascontiguousarray(raw.train_x))
    test_u8 = torch.from_numpy(np.ascontiguousarray(raw.test_x))
    if pad_to:
        train_u8, test_u8 = pad_images(train_u8, pad_to), pad_images(test_u8, pad_to)
    train_sel = train_u8[train_idx]
    mean, std = _channel_stats(train_sel)
    m32, s32 = mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)

    def norm(u8: torch.Tensor) -> torch.Tensor:
        return u8.to(torch.float32).div_(255.0).sub_(m32).div_(s32).to(device)

    labels = torch.from_numpy(np.asarray(raw.train_y, dtype=np.int64))
    return Dataset(
        name=name,
        train_x=norm(train_sel), train_y=labels[train_idx].to(device),
        eval_x=norm(train_u8[eval_idx]), eval_y=labels[eval_idx].to(device),
        test_x=norm(test_u8), test_y=torch.from_numpy(np.asarray(raw.test_y, dtype=np.int64)).to(device),
        num_classes=int(raw.num_classes), mean=tuple(mean.tolist()), std=tuple(std.tolist()),
        eval_size=eval_size, seed=seed, pad_to=pad_to,
    )
