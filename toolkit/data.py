"""MNIST-family data in torchvision's IDX format, served as tensor-indexed batches.

Lookup order for the four IDX files (``.gz`` accepted everywhere):

1. ``data_dir``, when given (flat, or torchvision's ``<root>/<ClassName>/raw/``);
2. the toolkit data cache (``$TOOLKIT_CACHE`` or ``~/.cache/toolkit``), torchvision layout;
3. the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
4. torchvision's download into the cache (needs internet).

Compressed files are unpacked into the cache, which is laid out as torchvision expects,
so ``torchvision.datasets.FashionMNIST(root=cache)`` reads it too. The files are decoded
once into uint8 tensors; each batch is one tensor-indexing operation, with no per-sample
PIL or ``ToTensor`` work.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, random_split

from toolkit.atomic import leftover_name, output_error, writable_dir
from toolkit.errors import DataError, UnknownNameError, UsageError, first_line

#: Registered data sets: CLI name → torchvision class name (also the cache sub-folder).
DATASETS: dict[str, str] = {
    "fashion-mnist": "FashionMNIST",
    "mnist": "MNIST",
    "kmnist": "KMNIST",
}
DEFAULT_DATASET = "fashion-mnist"
#: sha256 of each split's labels (as uint8 bytes) for data sets whose files are known here:
#: a ``--data_dir`` holding one of them under another ``--dataset`` name is refused, since
#: the run would be recorded (and named) as the wrong data set.
LABEL_SHA256: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
        "test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    },
}
SYSTEM_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FILES: tuple[str, ...] = tuple(name for pair in SPLIT_FILES.values() for name in pair)
NUM_CLASSES = 10
INPUT_SHAPE = (1, 28, 28)


def cache_dir() -> Path:
    """The toolkit cache folder: ``$TOOLKIT_CACHE`` (``~`` expanded; empty means unset) or
    ``~/.cache/toolkit``."""
    value = os.environ.get("TOOLKIT_CACHE", "")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "toolkit"


def _class_name(dataset: str) -> str:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise UnknownNameError(
            f"unknown dataset '{dataset}'; available: {', '.join(sorted(DATASETS))}"
        ) from None


def recorded_dataset(recorded: str | None, run_json: Path) -> str:
    """The data set that ``run_json`` records (``recorded``; None: the default).

    Raises:
        DataError: an unknown name, said to come from ``run_json`` (the user gave none).
    """
    if recorded is None:
        return DEFAULT_DATASET
    if recorded not in DATASETS:
        raise DataError(
            f"{run_json} records an unknown dataset {recorded!r}; pass --dataset "
            f"({', '.join(sorted(DATASETS))})"
        )
    return recorded


def _find_in(folder: Path) -> dict[str, Path]:
    """Map each IDX name present in ``folder`` (plain or ``.gz``) to its file."""
    found = {}
    for name in IDX_FILES:
        for path in (folder / name, folder / f"{name}.gz"):
            if path.is_file():
                found[name] = path
                break
    return found


def _find_files(folder: Path, class_name: str) -> dict[str, Path] | None:
    """Map each IDX name to a plain or ``.gz`` file in ``folder`` (flat, or torchvision's
    ``<folder>/<ClassName>/raw``), or None if any is missing."""
    for candidate in (folder, folder / class_name / "raw"):
        found = _complete(_find_in(candidate))
        if found is not None:
            return found
    return None


def _missing_note(folder: Path, class_name: str) -> str:
    """``; FOLDER lacks NAME...`` for the first layout of ``folder`` holding some IDX files."""
    for candidate in (folder, folder / class_name / "raw"):
        found = _find_in(candidate)
        if found:
            missing = ", ".join(name for name in IDX_FILES if name not in found)
            return f"; {candidate} lacks {missing}"
    return ""


#: Unpacked cache file → the ``.gz`` it came from, so errors about its contents name the
#: user's file, not toolkit's copy.
_UNPACKED_FROM: dict[Path, Path] = {}


def shown_path(path: Path) -> str:
    """``path`` as an error message should name it: an unpacked copy by its ``.gz``."""
    source = _UNPACKED_FROM.get(Path(path))
    return f"{source} (unpacked)" if source is not None else str(path)


def _unpack_into(files: dict[str, Path], raw_dir: Path) -> dict[str, Path]:
    """Unpack ``.gz`` files into ``raw_dir`` (atomically); plain files are used in place."""
    out = {name: src if src.suffix != ".gz" else raw_dir / name for name, src in files.items()}
    _UNPACKED_FROM.update({out[name]: src for name, src in files.items() if src.suffix == ".gz"})
    pending = {
        name: src
        for name, src in files.items()
        if src.suffix == ".gz" and not (raw_dir / name).is_file()
    }
    if pending:
        # A corrupt .gz leaves no empty cache folders behind (writable_dir removes them).
        with writable_dir(raw_dir):
            for name, src in pending.items():
                _unpack_one(src, raw_dir / name)
    return out


def _gunzip_chunks(src: Path) -> Iterator[bytes]:
    """The decompressed bytes of ``src`` in chunks; read errors become a DataError."""
    try:
        with gzip.open(src, "rb") as fin:
            while chunk := fin.read(1 << 20):
                yield chunk
    except (OSError, EOFError, zlib.error) as exc:
        # An OSError with an errno (permission, I/O) is a read failure; a bad gzip header,
        # deflate stream or early end has none and means the file is corrupt.
        corrupt = "" if isinstance(exc, OSError) and exc.errno else "; the file is corrupt"
        raise DataError(f"cannot unpack {src}: {first_line(exc)}{corrupt}") from None


def _unpack_one(src: Path, dst: Path) -> None:
    """Decompress ``src`` into ``dst`` through a hidden temp file, removed on any failure.

    Errors reading ``src`` are a DataError; errors writing the cache (read-only, not a
    folder, disk full) are an OutputError naming the cache folder.
    """
    tmp = leftover_name(dst, "tmp")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fout:
            for chunk in _gunzip_chunks(src):
                fout.write(chunk)
        os.replace(tmp, dst)
    except OSError as exc:
        raise output_error(dst.parent, exc) from None
    finally:  # also on Ctrl-C; fails only where nothing could be written anyway
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def locate_data(
    dataset: str = DEFAULT_DATASET, data_dir: str | Path | None = None, download: bool = True
) -> dict[str, Path]:
    """Find (and if needed unpack or download) the four IDX files of ``dataset``.

    Returns:
        A mapping from IDX file name (e.g. ``train-images-idx3-ubyte``) to an unpacked file.

    Raises:
        DataError: nothing found; the message names every folder tried and how to get data.
    """
    class_name = _class_name(dataset)
    raw_dir = cache_dir() / class_name / "raw"
    if data_dir is not None:
        found = _find_files(Path(data_dir), class_name)
        if found is None:
            raise DataError(
                f"no {class_name} IDX files ({', '.join(IDX_FILES)}, plain or .gz) in "
                f"{data_dir} or {Path(data_dir) / class_name / 'raw'}"
                f"{_missing_note(Path(data_dir), class_name)}"
            )
        # Unpack a user's .gz files apart from the shared cache, keyed by their source,
        # so two different folders never share (stale) unpacked files.
        source = "|".join(
            f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in sorted(found.values())
        )
        key = hashlib.sha256(source.encode()).hexdigest()[:16]
        return _unpack_into(found, cache_dir() / "unpacked" / key / class_name / "raw")
    tried = [raw_dir]
    # Only the torchvision layout counts in the cache: files dropped flat into the cache
    # root belong to no particular data set.
    found = _complete(_find_in(raw_dir))
    if found is None and dataset in SYSTEM_DIRS:
        tried.append(SYSTEM_DIRS[dataset])
        found = _find_files(SYSTEM_DIRS[dataset], class_name)
    if found is not None:
        return _unpack_into(found, raw_dir)
    if download:
        tried.append(Path(f"torchvision download into {raw_dir}"))
        if _try_download(class_name):
            found = _complete(_find_in(raw_dir))
            if found is not None:
                return _unpack_into(found, raw_dir)
    hint = (
        "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        if dataset == "fashion-mnist"
        else ""
    )
    raise DataError(
        f"{class_name} data not found (tried: {'; '.join(map(str, tried))}); "
        f"{hint}pass --data_dir with the IDX files, or connect to the internet to download"
    )


def _complete(found: dict[str, Path]) -> dict[str, Path] | None:
    return found if len(found) == len(IDX_FILES) else None


def _try_download(class_name: str) -> bool:
    from torchvision import datasets

    try:
        for train in (True, False):
            getattr(datasets, class_name)(cache_dir(), train=train, download=True)
    except Exception:
        return False
    return True


def _reason(exc: Exception) -> str:
    """What a failed IDX read said; torchvision's header checks are bare assertions."""
    if isinstance(exc, AssertionError) and not str(exc).strip():
        return "bad IDX header"
    return first_line(exc)


@functools.lru_cache(maxsize=8)
def _decode(
    images_path: Path, labels_path: Path, stamp: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    for path, kind in ((images_path, "images"), (labels_path, "labels")):
        count = _item_count(path)
        if count == 0:
            raise DataError(f"IDX file {shown_path(path)} holds no {kind}")
        if count is None and path.is_file() and path.stat().st_size == 0:
            raise DataError(f"IDX {kind[:-1]} file {shown_path(path)} is empty")
    try:
        images = read_image_file(str(images_path))
    except Exception as exc:
        raise DataError(
            f"corrupt or truncated IDX image file {shown_path(images_path)}: {_reason(exc)}"
        ) from None
    try:
        labels = read_label_file(str(labels_path))
    except Exception as exc:
        raise DataError(
            f"corrupt or truncated IDX label file {shown_path(labels_path)}: {_reason(exc)}"
        ) from None
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"IDX files do not match: {shown_path(images_path)} holds {tuple(images.shape)}, "
            f"{shown_path(labels_path)} holds {tuple(labels.shape)}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise DataError(f"labels in {shown_path(labels_path)} are outside 0..{NUM_CLASSES - 1}")
    return images, labels.long()


def _item_count(path: Path) -> int | None:
    """The item count of an IDX header (bytes 4 to 8), or None if there is no header."""
    try:
        with open(path, "rb") as f:
            header = f.read(8)
    except OSError:
        return None  # reported by the decoder
    if len(header) < 8 or header[:2] != b"\0\0":
        return None
    return int.from_bytes(header[4:8], "big")


def load_split(
    split: str,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split (``train`` or ``test``) into uint8 images (N, 28, 28) and int64 labels.

    The tensors are cached per file version and shared between calls: copy them before
    changing them in place.
    """
    if split not in SPLIT_FILES:
        raise UnknownNameError(f"unknown split '{split}'; available: train, test")
    files = locate_data(dataset, data_dir, download)
    images_path, labels_path = (files[name] for name in SPLIT_FILES[split])
    # ctime and inode too: `cp -p`, `tar x` and `rsync -a` keep a replaced file's mtime.
    stamp = tuple(
        (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        for st in map(os.stat, (images_path, labels_path))
    )
    images, labels = _decode(images_path, labels_path, stamp)
    _check_is_dataset(labels, split, dataset, Path(data_dir) if data_dir else labels_path)
    return images, labels


def _check_is_dataset(labels: torch.Tensor, split: str, dataset: str, where: Path) -> None:
    """Refuse files that are known to be another registered data set's (~1 ms)."""
    digest = hashlib.sha256(labels.to(torch.uint8).numpy().tobytes()).hexdigest()
    for other, known in LABEL_SHA256.items():
        if other != dataset and known.get(split) == digest:
            raise DataError(
                f"{where} holds the {other} {split} set, not {dataset}; pass "
                f"--dataset {other}, or a --data_dir with the {dataset} files"
            )


@contextlib.contextmanager
def recorded_in(run_json: Path | None, data_dir: str | Path | None = None) -> Iterator[None]:
    """Name ``run_json`` in a :class:`DataError` from the block, when the data folder used
    (``data_dir``) is the one that file recorded (evaluate and verify use the run's
    ``--data_dir``): a folder moved since training was named without saying where the
    path came from. Only a folder that is gone gets the advice to pass another one."""
    try:
        yield
    except DataError as exc:
        if run_json is None:
            raise
        where = f"the run's --data_dir, recorded in {run_json}"
        if data_dir is not None and not Path(data_dir).is_dir():
            where += "; pass --data_dir where the files are now"
        raise DataError(f"{exc} ({where})") from None


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) images → float32 (N, 1, H, W) in [0, 1], as ``ToTensor`` gives."""
    return images.unsqueeze(1).float().div_(255.0)


class TensorImageDataset(Dataset):
    """Images and labels held as tensors. Batches are fetched with one indexing operation.

    ``DataLoader`` calls ``__getitems__`` with a whole batch of indices (samplers, shuffling
    and Lightning's ``DistributedSampler`` keep working); use :func:`batch_collate`.

    Args:
        images: uint8 (N, H, W) images, converted once to float, or float (N, 1, H, W).
        labels: int64 labels (N,).
        indices: For a split taken from a larger set (see :meth:`split`), the positions of
            its samples in that set, as ``torch.utils.data.Subset.indices`` gives them.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, indices: list[int] | None = None
    ) -> None:
        # Converted once (188 MB for 60,000 images) so a batch is a single gather.
        self.images = to_float(images) if images.dtype == torch.uint8 else images
        self.labels = labels
        self.indices = indices

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # Measured per batch of 64 on the 2-core machine: numpy builds the index tensor in
        # 3 µs where torch.tensor(list) takes 15 µs, and index_select copies whole rows in
        # 10 µs where advanced indexing (images[index]) takes 45 µs.
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return self.images.index_select(0, index), self.labels.index_select(0, index)

    @classmethod
    def split(
        cls, images: torch.Tensor, labels: torch.Tensor, lengths: Sequence[int], seed: int
    ) -> list[TensorImageDataset]:
        """``random_split`` with the same seeded indices, each part stored contiguously.

        A batch is then one gather from its own tensor, without a ``Subset`` in between.
        """
        parts = random_split(range(len(labels)), lengths, torch.Generator().manual_seed(seed))
        out = []
        for part in parts:
            index = torch.as_tensor(part.indices, dtype=torch.long)
            out.append(
                cls(images.index_select(0, index), labels.index_select(0, index), part.indices)
            )
        return out


def batch_collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for :class:`TensorImageDataset`: the batch is already stacked."""
    return batch


class BatchGroup(list):
    """Consecutive training batches, each an ``(images, labels)`` pair of ``batch_size``
    samples, handed to one Lightning training step (``batches_per_step`` above 1)."""


class GroupedBatchSampler(BatchSampler):
    """``BatchSampler`` whose items are ``batches_per_group`` consecutive batches joined.

    The batches are the ones ``BatchSampler(sampler, batch_size, drop_last)`` gives, in the
    same order; the last group of an epoch holds what is left. :func:`group_collate` splits
    a group's single gather back into its batches.
    """

    def __init__(
        self, sampler: Any, batch_size: int, drop_last: bool, batches_per_group: int = 1
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.batches_per_group = batches_per_group

    def __iter__(self) -> Iterator[list[int]]:
        group: list[int] = []
        for count, batch in enumerate(super().__iter__(), 1):
            group += batch
            if count % self.batches_per_group == 0:
                yield group
                group = []
        if group:
            yield group

    def __len__(self) -> int:
        return -(-super().__len__() // self.batches_per_group)


def group_collate(batch: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> BatchGroup:
    """Collate for a :class:`GroupedBatchSampler`: the group's batches, as views."""
    images, labels = batch
    return BatchGroup(
        (images[start : start + batch_size], labels[start : start + batch_size])
        for start in range(0, len(labels), batch_size)
    )


class MNISTDataModule(L.LightningDataModule):
    """LightningDataModule for MNIST, Fashion-MNIST and KMNIST in IDX format.

    Args:
        data_dir: Folder with the IDX files; None searches the cache, Debian, then downloads.
        dataset: ``fashion-mnist`` (default), ``mnist`` or ``kmnist``.
        batch_size: Batch size of the training loader (64, as in the tutorial), and of
            the others when ``eval_batch_size`` is None.
        seed: Seed of the train/val split (42, as in the tutorial).
        val_size: Validation samples taken from the train split; None means 1/12 of it
            (55,000/5,000 on the full 60,000).
        num_workers: DataLoader workers; 0 is fastest for in-memory tensor batches.
        download: Allow torchvision's download as the last resort.
        eval_batch_size: Batch size of the validation, test and predict loaders; None means
            ``batch_size``. It changes no accuracy, only how many steps a pass takes.
        batches_per_step: Training batches per item of the training loader. Above 1 each
            item is a :class:`BatchGroup` of that many batches (the last of an epoch may
            hold fewer), in the order the plain loader gives them, for a LightningModule
            that takes one optimizer step per batch of a group (``LightningModel`` does).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        dataset: str = DEFAULT_DATASET,
        batch_size: int = 64,
        seed: int = 42,
        val_size: int | None = None,
        num_workers: int = 0,
        download: bool = True,
        eval_batch_size: int | None = None,
        batches_per_step: int = 1,
    ) -> None:
        super().__init__()
        _class_name(dataset)
        for name, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("batches_per_step", batches_per_step),
        ):
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be at least 1, got {value}")
        self.batches_per_step = batches_per_step
        self.eval_batch_size = eval_batch_size or batch_size
        self.data_dir = data_dir
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.val_size = val_size
        self.num_workers = num_workers
        self.download = download

    def _load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Both splits, checked to hold images of one shape."""
        splits = {  # decoded once: load_split caches the tensors
            split: load_split(split, self.dataset, self.data_dir, self.download)
            for split in SPLIT_FILES
        }
        shapes = {split: tuple(images.shape[1:]) for split, (images, _) in splits.items()}
        if shapes["train"] != shapes["test"]:
            files = locate_data(self.dataset, self.data_dir, self.download)
            described = ", ".join(
                f"{files[SPLIT_FILES[split][0]]} holds {'x'.join(map(str, shape))} images"
                for split, shape in shapes.items()
            )
            raise DataError(f"train and test images differ in shape: {described}")
        return splits

    def prepare_data(self) -> None:
        """Find, unpack or download the files and check they decode and split (one process
        only)."""
        self.split_sizes(len(self._load_splits()["train"][1]))

    def split_sizes(self, total: int) -> tuple[int, int]:
        """(train, val) sample counts of the seeded split of ``total`` training samples.

        Raises:
            DataError: the split leaves no sample on one side.
        """
        val = self.val_size if self.val_size is not None else total // 12
        if 0 < val < total:
            return total - val, val
        files = locate_data(self.dataset, self.data_dir, self.download)
        where = shown_path(files[SPLIT_FILES["train"][1]])
        if self.val_size is None:
            raise DataError(
                f"{where} holds {total} training sample(s): too few to hold out a twelfth "
                "for validation; a train split needs at least 12"
            )
        raise DataError(
            f"cannot take {val} validation samples from the {total} of {where}; "
            f"val_size must be 1 to {total - 1}"
        )

    def source_folder(self) -> Path:
        """The folder the IDX files were found in (a ``.gz`` file's, not the cache's)."""
        files = locate_data(self.dataset, self.data_dir, self.download)
        first = files[SPLIT_FILES["train"][1]]
        return _UNPACKED_FROM.get(first, first).parent

    def setup(self, stage: str | None = None) -> None:
        """Decode the IDX files and make the seeded train/val split."""
        splits = self._load_splits()
        images, labels = splits["train"]
        total = len(labels)
        val = self.split_sizes(total)[1]
        # The Trainer calls setup for every fit, validate and test: converting and splitting
        # again took ~0.4 s each time. The decoded tensors are cached per file version, so
        # the same objects (`is`) with the same seed and size mean the same datasets.
        made_from = (images, splits["test"][0], self.seed, val)
        previous = getattr(self, "_made_from", None)
        if (
            previous is not None
            and previous[0] is images
            and previous[1] is made_from[1]
            and previous[2:] == made_from[2:]
        ):
            return
        self._made_from = made_from
        self.mnist_train, self.mnist_val = TensorImageDataset.split(
            images, labels, [total - val, val], self.seed
        )
        self.mnist_test = TensorImageDataset(*splits["test"])
        self.mnist_predict = self.mnist_test

    def _loader(self, dataset: Dataset, train: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            collate_fn=batch_collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (drop_last, as in the tutorial); with
        ``batches_per_step`` above 1, groups of them (:class:`BatchGroup`)."""
        if self.batches_per_step == 1:
            return self._loader(self.mnist_train, train=True)
        # One gather per group; the same shuffled batches as the plain loader, in order.
        sampler = GroupedBatchSampler(
            RandomSampler(self.mnist_train), self.batch_size, True, self.batches_per_step
        )
        return DataLoader(
            self.mnist_train,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=functools.partial(group_collate, batch_size=self.batch_size),
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader(self.mnist_val)

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader(self.mnist_test)

    def predict_dataloader(self) -> DataLoader:
        """Prediction batches (the test split)."""
        return self._loader(self.mnist_predict)

    def train_eval_dataloader(self) -> DataLoader:
        """The training subset in order, for measuring train accuracy."""
        return self._loader(self.mnist_train)
