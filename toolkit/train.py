"""``toolkit train`` and ``toolkit evaluate``: the tutorial pipeline, fast and reproducible."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.profilers import PassThroughProfiler

from toolkit.atomic import (
    atomic_path,
    clean_stale_partials,
    ensure_writable_dir,
    output_error,
    publish_dir,
    write_json,
)
from toolkit.data import DEFAULT_DATASET, MNISTDataModule
from toolkit.errors import OutputExistsError, UsageError, first_line
from toolkit.models import build_model, input_shape_of
from toolkit.module import LightningModel
from toolkit.reload import RUN_INFO, load_lightning_model, load_network

#: File names inside a run folder.
CHECKPOINT, WEIGHTS, SAFETENSORS = "model.ckpt", "model.pt", "model.safetensors"
METRICS_CSV, EPOCHS_CSV = "metrics.csv", "epochs.csv"
_STAGING_ENV = "TOOLKIT_TRAIN_STAGING"
#: Default Adam learning rates, measured on Fashion-MNIST over 10 epochs (test accuracy):
#: mlp 0.001 → 0.8675, 0.002 → 0.8704, 0.003 → 0.8774, 0.005 → 0.8702 (the tutorial's
#: 0.05 → 0.787); cnn 0.001 → 0.9097. Other models use 0.001.
DEFAULT_LEARNING_RATES: dict[str, float] = {"mlp": 0.003, "cnn": 0.001}


@dataclasses.dataclass
class TrainResult:
    """What ``train`` produced. ``to_json()`` is the content of ``run.json``."""

    run_dir: str
    network: str
    network_kwargs: dict[str, Any]
    input_shape: list[int]
    dataset: str
    learning_rate: float
    batch_size: int
    seed: int
    max_epochs: int
    epochs_run: int
    fit_seconds: float
    train_acc: float
    val_acc: float
    test_acc: float
    files: dict[str, str]
    versions: dict[str, str]
    #: The trained network (CPU, eval mode); not part of the JSON.
    model: torch.nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """Plain-data form (without the network)."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"
        }


def _resolve_run_dir(
    output_dir: Path, run_name: str | None, default_name: str, overwrite: bool
) -> Path:
    if run_name is not None:
        run_dir = output_dir / run_name
        if run_dir.exists() and not overwrite:
            raise OutputExistsError(
                f"run folder {run_dir} already exists; pass --overwrite or another --run_name"
            )
        return run_dir
    run_dir, n = output_dir / default_name, 1
    while run_dir.exists():  # never reuse an earlier run's folder by default
        n += 1
        run_dir = output_dir / f"{default_name}-v{n}"
    return run_dir


class ThrottledProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, redrawn at most every ``min_interval`` seconds.

    Lightning redraws its bar (and recomputes the logged metrics it shows) every
    ``refresh_rate`` steps, whatever a step costs. For the MLP at ~2,000 steps per second
    that was 430 redraws and 100 KB of terminal output in 10 epochs, ~5% of the run. This bar
    redraws when a step ends at least ``min_interval`` after the last redraw (0.1 s, tqdm's
    own default ``mininterval``), and always at the end of an epoch or evaluation pass. A
    slow model still redraws after every step.

    Args:
        min_interval: Least seconds between two redraws of a bar.
        refresh_rate: As in ``TQDMProgressBar``; redraws also wait for a multiple of it.
        kwargs: Other ``TQDMProgressBar`` arguments.
    """

    def __init__(self, min_interval: float = 0.1, refresh_rate: int = 1, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.min_interval = min_interval
        self._next_redraw = 0.0
        self._clock = time.monotonic

    def _should_update(self, current: int, total: int) -> bool:
        # Called by each of the bar's *_batch_end hooks with the bar's new position.
        if not super()._should_update(current, total):
            return False
        now = self._clock()
        if current != total and now < self._next_redraw:
            return False
        self._next_redraw = now + self.min_interval
        return True


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler (which records nothing) without its generator frames.

    The Trainer enters ``profiler.profile(name)`` about 18 times per training step. The
    base class builds a ``@contextmanager`` generator each time (~1 µs here); a
    ``nullcontext`` does the same nothing in ~0.4 µs.
    """

    def profile(self, action_name: str) -> contextlib.nullcontext[str]:  # type: ignore[override]
        """A context that yields ``action_name`` and records nothing."""
        return contextlib.nullcontext(action_name)


def _trainer(
    staging: Path | None, max_epochs: int, seed: int, options: dict[str, Any] | None
) -> L.Trainer:
    defaults: dict[str, Any] = {
        "max_epochs": max_epochs,
        "accelerator": "auto",
        "devices": "auto",
        "deterministic": True,
        "enable_progress_bar": sys.stderr.isatty(),
        "enable_checkpointing": False,  # toolkit writes model.ckpt itself, atomically
        "enable_model_summary": sys.stderr.isatty(),
        "logger": False,
        "profiler": NoProfiler(),  # ``--trainer.profiler simple`` etc. replace it
    }
    if staging is not None:
        from lightning.pytorch.loggers import CSVLogger

        defaults["logger"] = CSVLogger(save_dir=str(staging), name="", version="")
        defaults["default_root_dir"] = str(staging)
    options = dict(options or {})
    if "max_epochs" in options and options["max_epochs"] != max_epochs:
        raise UsageError("give max_epochs once: --max_epochs, not also --trainer.max_epochs")
    settings = {**defaults, **options}
    callbacks = settings.get("callbacks") or []
    callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
    own_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    if own_bar and "enable_progress_bar" not in options:
        settings["enable_progress_bar"] = True  # the bar the user passed, even off a terminal
    if settings["enable_progress_bar"] and not own_bar:
        # Lightning's default bar redraws and recomputes its metrics every step.
        settings["callbacks"] = [*callbacks, ThrottledProgressBar()]
    L.seed_everything(seed, verbose=False)
    try:
        return L.Trainer(**settings)
    except (TypeError, ValueError, MisconfigurationException) as exc:
        raise UsageError(f"bad Trainer option: {first_line(exc)}") from None


def _epoch_table(metrics_csv: Path, epochs_csv: Path) -> None:
    """Merge Lightning's metrics.csv into one row per epoch (epoch-level metrics only)."""
    if not metrics_csv.is_file():
        return
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    merged: dict[int, dict[str, str]] = {}
    for row in rows:
        if not row.get("epoch"):
            continue
        target = merged.setdefault(int(float(row["epoch"])), {})
        for key, value in row.items():
            if value != "" and key not in ("epoch", "step") and not key.endswith("_step"):
                target[key] = value
    columns = ["epoch", *sorted({k for r in merged.values() for k in r})]
    with atomic_path(epochs_csv) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for epoch in sorted(merged):
            writer.writerow({"epoch": epoch, **merged[epoch]})


def _versions() -> dict[str, str]:
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": L.__version__,
        "python": sys.version.split()[0],
    }


def _accuracies(
    trainer: L.Trainer, model: L.LightningModule, data: MNISTDataModule
) -> tuple[float, float, float]:
    """Train, val and test accuracy with ``trainer.test``, as the tutorial measures them."""
    data.setup("test")
    loaders = (data.train_eval_dataloader(), data.val_dataloader(), data.test_dataloader())
    return tuple(
        float(trainer.test(model, dataloaders=loader, verbose=False)[0]["accuracy"])
        for loader in loaders
    )  # type: ignore[return-value]


def _save_weights(
    model: torch.nn.Module, staging: Path, network: str, network_kwargs: dict[str, Any]
) -> None:
    from safetensors.torch import save_file

    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(staging / WEIGHTS) as tmp:
        torch.save(state_dict, tmp)  # the tutorial's format: torch.save(model.state_dict())
    metadata = {"network": network, "network_kwargs": json.dumps(network_kwargs)}
    with atomic_path(staging / SAFETENSORS) as tmp:
        save_file(state_dict, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600 files


def train(
    model: str = "mlp",
    model_kwargs: dict[str, Any] | None = None,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | None = None,
    max_epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float | None = None,
    seed: int = 42,
    output_dir: str = "runs",
    run_name: str | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    trainer: dict[str, Any] | None = None,
    eval_batch_size: int = 1000,
    flush_denormal: bool = True,
) -> TrainResult:
    """Train a registered network on MNIST-format data and write a run folder.

    The run folder holds ``model.ckpt`` (Lightning checkpoint), ``model.pt`` (the bare
    network's ``state_dict``, as in the tutorial), ``model.safetensors`` (same weights, with
    the network name in its metadata), ``run.json`` (network, kwargs, input shape, data set,
    accuracies), Lightning's ``metrics.csv`` and a per-epoch ``epochs.csv``. It is built
    under a hidden name and renamed into place at the end, so an interrupted run leaves no
    partial run folder.

    Args:
        model: Registry name of the network (mlp, cnn, resnet18, mobilenet_v3_small).
        model_kwargs: Constructor kwargs of the network.
        dataset: fashion-mnist (default), mnist or kmnist.
        data_dir: Folder with the IDX files (default: cache, Debian package, download).
        max_epochs: Training epochs.
        batch_size: Batch size.
        learning_rate: Adam learning rate; default per model from
            :data:`DEFAULT_LEARNING_RATES` (else 0.001).
        seed: Seed for weights, shuffling and the train/val split.
        output_dir: Parent folder of run folders.
        run_name: Run folder name; default ``<model>-<dataset>``, versioned if taken.
        overwrite: Replace an existing run folder of the same name.
        num_workers: DataLoader workers (0 is fastest for in-memory tensors).
        trainer: Extra ``lightning.Trainer`` options (strategy, devices, precision, ...).
        eval_batch_size: Batch size of the per-epoch validation and of the final accuracy
            passes. It changes no accuracy; larger batches take fewer (~1 ms) Lightning steps.
        flush_denormal: Treat denormal floats (magnitude below 1.2e-38) as zero on the CPU
            while training (``torch.set_flush_denormal``); the setting is restored after.
            Adam's running means of weights that get no gradient decay into denormals, and
            each costs the CPU ~100 cycles: the MLP's Adam step took 200-280 µs instead of
            ~30 µs after three epochs. Intra-op threads started earlier in the process keep
            their own setting, so call ``train`` before other CPU work for the full effect.

    Returns:
        A :class:`TrainResult`, also written as ``run.json``.
    """
    with _denormals_flushed(flush_denormal):
        return _train(
            model,
            model_kwargs,
            dataset,
            data_dir,
            max_epochs,
            batch_size,
            learning_rate,
            seed,
            output_dir,
            run_name,
            overwrite,
            num_workers,
            trainer,
            eval_batch_size,
        )


def _denormals_are_flushed() -> bool:
    """Whether this thread flushes denormals (a denormal times one gives zero)."""
    return float(torch.tensor(1e-39, dtype=torch.float32).mul(1.0)) == 0.0


@contextlib.contextmanager
def _denormals_flushed(enabled: bool) -> Iterator[None]:
    """``torch.set_flush_denormal(True)`` for the block, then the thread's earlier setting.

    Threads inherit the setting when they are created, so intra-op threads that the block
    starts keep it.
    """
    if not enabled or _denormals_are_flushed():
        yield
        return
    changed = torch.set_flush_denormal(True)  # False where the CPU has no such mode
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def _train(
    model: str,
    model_kwargs: dict[str, Any] | None,
    dataset: str,
    data_dir: str | None,
    max_epochs: int,
    batch_size: int,
    learning_rate: float | None,
    seed: int,
    output_dir: str,
    run_name: str | None,
    overwrite: bool,
    num_workers: int,
    trainer: dict[str, Any] | None,
    eval_batch_size: int,
) -> TrainResult:
    model_kwargs = dict(model_kwargs or {})
    build_model(model, **model_kwargs)  # fail fast on a bad name or kwargs
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATES.get(model, 0.001)
    data = MNISTDataModule(
        data_dir,
        dataset,
        batch_size,
        seed,
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
    )
    data.prepare_data()  # find the data before any output is created
    staged = os.environ.get(_STAGING_ENV)
    if staged:  # a DDP child process: the launching process chose the folders
        staging, run_dir = (Path(p) for p in staged.split(os.pathsep))
    else:
        out = ensure_writable_dir(output_dir)
        clean_stale_partials(out)  # leftovers of killed runs; a rerun needs no cleanup
        run_dir = _resolve_run_dir(out, run_name, f"{model}-{dataset}", overwrite)
        staging = out / f".{run_dir.name}.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
        except OSError as exc:
            raise output_error(staging, exc) from None
        os.environ[_STAGING_ENV] = f"{staging}{os.pathsep}{run_dir}"
    try:
        return _train_into(
            staging,
            run_dir,
            model,
            model_kwargs,
            data,
            dataset,
            max_epochs,
            learning_rate,
            seed,
            batch_size,
            trainer,
            overwrite,
        )
    finally:
        if not staged:
            os.environ.pop(_STAGING_ENV, None)
            shutil.rmtree(staging, ignore_errors=True)


def _train_into(
    staging: Path,
    run_dir: Path,
    model: str,
    model_kwargs: dict[str, Any],
    data: MNISTDataModule,
    dataset: str,
    max_epochs: int,
    learning_rate: float,
    seed: int,
    batch_size: int,
    trainer_options: dict[str, Any] | None,
    overwrite: bool,
) -> TrainResult:
    pl_trainer = _trainer(staging, max_epochs, seed, trainer_options)
    lightning_model = LightningModel(
        network=model, network_kwargs=model_kwargs, learning_rate=learning_rate
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        # LightningModel's own no-op CPU transfer is meant to be used; don't tell the user.
        warnings.filterwarnings("ignore", message="You have overridden `transfer_batch_to_device`")
        pl_trainer.fit(lightning_model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    # Every rank must call save_checkpoint (it synchronises); only rank 0 writes.
    partial_ckpt = staging / f".{CHECKPOINT}.partial"
    pl_trainer.save_checkpoint(partial_ckpt, weights_only=False)  # full, resumable
    if pl_trainer.is_global_zero:
        os.replace(partial_ckpt, staging / CHECKPOINT)
    pl_trainer.loggers = []  # keep the accuracy passes out of the training log
    train_acc, val_acc, test_acc = _accuracies(pl_trainer, lightning_model, data)
    result = TrainResult(
        run_dir=str(run_dir),
        network=model,
        network_kwargs=model_kwargs,
        input_shape=list(input_shape_of(lightning_model.model)),
        dataset=dataset,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        max_epochs=max_epochs,
        epochs_run=int(pl_trainer.current_epoch),
        fit_seconds=round(fit_seconds, 3),
        train_acc=train_acc,
        val_acc=val_acc,
        test_acc=test_acc,
        files={
            "checkpoint": CHECKPOINT,
            "state_dict": WEIGHTS,
            "safetensors": SAFETENSORS,
            "metrics": METRICS_CSV,
            "epochs": EPOCHS_CSV,
        },
        versions=_versions(),
        model=lightning_model.model.cpu().eval(),
    )
    if not pl_trainer.is_global_zero:
        return result
    _save_weights(lightning_model.model, staging, model, model_kwargs)
    _epoch_table(staging / METRICS_CSV, staging / EPOCHS_CSV)
    write_json(staging / RUN_INFO, result.to_json())
    publish_dir(staging, run_dir, overwrite)
    return result


def format_accuracies(train_acc: float, val_acc: float, test_acc: float) -> str:
    """The tutorial's result line."""
    return (
        f"Train Acc {train_acc * 100:.2f}% | Val Acc {val_acc * 100:.2f}%"
        f" | Test Acc {test_acc * 100:.2f}%"
    )


def evaluate(
    checkpoint: str | None = None,
    weights: str | None = None,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    batch_size: int = 1000,
    seed: int = 42,
    accelerator: str = "auto",
    trust_pickled_file: bool = False,
) -> dict[str, float]:
    """Evaluate a trained model with ``trainer.test`` and print the tutorial's line.

    Give either ``checkpoint`` (a ``.ckpt``, loaded with ``load_from_checkpoint``) or
    ``weights`` (a state_dict ``.pt`` or ``.safetensors``; ``model`` names the network when
    the file does not record it). ``batch_size`` is the evaluation batch; it changes no
    accuracy, and 1000 takes far fewer Lightning steps than the tutorial's 64.

    Returns:
        ``{"train_acc": ..., "val_acc": ..., "test_acc": ...}``.
    """
    if (checkpoint is None) == (weights is None):
        raise UsageError("give exactly one of --checkpoint PATH or --weights PATH")
    if checkpoint is not None:
        lightning_model = load_lightning_model(checkpoint, trust_pickled_file=trust_pickled_file)
        source = Path(checkpoint)
    else:
        net = load_network(weights, model, model_kwargs, trust_pickled_file)  # type: ignore[arg-type]
        lightning_model = LightningModel(model=net)
        source = Path(weights)  # type: ignore[arg-type]
    if dataset is None:
        dataset = _run_info(source).get("dataset", DEFAULT_DATASET)
    data = MNISTDataModule(data_dir, dataset, batch_size, seed)
    data.prepare_data()
    pl_trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    train_acc, val_acc, test_acc = _accuracies(pl_trainer, lightning_model, data)
    print(format_accuracies(train_acc, val_acc, test_acc))
    return {"train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc}


def _run_info(path: Path) -> dict[str, Any]:
    info = path.parent / RUN_INFO
    try:
        return json.loads(info.read_text()) if info.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
