"""Data module: IDX decoding, lookup order, errors, tensor batches."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import requires_real_data
from idx import idx_bytes, make_split, write_idx_dataset

import toolkit.data as data
from toolkit.data import MNISTDataModule, cache_dir, load_split, locate_data
from toolkit.errors import DataError, OutputError, UnknownNameError


def test_decodes_plain_idx(idx_dir: Path) -> None:
    images, labels = load_split("train", data_dir=idx_dir)
    expected_images, expected_labels = make_split(480, 1)
    assert images.shape == (480, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images, torch.from_numpy(expected_images))
    assert torch.equal(labels, torch.from_numpy(expected_labels).long())


def test_gz_files_are_unpacked_into_cache(idx_gz_dir: Path) -> None:
    files = locate_data("fashion-mnist", idx_gz_dir)
    for path in files.values():
        assert path.suffix != ".gz" and path.is_file()
        assert path.parent.parts[-2:] == ("FashionMNIST", "raw")  # torchvision's layout
    images, _ = load_split("test", data_dir=idx_gz_dir)
    assert images.shape == (120, 28, 28)


def test_torchvision_layout_is_accepted(tmp_path: Path, idx_dir: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(idx_dir, raw)
    images, _ = load_split("train", "mnist", data_dir=tmp_path)
    assert len(images) == 480


def test_missing_files_name_the_folder(tmp_path: Path, idx_dir: Path) -> None:
    shutil.copytree(idx_dir, tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"no FashionMNIST IDX files.*d"):
        locate_data("fashion-mnist", tmp_path / "d")


def test_truncated_file_is_a_data_error(tmp_path: Path, idx_dir: Path) -> None:
    shutil.copytree(idx_dir, tmp_path / "d")
    path = tmp_path / "d" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_split("train", data_dir=tmp_path / "d")


def test_bad_contents_of_a_good_gz_name_the_gz_not_the_cache_copy(
    tmp_path: Path, idx_gz_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The error once named toolkit's unpacked copy under the cache, not the user's file.
    import gzip

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "d"
    shutil.copytree(idx_gz_dir, folder)
    images = folder / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:5000]))
    with pytest.raises(DataError) as info:
        load_split("train", data_dir=folder)
    message = str(info.value)
    assert message.startswith(f"corrupt or truncated IDX image file {images} (unpacked): ")
    assert str(tmp_path / "cache") not in message
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b""))
    empty = r"IDX label file .*train-labels-idx1-ubyte\.gz \(unpacked\) is empty$"
    with pytest.raises(DataError, match=empty):
        load_split("train", data_dir=folder)


def test_an_empty_split_is_named_as_empty_not_corrupt(tmp_path: Path, idx_dir: Path) -> None:
    import numpy as np

    folder = tmp_path / "d"
    shutil.copytree(idx_dir, folder)
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((0,), np.uint8)))
    with pytest.raises(DataError, match=r"IDX file .*t10k-images-idx3-ubyte holds no images$"):
        load_split("test", data_dir=folder)


def test_a_train_split_too_small_to_hold_out_validation_is_refused_before_setup(
    tmp_path: Path,
) -> None:
    write_idx_dataset(tmp_path / "d", n_train=11, n_test=5)
    module = MNISTDataModule(str(tmp_path / "d"), batch_size=4)
    with pytest.raises(DataError, match=r"holds 11 training sample\(s\): .*needs at least 12"):
        module.prepare_data()
    write_idx_dataset(tmp_path / "e", n_train=12, n_test=5)
    module = MNISTDataModule(str(tmp_path / "e"), batch_size=4)
    module.prepare_data()
    assert module.split_sizes(12) == (11, 1)
    module = MNISTDataModule(str(tmp_path / "e"), batch_size=4, val_size=12)
    with pytest.raises(DataError, match="cannot take 12 validation samples from the 12 of"):
        module.prepare_data()


def test_corrupt_gz_is_a_data_error(tmp_path: Path, idx_gz_dir: Path) -> None:
    shutil.copytree(idx_gz_dir, tmp_path / "d")
    (tmp_path / "d" / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="corrupt"):
        locate_data("fashion-mnist", tmp_path / "d")


def test_nothing_found_names_every_place_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import toolkit.data as data

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", tmp_path / "nowhere")
    monkeypatch.setattr(data, "_try_download", lambda name: False)
    with pytest.raises(DataError) as info:
        locate_data("fashion-mnist")
    message = str(info.value)
    assert str(tmp_path / "cache") in message and "nowhere" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(UnknownNameError, match="available: fashion-mnist, kmnist, mnist"):
        MNISTDataModule(dataset="cifar")


def test_datamodule_split_and_batches(idx_dir: Path) -> None:
    dm = MNISTDataModule(str(idx_dir), batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.mnist_train) == 440 and len(dm.mnist_val) == 40  # 1/12 held out
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.shape == (64,) and y.dtype == torch.int64
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 120
    # The split is seeded: a second module picks the same validation samples, and another
    # seed other ones (the same with that seed again).
    dm2 = MNISTDataModule(str(idx_dir))
    dm2.setup("fit")
    assert dm.mnist_val.indices == dm2.mnist_val.indices
    other = [MNISTDataModule(str(idx_dir), seed=7) for _ in range(2)]
    for module in other:
        module.setup("fit")
    assert other[0].mnist_val.indices == other[1].mnist_val.indices != dm.mnist_val.indices
    # Training batches are shuffled, a new order each epoch; evaluation batches are not.
    orders = [torch.cat([y for _, y in dm.train_dataloader()]) for _ in range(2)]
    in_order = dm.mnist_train.labels[: len(orders[0])]
    assert not torch.equal(orders[0], in_order) and not torch.equal(orders[0], orders[1])
    assert torch.equal(torch.cat([y for _, y in dm.val_dataloader()]), dm.mnist_val.labels)


def test_split_is_the_tutorials_random_split(idx_dir: Path) -> None:
    """The stored splits hold exactly the samples the tutorial's ``random_split`` picks."""
    from torch.utils.data import random_split

    from toolkit.data import TensorImageDataset, load_split, to_float

    dm = MNISTDataModule(str(idx_dir), seed=42)
    dm.setup("fit")
    images, labels = load_split("train", data_dir=str(idx_dir))
    full = TensorImageDataset(images, labels)
    train, val = random_split(full, [440, 40], generator=torch.Generator().manual_seed(42))
    assert dm.mnist_train.indices == train.indices and dm.mnist_val.indices == val.indices
    picks = [5, 0, 439, 17]  # a batch as a sampler hands it over, out of order
    x, y = dm.mnist_train.__getitems__(picks)
    expected = [train.indices[i] for i in picks]
    assert torch.equal(x, to_float(images)[expected]) and torch.equal(y, labels[expected])
    assert torch.equal(dm.mnist_val[3][0], full[val.indices[3]][0])


def test_batches_match_torchvision_to_tensor(idx_dir: Path) -> None:
    from torchvision import transforms

    dm = MNISTDataModule(str(idx_dir), batch_size=8)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    images, labels = load_split("test", data_dir=idx_dir)
    from PIL import Image

    reference = torch.stack(
        [transforms.ToTensor()(Image.fromarray(images[i].numpy())) for i in range(8)]
    )
    assert torch.equal(x, reference) and torch.equal(y, labels[:8])


@requires_real_data
def test_real_fashion_mnist_default_split() -> None:
    dm = MNISTDataModule()
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.mnist_train), len(dm.mnist_val), len(dm.mnist_test)) == (55_000, 5_000, 10_000)
    labels = dm.mnist_test.labels
    assert torch.equal(torch.bincount(labels), torch.full((10,), 1000))


@requires_real_data
def test_fashion_mnist_files_under_another_name_are_refused(idx_dir: Path) -> None:
    """``--dataset mnist --data_dir <fashion files>`` trained, and recorded the run as mnist."""
    folder = locate_data("fashion-mnist", download=False)["train-labels-idx1-ubyte"].parent
    for split in ("train", "test"):
        assert len(load_split(split, "fashion-mnist", folder)[1]) in (60_000, 10_000)
        for other in ("mnist", "kmnist"):
            message = f"holds the fashion-mnist {split} set, not {other}"
            with pytest.raises(DataError, match=message):
                load_split(split, other, folder)
    assert len(load_split("train", "mnist", idx_dir)[1]) == 480  # unknown files: accepted


def test_eval_batch_size_applies_to_evaluation_loaders_only(idx_dir: Path) -> None:
    from toolkit.errors import UsageError

    dm = MNISTDataModule(str(idx_dir), batch_size=32, eval_batch_size=100)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 32
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.train_eval_dataloader()):
        assert loader.batch_size == 100
    assert [len(b[1]) for b in dm.test_dataloader()] == [100, 20]
    assert MNISTDataModule(str(idx_dir), batch_size=32).eval_batch_size == 32
    with pytest.raises(UsageError, match="eval_batch_size must be at least 1"):
        MNISTDataModule(str(idx_dir), eval_batch_size=0)


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty cache, with no Debian folder and no download to fall back on."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TOOLKIT_CACHE", str(cache))
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", tmp_path / "nowhere")
    monkeypatch.setattr(data, "_try_download", lambda name: False)
    return cache


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def test_corrupt_deflate_stream_is_a_data_error_and_leaves_no_temp(
    tmp_path: Path, own_cache: Path
) -> None:
    folder = write_idx_dataset(tmp_path / "d", compress=True)
    path = folder / "train-images-idx3-ubyte.gz"
    packed = bytearray(path.read_bytes())
    packed[20:40] = b"\xff" * 20  # a valid gzip header, then a broken deflate stream
    path.write_bytes(bytes(packed))
    with pytest.raises(DataError, match=r"cannot unpack .*train-images.*the file is corrupt"):
        locate_data("fashion-mnist", folder)
    assert _leftovers(own_cache) == []
    # no empty cache folders left either; the files unpacked before the bad one may stay
    empty = [p for p in own_cache.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert empty == []


def test_interrupted_unpack_leaves_no_temp(
    tmp_path: Path, own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_idx_dataset(tmp_path / "d", compress=True)

    def interrupted(src: Path):
        yield b"\0" * 100
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_gunzip_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        locate_data("fashion-mnist", folder)
    assert not own_cache.exists()  # the folders made for the unpacking are gone too


def test_cache_that_is_a_file_is_an_output_error(tmp_path: Path, own_cache: Path) -> None:
    folder = write_idx_dataset(tmp_path / "d", compress=True)
    own_cache.write_text("not a folder")
    with pytest.raises(OutputError, match=rf"cannot write {own_cache}"):
        locate_data("fashion-mnist", folder)


def test_full_disk_is_an_output_error_not_corrupt(
    tmp_path: Path, own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_idx_dataset(tmp_path / "d", compress=True)

    class FullFile(io.FileIO):
        def write(self, chunk: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data, "open", FullFile, raising=False)  # the unpacker's open()
    with pytest.raises(OutputError, match=rf"cannot write {own_cache}.*no space left") as info:
        locate_data("fashion-mnist", folder)
    assert "corrupt" not in str(info.value)
    assert _leftovers(own_cache) == []


def test_train_and_test_image_shapes_must_match(tmp_path: Path) -> None:
    folder = write_idx_dataset(tmp_path / "d")
    images, _ = make_split(480, 1)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(images[:, :20, :20]))
    dm = MNISTDataModule(str(folder))
    with pytest.raises(DataError, match="differ in shape") as info:
        dm.prepare_data()
    message = str(info.value)
    assert "20x20" in message and "28x28" in message
    assert "train-images-idx3-ubyte" in message and "t10k-images-idx3-ubyte" in message


def test_flat_files_in_the_cache_root_are_ignored(own_cache: Path) -> None:
    write_idx_dataset(own_cache)  # flat in the root: belongs to no particular data set
    for dataset in ("mnist", "kmnist", "fashion-mnist"):
        with pytest.raises(DataError, match="data not found"):
            locate_data(dataset)
    write_idx_dataset(own_cache / "KMNIST" / "raw")
    assert locate_data("kmnist")["train-images-idx3-ubyte"].parent == own_cache / "KMNIST" / "raw"


def test_empty_cache_variable_means_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TOOLKIT_CACHE", "")
    assert cache_dir() == tmp_path / ".cache" / "toolkit"
    monkeypatch.setenv("TOOLKIT_CACHE", "~/mycache")
    assert cache_dir() == tmp_path / "mycache"


def test_garbage_idx_header_says_why(tmp_path: Path, idx_dir: Path) -> None:
    shutil.copytree(idx_dir, tmp_path / "d")
    (tmp_path / "d" / "train-images-idx3-ubyte").write_bytes(b"garbage!" * 50)
    with pytest.raises(DataError, match=r"corrupt or truncated IDX image file .*: bad IDX header$"):
        load_split("train", data_dir=tmp_path / "d")


def test_partial_folder_names_the_missing_files(tmp_path: Path, idx_dir: Path) -> None:
    shutil.copytree(idx_dir, tmp_path / "d" / "FashionMNIST" / "raw")
    (tmp_path / "d" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "d" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as info:
        locate_data("fashion-mnist", tmp_path / "d")
    message = str(info.value)
    assert message.endswith(
        f"{tmp_path / 'd' / 'FashionMNIST' / 'raw'} lacks "
        "train-images-idx3-ubyte, t10k-labels-idx1-ubyte"
    )


def test_a_file_replaced_with_its_old_mtime_is_decoded_again(tmp_path: Path) -> None:
    # `cp -p`, `tar x` and `rsync -a` keep the mtime; the cache served the old tensors.
    write_idx_dataset(tmp_path / "a", n_test=60)
    write_idx_dataset(tmp_path / "b", n_test=30)
    assert len(load_split("test", data_dir=tmp_path / "a")[1]) == 60
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        old, new = tmp_path / "a" / name, tmp_path / "b" / name
        stat = old.stat()
        shutil.copyfile(new, old)
        os.utime(old, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(load_split("test", data_dir=tmp_path / "a")[1]) == 30


def test_setup_again_reuses_the_datasets_until_their_source_changes(tmp_path: Path) -> None:
    # The Trainer calls setup for fit and for every test pass: each call converted and
    # split the whole train set again (~0.4 s on Fashion-MNIST).
    write_idx_dataset(tmp_path / "d", n_test=60)
    dm = MNISTDataModule(str(tmp_path / "d"))
    dm.setup("fit")
    made = (dm.mnist_train, dm.mnist_val, dm.mnist_test)
    dm.setup("test")
    assert dm.mnist_train is made[0] and dm.mnist_val is made[1] and dm.mnist_test is made[2]
    dm.seed = 7  # another split
    dm.setup("fit")
    assert dm.mnist_val is not made[1] and dm.mnist_val.indices != made[1].indices
    dm.seed = 42
    dm.setup("fit")
    assert dm.mnist_val.indices == made[1].indices
    replaced = MNISTDataModule(str(tmp_path / "d"))
    replaced.setup("fit")
    write_idx_dataset(tmp_path / "d", n_test=30)  # new file versions
    replaced.setup("test")
    assert len(replaced.mnist_test) == 30
