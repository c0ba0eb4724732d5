"""Data sets: IDX and CIFAR readers, splits, padding, normalisation, errors."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from prunetax.benchmarks.data import (Dataset, list_datasets, load_dataset, model_input_spec, pad_images,
                             read_cifar_batch, read_idx)
from prunetax.taxonomy.errors import PrunetaxError


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """IDX by hand: two zero bytes, a type byte, the number of dims, big-endian int32 dims, data."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_idx_folder(folder: Path, train_x, train_y, test_x, test_y, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in (("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y),
                      ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)):
        data = idx_bytes(arr.astype(np.uint8))
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# --- IDX -------------------------------------------------------------------------------------

def test_read_idx_uint8_plain_and_gzip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    for name in ("a", "a.gz"):
        got = read_idx(tmp_path / name)
        assert got.shape == (2, 3, 4) and got.dtype == np.uint8
        assert got.tolist() == arr.tolist()


def test_read_idx_big_endian_int32(tmp_path):
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + struct.pack(">iii", -1, 70000, 5)
    (tmp_path / "b").write_bytes(raw)
    assert read_idx(tmp_path / "b").tolist() == [-1, 70000, 5]


@pytest.mark.parametrize("raw, words", [
    (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + bytes(9), "corrupt"),  # one byte short
    (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes(3), "corrupt"),  # one byte too many
    (b"\x12\x34\x08\x01" + struct.pack(">I", 1) + bytes(1), "not an IDX"),  # bad magic
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + bytes(1), "not an IDX"),  # unknown type code
    (b"\x00\x00\x08\x03\x00", "corrupt"),  # truncated header
])
def test_read_idx_rejects_corrupt_files(tmp_path, raw, words):
    (tmp_path / "bad").write_bytes(raw)
    with pytest.raises(PrunetaxError) as excinfo:
        read_idx(tmp_path / "bad")
    assert words in one_line_error(excinfo) and str(tmp_path / "bad") in str(excinfo.value)


def test_read_idx_rejects_broken_gzip(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(bytes(100))[:30])
    with pytest.raises(PrunetaxError) as excinfo:
        read_idx(tmp_path / "bad.gz")
    one_line_error(excinfo)


# --- a tiny IDX data set: splits, padding, normalisation --------------------------------------

@pytest.fixture
def tiny_idx(tmp_path):
    rng = np.random.default_rng(0)
    n_train, n_test = 40, 6
    train_x = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    train_y = np.arange(n_train)  # label = image number, so a split's labels say which images it holds
    test_x = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    test_y = np.array([5, 0, 39, 2, 2, 7])
    write_idx_folder(tmp_path / "digits", train_x, train_y, test_x, test_y)
    return tmp_path / "digits", train_x, train_y, test_x, test_y


def test_splits_padding_and_normalisation_match_numpy(tiny_idx):
    folder, train_x, _, test_x, test_y = tiny_idx
    ds = load_dataset("mnist", root=folder, eval_size=8, seed=3)
    assert ds.train_x.shape == (32, 1, 32, 32) and ds.eval_x.shape == (8, 1, 32, 32)
    assert ds.test_x.shape == (6, 1, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert model_input_spec(ds) == (1, 32, 40)

    train_ids, eval_ids = ds.train_y.tolist(), ds.eval_y.tolist()
    assert sorted(train_ids + eval_ids) == list(range(40))  # disjoint and complete
    padded = np.pad(train_x, ((0, 0), (2, 2), (2, 2))).astype(np.float64) / 255  # 2 zero pixels each side
    mean, std = padded[train_ids].mean(), padded[train_ids].std()  # population std of the training split
    assert ds.mean[0] == pytest.approx(mean, rel=1e-9) and ds.std[0] == pytest.approx(std, rel=1e-9)
    np.testing.assert_allclose(ds.train_x[:, 0].numpy(), (padded[train_ids] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.eval_x[:, 0].numpy(), (padded[eval_ids] - mean) / std, atol=1e-5)
    padded_test = np.pad(test_x, ((0, 0), (2, 2), (2, 2))).astype(np.float64) / 255
    np.testing.assert_allclose(ds.test_x[:, 0].numpy(), (padded_test - mean) / std, atol=1e-5)
    assert ds.test_y.tolist() == test_y.tolist()


def test_eval_split_fixed_by_seed_and_disjoint(tiny_idx):
    folder = tiny_idx[0]
    a, b = load_dataset("mnist", root=folder, eval_size=8, seed=1), load_dataset("mnist", root=folder, eval_size=8, seed=1)
    c = load_dataset("mnist", root=folder, eval_size=8, seed=2)
    assert a.eval_y.tolist() == b.eval_y.tolist() and torch.equal(a.eval_x, b.eval_x)
    assert a.eval_y.tolist() != c.eval_y.tolist()
    assert not set(a.eval_y.tolist()) & set(a.train_y.tolist())
    assert len(a.train_y) + len(a.eval_y) == 40


def test_uncompressed_idx_folder_and_pad_off(tmp_path):
    x = np.full((4, 28, 28), 7, dtype=np.uint8)
    x[:, 0, 0] = [0, 100, 200, 255]
    write_idx_folder(tmp_path, x, np.array([0, 1, 2, 3]), x[:2], np.array([0, 1]), compress=False)
    ds = load_dataset("mnist", root=tmp_path, eval_size=0, pad_to=None)
    assert ds.train_x.shape == (4, 1, 28, 28) and ds.num_classes == 4
    values = x.astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(values.mean()) and ds.std[0] == pytest.approx(values.std())


def test_pad_images_numpy_and_torch():
    x = np.ones((2, 3, 5, 6), dtype=np.uint8)
    p = pad_images(x, 8)
    assert p.shape == (2, 3, 8, 8) and p.sum() == x.sum()
    assert p[0, 0, 1:6, 1:7].all() and not p[0, 0, 0].any()  # top 1 row, left 1 column of zeros
    t = pad_images(torch.from_numpy(x), 8)
    assert t.numpy().tolist() == p.tolist()
    assert pad_images(x, 4) is x  # never cropped


# --- the embedded MNIST and the installed Fashion-MNIST ---------------------------------------

def test_embedded_mnist_loads_with_known_counts():
    # no wall-time assertion: on a shared 2-core machine it fails under load (3.2 s seen at load 5)
    ds = load_dataset("mnist")
    assert (len(ds.train_y), len(ds.eval_y), len(ds.test_y)) == (55000, 5000, 10000)
    assert model_input_spec(ds) == (1, 32, 10)
    # the published MNIST test-set class counts
    assert torch.bincount(ds.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(torch.cat([ds.train_y, ds.eval_y])).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(ds.train_x.mean().item()) < 1e-4 and ds.train_x.std().item() == pytest.approx(1.0, abs=1e-4)
    moved = ds.to("cpu")
    assert isinstance(moved, Dataset) and moved.device.type == "cpu"


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    ds = load_dataset("fashion-mnist", eval_size=1000)
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert torch.bincount(torch.cat([ds.train_y, ds.eval_y])).tolist() == [6000] * 10


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(PrunetaxError) as excinfo:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    message = one_line_error(excinfo)
    assert "dataset-fashion-mnist" in message and str(tmp_path / "nowhere") in message


# --- CIFAR's python format --------------------------------------------------------------------

def write_cifar_batch(path: Path, images: np.ndarray, labels, key=b"labels"):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", key: list(labels), b"data": images.reshape(len(images), -1),
                     b"filenames": [b"x.png"] * len(images)}, f, protocol=2)


def test_cifar10_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8) for _ in range(6)]
    for i in range(5):
        write_cifar_batch(folder / f"data_batch_{i + 1}", batches[i], [i, (i + 1) % 10, 9])
    write_cifar_batch(folder / "test_batch", batches[5], [4, 5, 6])
    x, y = read_cifar_batch(folder / "data_batch_2")
    assert x.shape == (3, 3, 32, 32) and x.tolist() == batches[1].tolist() and y.tolist() == [1, 2, 9]

    ds = load_dataset("cifar10", root=tmp_path, eval_size=5, seed=0)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.num_classes == 10 and model_input_spec(ds) == (3, 32, 10)
    all_train = np.concatenate(batches[:5]).astype(np.float64) / 255
    # the training split's per-channel stats: identify its images among the 15, then numpy
    raw_test = batches[5].astype(np.float64) / 255
    mean, std = np.array(ds.mean), np.array(ds.std)
    restored = ds.test_x.double().numpy() * std[None, :, None, None] + mean[None, :, None, None]
    assert np.allclose(restored, raw_test, atol=1e-6)
    restored_train = ds.train_x.double().numpy() * std[None, :, None, None] + mean[None, :, None, None]
    matches = [int(np.argmin(((all_train - r) ** 2).sum(axis=(1, 2, 3)))) for r in restored_train]
    split = all_train[matches]
    assert np.allclose(ds.mean, split.mean(axis=(0, 2, 3))) and np.allclose(ds.std, split.std(axis=(0, 2, 3)))
    assert ds.test_y.tolist() == [4, 5, 6]


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    imgs = np.zeros((4, 3, 32, 32), dtype=np.uint8)
    imgs[:, 0] = 10
    write_cifar_batch(folder / "train", imgs, [0, 50, 99, 3], key=b"fine_labels")
    write_cifar_batch(folder / "test", imgs[:2], [7, 8], key=b"fine_labels")
    ds = load_dataset("cifar100", root=tmp_path, eval_size=1)
    assert ds.num_classes == 100 and ds.test_y.tolist() == [7, 8]
    assert ds.mean == pytest.approx((10 / 255, 0.0, 0.0)) and ds.std == pytest.approx((1.0, 1.0, 1.0))


class Evil:
    def __reduce__(self):
        return (print, ("owned",))


@pytest.mark.parametrize("content", [
    b"not a pickle at all",
    pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}),  # wrong row length
    pickle.dumps({b"labels": [0]}),  # no data
    pickle.dumps([1, 2, 3]),  # not a dict
    pickle.dumps({b"data": Evil(), b"labels": [0]}),  # a pickle that would call a function
])
def test_corrupt_cifar_batch_is_one_line_error(tmp_path, content):
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(PrunetaxError) as excinfo:
        read_cifar_batch(tmp_path / "test_batch")
    assert str(tmp_path / "test_batch") in one_line_error(excinfo)


def test_missing_cifar_names_the_folder(tmp_path):
    with pytest.raises(PrunetaxError) as excinfo:
        load_dataset("cifar10", root=tmp_path)
    message = one_line_error(excinfo)
    assert "cifar-10-batches-py" in message and str(tmp_path) in message and "--data-root" in message


# --- names and arguments ----------------------------------------------------------------------

def test_list_and_unknown_names():
    assert {"mnist", "fashion-mnist", "cifar10", "cifar100"} <= set(list_datasets())
    with pytest.raises(PrunetaxError) as excinfo:
        load_dataset("mnits")
    message = one_line_error(excinfo)
    assert "mnits" in message and "mnist" in message and "cifar10" in message and "imagefolder:PATH" in message


def test_the_torch_free_names_are_the_registered_data_sets():
    """prunetax.benchmarks.names (what a command checks a name against before importing torch)
    lists the built-in data sets, each with a loader here and its channels, and registrations."""
    from prunetax.benchmarks import names
    from prunetax.benchmarks.data import dataset_channels, register_dataset

    assert list_datasets() == names.dataset_names()
    builtin = ["mnist", "fashion-mnist", "cifar10", "cifar100"]
    assert list(names.BUILTIN_DATASETS) == list_datasets()[:4] == builtin
    for name, channels in names.BUILTIN_DATASETS.items():
        with pytest.raises(PrunetaxError, match="already registered"):   # data.py has its loader
            register_dataset(name)(lambda root, download: None)
        assert dataset_channels(name) == channels
    assert load_dataset("mnist").in_channels == names.check_dataset("mnist") == 1
    assert names.check_dataset("imagefolder:/x") == 3
    with pytest.raises(PrunetaxError, match="unknown data set 'mnits'; choose one of mnist"):
        names.check_dataset("mnits")


def test_bad_eval_size(tiny_idx):
    with pytest.raises(PrunetaxError) as excinfo:
        load_dataset("mnist", root=tiny_idx[0], eval_size=40)
    one_line_error(excinfo)


def test_imagefolder_without_torchvision_or_folders(tmp_path):
    with pytest.raises(PrunetaxError) as excinfo:
        load_dataset(f"imagefolder:{tmp_path}")
    one_line_error(excinfo)
