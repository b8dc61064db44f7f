"""``toolkit train`` and ``toolkit evaluate``: the tutorial pipeline, fast and reproducible."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import logging
import math
import numbers
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import callbacks as lightning_callbacks
from lightning.pytorch.callbacks import (
    Callback,
    Checkpoint,
    EarlyStopping,
    ModelSummary,
    ProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import BatchSampler

from toolkit.atomic import (
    atomic_path,
    clean_stale_partials,
    leftover_name,
    output_error,
    publish_dir,
    writable_dir,
    write_json,
)
from toolkit.data import (
    DEFAULT_DATASET,
    NUM_CLASSES,
    BatchGroup,
    GroupedBatchSampler,
    MNISTDataModule,
    load_split,
    recorded_dataset,
    recorded_in,
)
from toolkit.errors import (
    CheckpointError,
    MissingDependencyError,
    OutputExistsError,
    TerminatedError,
    ToolkitError,
    UsageError,
    first_line,
    stop_behind,
)
from toolkit.models import build_model, input_shape_of
from toolkit.module import LightningModel
from toolkit.reload import (
    RUN_INFO,
    is_lightning_checkpoint,
    load_lightning_model,
    load_network,
    read_json_object,
    text_fields,
)


def _not_an_advert(record: logging.LogRecord) -> bool:
    """Drop Lightning's "💡 Tip: … try installing litlogger" line, printed by every Trainer."""
    return not str(record.msg).startswith("💡 Tip:")


# rank_zero_info logs to one of these two, whichever Lightning module was imported last.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_not_an_advert)

#: File names inside a run folder.
CHECKPOINT, WEIGHTS, SAFETENSORS = "model.ckpt", "model.pt", "model.safetensors"
METRICS_CSV, EPOCHS_CSV = "metrics.csv", "epochs.csv"
#: ``run.json`` ``files`` key → file name, for the files a run folder can hold.
_FILES: dict[str, str] = {
    "checkpoint": CHECKPOINT,
    "state_dict": WEIGHTS,
    "safetensors": SAFETENSORS,
    "metrics": METRICS_CSV,
    "epochs": EPOCHS_CSV,
    "hparams": "hparams.yaml",  # Lightning's CSV logger writes it
}
_STAGING_ENV = "TOOLKIT_TRAIN_STAGING"
#: Default Adam learning rates, measured on Fashion-MNIST over 10 epochs (test accuracy):
#: mlp 0.001 → 0.8675, 0.002 → 0.8704, 0.003 → 0.8774, 0.005 → 0.8702 (the tutorial's
#: 0.05 → 0.787); cnn 0.001 → 0.9097. Other models use 0.001. Measured on the slower CPU of
#: earlier days; on the 2026-11-29 CPU mlp 0.003 gives 0.8766 (matmul kernels differ per CPU).
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
    #: Whole training epochs run; an epoch cut short (``max_steps``, a callback) is not one.
    epochs_run: int
    fit_seconds: float
    train_acc: float
    val_acc: float
    test_acc: float
    files: dict[str, str]
    versions: dict[str, str]
    #: The ``--data_dir`` the run was trained from (resolved), None for the default lookup.
    data_dir: str | None = None
    #: Optimizer steps taken (Lightning's ``global_step``).
    steps_run: int = 0
    #: Lightning's precision for training and the accuracy passes (``evaluate`` uses it too).
    precision: str | None = None
    #: Batches of ``batch_size`` per Lightning training step (one Adam step each).
    batches_per_step: int = 1
    #: The trained network (CPU, eval mode); not part of the JSON.
    model: torch.nn.Module | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """Plain-data form (without the network)."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"
        }


def _check_run_name(run_name: str | None) -> None:
    """A run name must be one plain, visible folder name inside the output folder."""
    if run_name is None:
        return
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    if (
        run_name in ("", ".", "..")
        or run_name.startswith(".")
        or "\0" in run_name
        or any(sep in run_name for sep in separators)
    ):
        raise UsageError(
            f"--run_name must be a plain folder name (no '/', not empty, not starting with "
            f"'.'), got {run_name!r}"
        )


#: The seed the tutorial uses, and the largest that numpy's and Lightning's seeding accept.
DEFAULT_SEED, MAX_SEED = 42, 2**32 - 1


def _valid_seed(seed: Any) -> bool:
    integer = isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
    return integer and 0 <= seed <= MAX_SEED


def _check_numbers(num_workers: int, learning_rate: float, seed: int = 0) -> None:
    if not _valid_seed(seed):
        raise UsageError(f"--seed must be 0 to {MAX_SEED}, got {seed}")
    most = max(16, 4 * (os.cpu_count() or 1))  # each worker is a process holding the data
    if not 0 <= num_workers <= most:
        raise UsageError(f"--num_workers must be 0 to {most}, got {num_workers}")
    if not math.isfinite(learning_rate) or learning_rate <= 0:
        raise UsageError(f"--learning_rate must be a positive number, got {learning_rate}")


def _train_split_size(data: MNISTDataModule) -> int:
    """Samples in the training part of the train/val split (as ``data.setup`` makes it)."""
    total = len(load_split("train", data.dataset, data.data_dir, data.download)[1])
    return data.split_sizes(total)[0]


def _check_batch_size(batch_size: int, samples: int, where: str = "the training split") -> None:
    # The training loader drops the last incomplete batch, as in the tutorial.
    if batch_size > samples:
        raise UsageError(
            f"--batch_size {batch_size} is larger than {where} ({samples} samples): "
            f"no training step would run"
        )


def _sample_shape(data: MNISTDataModule) -> tuple[int, ...]:
    """The shape of one sample as the data module serves it: (1, height, width)."""
    images = load_split("test", data.dataset, data.data_dir, data.download)[0]
    return (1, *(int(s) for s in images.shape[1:]))


def _check_fits_data(
    net: nn.Module,
    name: str,
    shape: tuple[int, ...],
    dataset: str,
    num_classes: int = NUM_CLASSES,
    error: type[ToolkitError] = UsageError,
) -> None:
    """Raise ``error`` naming the mismatch unless ``net`` takes samples of ``shape`` and gives
    ``num_classes`` scores per sample (checked with a forward pass of a zero batch of 2)."""
    declared = input_shape_of(net)
    if declared != tuple(shape):
        raise error(
            f"model {name} takes inputs of shape {declared}, but {dataset} samples have shape "
            f"{tuple(shape)}; check --model_kwargs"
        )
    was_training = net.training
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, *shape))
    except Exception as exc:  # shapes that do not chain inside the network
        raise error(
            f"model {name} cannot run on {dataset} samples of shape {tuple(shape)}: "
            f"{first_line(exc)}; check --model_kwargs"
        ) from None
    finally:
        net.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (2, num_classes):
        raise error(
            f"model {name} gives outputs of shape {got} for a batch of 2, but {dataset} has "
            f"{num_classes} classes (expected (2, {num_classes})); check --model_kwargs"
        )


@contextlib.contextmanager
def _stops_as_errors(what: str) -> Iterator[None]:
    """Lightning's ways of ending early, as the exceptions a caller can act on.

    On SIGTERM Lightning's loops raise ``SIGTERMException``, a ``SystemExit`` with no code
    (a program would exit 0); on Ctrl-C it calls ``sys.exit(1)``. They become
    :class:`~toolkit.errors.TerminatedError` and ``KeyboardInterrupt``.
    """
    try:
        yield
    except SIGTERMException:
        raise TerminatedError(f"terminated (SIGTERM); {what}") from None
    except SystemExit as exc:
        _raise_stop_behind(exc, what)  # Lightning's sys.exit(1) after a KeyboardInterrupt
        raise
    except Exception as exc:
        _raise_stop_behind(exc, what)
        if isinstance(exc, MisconfigurationException):  # an option, found in fit
            raise UsageError(f"bad Trainer option: {first_line(exc)}; {what}") from None
        if isinstance(exc, (ValueError, RuntimeError)) and _raised_by_lightning_checks(exc):
            raise UsageError(f"bad Trainer option: {first_line(exc)}; {what}") from None
        raise


def _raise_stop_behind(exc: BaseException, what: str) -> None:
    """Raise the stop that ``exc`` was raised while handling, if any (see
    :func:`toolkit.errors.stop_behind`)."""
    stop = stop_behind(exc, (SIGTERMException,))
    if stop == 143:
        raise TerminatedError(f"terminated (SIGTERM); {what}") from None
    if stop == 130:
        raise KeyboardInterrupt from None


def _raised_by_lightning_checks(exc: BaseException) -> bool:
    """Whether Lightning raised ``exc`` itself while checking its settings during ``fit``.

    E.g. ``val_check_interval`` larger than an epoch, or ``EarlyStopping(monitor=...)`` on
    a metric that is never logged. Errors raised inside torch or the model (a shape
    mismatch, out of memory) are not such checks.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    origin = Path(frames[-1].filename).as_posix()
    return "/lightning/pytorch/" in origin and any(
        part in origin for part in ("/callbacks/", "/trainer/", "/loops/", "/utilities/")
    )


def _resolve_run_dir(
    output_dir: Path, run_name: str | None, default_name: str, overwrite: bool
) -> Path:
    if run_name is not None:
        run_dir = output_dir / run_name
        if os.path.lexists(run_dir) and not overwrite:
            raise OutputExistsError(
                f"run folder {run_dir} already exists; pass --overwrite or another --run_name"
            )
        return run_dir
    run_dir, n = output_dir / default_name, 1
    while os.path.lexists(run_dir):  # never reuse a folder (or a dangling link) by default
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

    @property
    def total_train_batches(self) -> int | float:
        """Batches in a training epoch. With groups of batches (``batches_per_step``), the
        batches of ``batch_size`` (Adam steps), not the groups Lightning counts."""
        total = super().total_train_batches
        plain = _plain_batches(self.trainer, total)
        return total if plain is None else plain

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Move the bar to the batch just trained (the last batch of a group)."""
        if isinstance(batch, BatchGroup) and isinstance(pl_module, LightningModel):
            batch_idx = pl_module.group_batches_run[0] - 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _should_update(self, current: int, total: int) -> bool:
        # Called by each of the bar's *_batch_end hooks with the bar's new position.
        if not super()._should_update(current, total):
            return False
        now = self._clock()
        if current != total and now < self._next_redraw:
            return False
        self._next_redraw = now + self.min_interval
        return True


class EpochLines(Callback):
    """One line per finished epoch on stderr, for runs with no progress bar to show.

    Off a terminal (a log file, CI, ``make run | tee``) toolkit turns Lightning's bar off;
    without this a long run would print nothing until it ends. Each line gives the epoch,
    the epoch's logged metrics and the time since fit started. Rank zero only.

    Args:
        file: Where the lines go (default: ``sys.stderr`` at print time).
    """

    #: Metrics shown, in this order, when logged; accuracies as percentages.
    SHOWN = ("train_loss", "train_acc", "val_loss", "val_acc")

    def __init__(self, file: Any = None) -> None:
        self.file = file
        self._start = time.perf_counter()
        self._shown_epochs = 0
        self._validated_epoch = -1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock."""
        self._start = time.perf_counter()
        self._shown_epochs = 0
        self._validated_epoch = -1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Note the epoch validated: an epoch without validation shows no val metrics (the
        last ones logged would be an earlier epoch's)."""
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the epoch before this one: its epoch-end metrics are all logged by now."""
        self._print_done(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the last epoch, marked when it stopped before its last batch."""
        self._print_done(trainer, last=True)

    def _print_done(self, trainer: L.Trainer, last: bool = False) -> None:
        done = trainer.fit_loop.epoch_progress.current.completed
        if done <= self._shown_epochs or not trainer.is_global_zero:
            return
        self._shown_epochs = done
        total = f"/{trainer.max_epochs}" if (trainer.max_epochs or -1) >= 0 else ""
        parts = [f"epoch {done}{total}"]
        cut = _cut_short(trainer) if last else None
        if cut:
            parts[0] += f" (cut short: {cut[0]} of {cut[1]} batches)"
        for key in self.SHOWN:
            value = trainer.callback_metrics.get(key)
            if key.startswith("val_") and self._validated_epoch != done - 1:
                value = None
            if value is not None:
                value = float(value)
                parts.append(f"{key} {value:.2%}" if key.endswith("acc") else f"{key} {value:.4f}")
        parts.append(f"{time.perf_counter() - self._start:.1f} s")
        print("  ".join(parts), file=self.file or sys.stderr, flush=True)


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler (which records nothing) without its generator frames.

    The Trainer enters ``profiler.profile(name)`` about 18 times per training step. The
    base class builds a ``@contextmanager`` generator each time (~1 µs here); a
    ``nullcontext`` does the same nothing in ~0.4 µs.
    """

    def profile(self, action_name: str) -> contextlib.nullcontext[str]:  # type: ignore[override]
        """A context that yields ``action_name`` and records nothing."""
        return contextlib.nullcontext(action_name)


#: Trainer options Lightning divides by without checking: 0 was a ZeroDivisionError mid-fit.
_POSITIVE_TRAINER_OPTIONS = ("accumulate_grad_batches", "check_val_every_n_epoch",
                             "val_check_interval")  # fmt: skip


def _check_positive_options(options: dict[str, Any]) -> None:
    for name in _POSITIVE_TRAINER_OPTIONS:
        value = options.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            raise UsageError(f"--trainer.{name} must be above 0, got {value}")


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
    limits = ("max_steps", "max_time")
    if max_epochs == -1 and not any(options.get(k) not in (None, -1) for k in limits):
        # Lightning's -1 means "no epoch limit": without another limit the run never ends.
        raise UsageError(
            "--max_epochs -1 trains without end; give --trainer.max_steps or "
            "--trainer.max_time with it, or a number of epochs"
        )
    _check_positive_options(options)
    if options.get("logger") is True:  # "the default logger": toolkit's CSV log in the run
        del options["logger"]
    settings = {**defaults, **options}
    callbacks = settings.get("callbacks") or []
    callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
    own_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    if own_bar and "enable_progress_bar" not in options:
        settings["enable_progress_bar"] = True  # the bar the user passed, even off a terminal
    if any(isinstance(c, Checkpoint) for c in callbacks) and "enable_checkpointing" not in options:
        settings["enable_checkpointing"] = True  # the user's ModelCheckpoint, in the run folder
    if settings["enable_progress_bar"] and not own_bar:
        # Lightning's default bar redraws and recomputes its metrics every step.
        settings["callbacks"] = [*callbacks, ThrottledProgressBar()]
    elif not settings["enable_progress_bar"] and "enable_progress_bar" not in options:
        # off a terminal, and no bar of the user's: a line per epoch instead
        settings["callbacks"] = [*callbacks, EpochLines()]
    _refuse_spawned_fit(None, settings.get("strategy"))  # by name, before Lightning's lines
    L.seed_everything(seed, verbose=False)
    try:
        trainer = L.Trainer(**settings)
    except ImportError as exc:  # e.g. accelerator="tpu" without torch_xla
        raise MissingDependencyError(f"bad Trainer option: {first_line(exc)}") from None
    except (TypeError, ValueError, MisconfigurationException) as exc:
        raise UsageError(f"bad Trainer option: {first_line(exc)}") from None
    _refuse_spawned_fit(trainer, settings.get("strategy"))
    return trainer


def _refuse_spawned_fit(trainer: L.Trainer | None, option: Any) -> None:
    """Refuse strategies that fit in spawned or forked processes (``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook``): the step count, epochs and accuracy passes of the run
    folder are read from the launching process's Trainer, which such a fit leaves as it
    was (run.json said 0 steps and scored half the test split twice).

    With no ``trainer``, a registered strategy name is judged by its start method; with
    one, its launcher (a strategy object from a config file).
    """
    from lightning.pytorch.strategies import StrategyRegistry
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    if trainer is None:
        # the registry's entry (its own .get() would build the strategy)
        named = isinstance(option, str) and option in StrategyRegistry
        registered = StrategyRegistry[option] if named else None
        spawned = (registered or {}).get("init_params", {}).get("start_method") not in (
            None,
            "popen",
        )
    else:
        launcher = getattr(trainer.strategy, "launcher", None)
        spawned = isinstance(launcher, _MultiProcessingLauncher)
    if spawned:
        name = option if isinstance(option, str) else type(trainer.strategy).__name__
        raise UsageError(
            f"--trainer.strategy {name} fits in spawned processes, which toolkit train "
            "cannot read its results from; use --trainer.strategy ddp (one process per "
            "device, each running this command)"
        )


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
    """Train, val and test accuracy with ``trainer.test``, as the tutorial measures them.

    Every sample counts: ``limit_test_batches`` (also set by ``fast_dev_run``) is lifted for
    these passes, on every process, and restored after.
    """
    data.setup("test")
    loaders = (data.train_eval_dataloader(), data.val_dataloader(), data.test_dataloader())
    if trainer.is_global_zero:  # minutes for a big network, with no bar off a terminal
        samples = sum(len(loader.dataset) for loader in loaders)
        print(
            f"scoring train, val and test of {data.dataset} from {data.source_folder()} "
            f"({samples:,} samples)",
            file=sys.stderr,
            flush=True,
        )
    if trainer.world_size > 1:
        loaders = tuple(_each_sample_once(loader, trainer) for loader in loaders)
    limit = trainer.limit_test_batches
    trainer.limit_test_batches = 1.0
    try:
        with _known_warnings_quiet():
            return tuple(
                float(trainer.test(model, dataloaders=loader, verbose=False)[0]["accuracy"])
                for loader in loaders
            )  # type: ignore[return-value]
    finally:
        trainer.limit_test_batches = limit


@contextlib.contextmanager
def _known_warnings_quiet(grouped: bool = False) -> Iterator[None]:
    """Hide warnings that tell a toolkit user nothing they can act on.

    LightningModel's no-op CPU ``transfer_batch_to_device`` is meant to be used; and
    Lightning's ``_pytree`` helper trips torch's ``LeafSpec`` FutureWarning (Lightning 2.6
    with torch 2.14), once in ``fit`` and once in ``test``. With groups of batches
    (``grouped``), Lightning's "number of training batches is smaller than the logging
    interval" counts groups, while the step losses are logged per batch. Other warnings
    still show.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You have overridden `transfer_batch_to_device`")
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated"
        )
        if grouped:
            warnings.filterwarnings(
                "ignore", message=r"The number of training batches \(\d+\) is smaller than"
            )
        yield


def _each_sample_once(loader: Any, trainer: L.Trainer) -> Any:
    """``loader`` split over the processes so that each sample is scored exactly once.

    Lightning's own ``DistributedSampler`` pads uneven splits with repeated samples, which
    the synced accuracy would count twice; Lightning's ``UnrepeatedDistributedSampler``
    gives some processes one sample fewer instead (safe here: testing syncs no buffers).
    """
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DataLoader

    sampler = UnrepeatedDistributedSampler(
        loader.dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
    )


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
    seed: int = DEFAULT_SEED,
    output_dir: str = "runs",
    run_name: str | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
    trainer: dict[str, Any] | None = None,
    eval_batch_size: int = 1000,
    flush_denormal: bool = True,
    batches_per_step: int | None = None,
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
        max_epochs: Training epochs (-1: no epoch limit, with --trainer.max_steps or
            --trainer.max_time).
        batch_size: Batch size.
        learning_rate: Adam learning rate; default per model: mlp 0.003, cnn 0.001,
            others 0.001 (``DEFAULT_LEARNING_RATES``).
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
        batches_per_step: Batches handed to each Lightning training step; the model still
            takes one Adam step per batch of ``batch_size``, on the same batches in the
            same order, so the weights (and the logs) are the same to the bit. Default:
            ``AUTO_BATCHES_PER_STEP`` (32), or 1 with DDP, ``max_time``, callbacks with
            hooks that differ with groups, or a Trainer option that counts or acts on
            batches (see :func:`choose_batches_per_step`). Above 1, Lightning's
            per-step work (hooks, progress, loop bookkeeping: ~270 µs per step on the
            2-core machine) is paid once per group, through manual optimization. Lightning
            then calls ``on_train_batch_*`` hooks once per group; toolkit's progress bar,
            ``log_every_n_steps``, the ``step`` of ``metrics.csv``, ``global_step`` and
            ``max_steps`` count batches. One device only; given explicitly above 1, it
            refuses Trainer options that count or act on batches
            (``limit_train_batches``, ``val_check_interval``, ``overfit_batches``,
            ``fast_dev_run``, gradient clipping and accumulation, a ``ModelCheckpoint``
            with ``every_n_train_steps``, ``StochasticWeightAveraging``,
            ``GradientAccumulationScheduler``).

    What training changes in the process (torch's deterministic mode, set by the Trainer's
    ``deterministic=True``; the random generators ``seed_everything`` seeds; the
    environment variables both set) is put back as it was when ``train`` returns or raises.

    Returns:
        A :class:`TrainResult`, also written as ``run.json``.
    """
    with _process_state_restored(), _denormals_flushed(flush_denormal):
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
            batches_per_step,
        )


#: Environment variables that ``seed_everything`` and ``Trainer(deterministic=True)`` set.
_TRAINING_ENV = ("CUBLAS_WORKSPACE_CONFIG", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@contextlib.contextmanager
def _process_state_restored() -> Iterator[None]:
    """Put back, after the block, the process state that a Lightning fit changes for good.

    ``Trainer(deterministic=True)`` turns on torch's deterministic algorithms (which also
    fill every new tensor with NaN: ``torch.empty`` of 4M floats became ~600x slower in the
    caller's later code) and sets ``CUBLAS_WORKSPACE_CONFIG``; ``seed_everything`` reseeds
    the random generators and sets ``PL_GLOBAL_SEED``/``PL_SEED_WORKERS``.
    """
    import random

    import numpy as np
    from torch.utils import deterministic as torch_deterministic

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch_deterministic.fill_uninitialized_memory
    env = {name: os.environ.get(name) for name in _TRAINING_ENV}
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch_deterministic.fill_uninitialized_memory = fill
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


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
    batches_per_step: int | None = None,
) -> TrainResult:
    # Everything that can be checked is checked before any output is created.
    _check_run_name(run_name)
    model_kwargs = dict(model_kwargs or {})
    try:  # recorded in run.json and the .safetensors metadata, written after training
        json.dumps(model_kwargs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"model_kwargs must be JSON values (numbers, text, lists, mappings): {exc}"
        ) from None
    net = build_model(model, **model_kwargs)  # fail fast on a bad name or kwargs
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATES.get(model, 0.001)
    _check_numbers(num_workers, learning_rate, seed)
    chosen = batches_per_step is None  # then 1 with DDP, decided once the Trainer exists
    if batches_per_step is None:
        batches_per_step = choose_batches_per_step(trainer)
    data = MNISTDataModule(
        data_dir,
        dataset,
        batch_size,
        seed,
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
        batches_per_step=batches_per_step,
    )
    _check_groups_allowed_options(trainer, batches_per_step)
    data.prepare_data()  # find the data before any output is created
    _check_batch_size(batch_size, _train_split_size(data))
    _check_fits_data(net, model, _sample_shape(data), dataset)
    del net
    staged = os.environ.get(_STAGING_ENV)
    with contextlib.ExitStack() as outputs:
        if staged:  # a DDP child process: the launching process chose the folders
            staging, run_dir = (Path(p) for p in json.loads(staged))
        else:
            # A folder made here is removed again if the run fails before publishing.
            out = outputs.enter_context(writable_dir(output_dir))
            clean_stale_partials(out)  # leftovers of killed runs; a rerun needs no cleanup
            run_dir = _resolve_run_dir(out, run_name, f"{model}-{dataset}", overwrite)
            staging = leftover_name(out / run_dir.name)
            shutil.rmtree(staging, ignore_errors=True)
            try:
                staging.mkdir()
            except OSError as exc:
                raise output_error(staging, exc) from None
            # JSON, not os.pathsep: a ':' is fine in a folder name.
            os.environ[_STAGING_ENV] = json.dumps([str(staging), str(run_dir)])
        try:
            with _stops_as_errors("no run folder was written"):
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
                    auto_named=run_name is None,
                    chosen_batches_per_step=chosen,
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
    auto_named: bool,
    chosen_batches_per_step: bool = False,
) -> TrainResult:
    pl_trainer = _trainer(staging, max_epochs, seed, trainer_options)
    if chosen_batches_per_step and pl_trainer.world_size > 1:
        data.batches_per_step = 1  # DDP takes one backward pass per forward
    # With DDP each process trains on its share of the split.
    samples = _train_split_size(data)
    if pl_trainer.world_size > 1:
        share = math.ceil(samples / pl_trainer.world_size)
        _check_batch_size(batch_size, share, f"each of {pl_trainer.world_size} processes' share")
    lightning_model = LightningModel(
        network=model, network_kwargs=model_kwargs, learning_rate=learning_rate
    )
    if data.batches_per_step > 1:
        _check_groups_allowed(pl_trainer, data.batches_per_step)
        lightning_model.automatic_optimization = False  # one Adam step per batch of a group
    start = time.perf_counter()
    with _known_warnings_quiet(grouped=data.batches_per_step > 1):
        pl_trainer.fit(lightning_model, datamodule=data)
    fit_seconds = time.perf_counter() - start
    if pl_trainer.received_sigterm:  # SIGTERM in the last step: fit ended without raising
        raise TerminatedError("terminated (SIGTERM); no run folder was written")
    if pl_trainer.interrupted:
        raise KeyboardInterrupt
    epochs_run = _whole_epochs(pl_trainer)  # before the test passes replace the loaders
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
        epochs_run=epochs_run,
        fit_seconds=round(fit_seconds, 3),
        train_acc=train_acc,
        val_acc=val_acc,
        test_acc=test_acc,
        files={},  # filled in below with the files that were written
        versions=_versions(),
        data_dir=str(Path(data.data_dir).resolve()) if data.data_dir else None,
        steps_run=int(pl_trainer.global_step),
        precision=str(pl_trainer.precision),
        batches_per_step=data.batches_per_step,
        model=lightning_model.model.cpu().eval(),
    )
    if not pl_trainer.is_global_zero:
        return result
    _save_weights(lightning_model.model, staging, model, model_kwargs)
    _epoch_table(staging / METRICS_CSV, staging / EPOCHS_CSV)
    # No metrics.csv without a CSV logger (a logger of the user's, logger=False) or when no
    # step was logged (fast_dev_run, limit_train_batches=0, max_epochs=0).
    result.files = {key: name for key, name in _FILES.items() if (staging / name).is_file()}
    while True:
        write_json(staging / RUN_INFO, result.to_json())
        try:
            # An automatic name was free when chosen; it never replaces a folder.
            publish_dir(staging, run_dir, overwrite and not auto_named)
            return result
        except OutputExistsError:
            if not auto_named:
                raise
        except OSError as exc:  # it was published between the check and the rename
            if not auto_named or exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        # A run started alongside took the name while this one trained: take the next one.
        taken = run_dir
        run_dir = _resolve_run_dir(run_dir.parent, None, f"{model}-{dataset}", False)
        if run_dir == taken:  # never loop on a name that cannot be published
            raise OutputExistsError(f"run folder {run_dir} already exists; pass --run_name")
        result.run_dir = str(run_dir)


def _groups_what(batches_per_step: int) -> str:
    return f"--batches_per_step {batches_per_step} (one Lightning step per group of batches)"


#: Trainer options that count batches, or step at every batch, and their neutral values:
#: with groups of batches they would count groups, or act on them, instead.
_BATCH_COUNTING_OPTIONS: dict[str, tuple[Any, ...]] = {
    "gradient_clip_val": (None, 0, 0.0),  # manual optimization does not clip
    "accumulate_grad_batches": (None, 1),
    "limit_train_batches": (None, 1.0),  # an int 1 means one batch
    "val_check_interval": (None, 1.0),
    "overfit_batches": (None, 0, 0.0),
    "fast_dev_run": (None, False, 0),
}


#: Batches per Lightning step that ``train`` uses unless told (``batches_per_step=None``)
#: and nothing in the Trainer settings counts or watches batches (see
#: :func:`choose_batches_per_step`). Measured for the mlp on the 2-core machine, 10
#: epochs: 9.7 s with 1, 6.7 s with 8, 6.2 s with 16, 5.9 s with 32.
AUTO_BATCHES_PER_STEP = 32


#: Lightning callbacks that step schedulers or accumulate gradients only under automatic
#: optimization.
_AUTOMATIC_ONLY_CALLBACKS: tuple[type, ...] = tuple(
    getattr(lightning_callbacks, name)
    for name in ("StochasticWeightAveraging", "GradientAccumulationScheduler")
    if hasattr(lightning_callbacks, name)
)


def _callbacks(options: dict[str, Any]) -> list[Any]:
    callbacks = options.get("callbacks") or []
    return list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]


def _group_conflict(options: dict[str, Any] | None) -> str | None:
    """The Trainer option that counts or acts on batches, described, if one is set."""
    options = options or {}
    for name, neutral in _BATCH_COUNTING_OPTIONS.items():
        value = options.get(name)
        if not any(type(value) is type(n) and value == n for n in neutral):
            return f"--trainer.{name} {value}, which counts or acts on batches"
    for callback in _callbacks(options):
        if isinstance(callback, _AUTOMATIC_ONLY_CALLBACKS):
            return (
                f"{type(callback).__name__}, which needs Lightning's automatic optimization "
                f"(one batch per step)"
            )
        every = getattr(callback, "_every_n_train_steps", 0)
        if isinstance(every, int) and every > 0:  # ModelCheckpoint(every_n_train_steps=N)
            return (
                f"{type(callback).__name__}(every_n_train_steps={every}): it looks at the "
                f"step count after each group only"
            )
    return None


#: Callback hooks that see no difference when Lightning's steps are groups of batches
#: (per epoch, per validation or test pass, per checkpoint, per backward and optimizer
#: step). A callback of the user's that implements any other hook (``setup``,
#: ``on_train_start``, ``on_train_batch_*``, ``on_before_zero_grad``, which manual
#: optimization does not call, ...) gets one batch per Lightning step by default.
_GROUP_SAFE_HOOKS = frozenset({
    "on_fit_end", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_sanity_check_start", "on_sanity_check_end", "on_validation_start",
    "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end", "on_test_start", "on_test_end",
    "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end", "on_before_backward",
    "on_after_backward", "on_before_optimizer_step", "on_save_checkpoint",
    "on_load_checkpoint", "state_dict", "load_state_dict", "on_exception", "teardown",
})  # fmt: skip
_CALLBACK_HOOKS = tuple(
    name
    for name in vars(Callback)
    if name.startswith("on_") or name in ("setup", "state_dict", "load_state_dict", "teardown")
)


def _group_safe(callback: Any) -> bool:
    """Whether ``callback`` behaves the same with groups of batches (see
    ``_GROUP_SAFE_HOOKS``); toolkit's own callbacks and Lightning's EarlyStopping and
    ModelSummary are known to."""
    if isinstance(callback, ThrottledProgressBar | EpochLines | EarlyStopping | ModelSummary):
        return True
    if not isinstance(callback, Callback):
        return False
    return not any(
        is_overridden(hook, callback, Callback)
        for hook in _CALLBACK_HOOKS
        if hook not in _GROUP_SAFE_HOOKS
    )


def choose_batches_per_step(options: dict[str, Any] | None) -> int:
    """``AUTO_BATCHES_PER_STEP``, or 1 when a Trainer option counts or acts on batches
    (``max_time`` included: Lightning's timer checks it after each step), or a callback
    implements a hook that differs with groups (see ``_GROUP_SAFE_HOOKS``). DDP is checked
    once the Trainer exists."""
    options = options or {}
    if _group_conflict(options) or options.get("max_time") is not None:
        return 1
    if not all(_group_safe(callback) for callback in _callbacks(options)):
        return 1
    return AUTO_BATCHES_PER_STEP


def _check_groups_allowed_options(options: dict[str, Any] | None, batches_per_step: int) -> None:
    """Refuse, before anything is written, the Trainer options that count batches (or act
    at every step) when Lightning's steps are groups of batches."""
    conflict = _group_conflict(options) if batches_per_step > 1 else None
    if conflict:
        raise UsageError(
            f"{_groups_what(batches_per_step)} cannot honour {conflict}; give "
            f"--batches_per_step 1 with it"
        )


def _check_groups_allowed(trainer: L.Trainer, batches_per_step: int) -> None:
    """Refuse what manual optimization over groups cannot do: several processes."""
    if trainer.world_size > 1:
        # DDP expects one backward pass per forward of its wrapped module.
        raise UsageError(
            f"{_groups_what(batches_per_step)} trains on one device; with "
            f"{trainer.world_size} processes give --batches_per_step 1"
        )


def _cut_short(trainer: L.Trainer) -> tuple[int, int] | None:
    """(batches run, batches in an epoch) when the last epoch stopped before its end
    (``max_steps``, a callback's ``should_stop``), else None.

    With groups of batches (``batches_per_step`` above 1) both count batches, not the
    groups Lightning counts: ``max_steps`` can stop inside a group.
    """
    batches = trainer.num_training_batches
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    if not math.isfinite(batches):
        return None
    plain = _plain_batches(trainer, batches)
    module = trainer.lightning_module
    if plain is not None and isinstance(module, LightningModel):
        batches, done = plain, module.group_batches_run[0]
    return (done, int(batches)) if done < batches else None


def _plain_batches(trainer: L.Trainer | None, groups: int | float) -> int | None:
    """The batches of ``batch_size`` in a training epoch of ``groups`` Lightning batches,
    when the training loader yields groups of batches; None when it does not."""
    if trainer is None or not math.isfinite(groups):
        return None
    sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
    if not isinstance(sampler, GroupedBatchSampler):
        return None
    if groups >= len(sampler):  # the whole epoch
        return BatchSampler.__len__(sampler)
    return int(groups) * sampler.batches_per_group


def _whole_epochs(trainer: L.Trainer) -> int:
    """Training epochs that ran every batch: Lightning counts an epoch cut short too."""
    epochs = int(trainer.current_epoch)
    if epochs > 0 and _cut_short(trainer):
        epochs -= 1
    return epochs


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
    seed: int | None = None,
    accelerator: str = "auto",
    trust_pickled_file: bool = False,
) -> dict[str, float]:
    """Evaluate a trained model with ``trainer.test`` and print the tutorial's line.

    Give either ``checkpoint`` (a ``.ckpt``, loaded with ``load_from_checkpoint``; a
    state_dict ``.pt`` or ``.safetensors`` works too, as for export, verify and bench) or
    ``weights`` (a state_dict ``.pt`` or ``.safetensors``). ``model`` names the network when
    the file does not record it (a tutorial state_dict or ``.ckpt``); ``model_kwargs``
    override the kwargs it records.
    ``batch_size`` is the evaluation batch; it changes no accuracy, and 1000 takes far fewer
    Lightning steps than the tutorial's 64. The network must take the data set's samples
    and give one score per class. Without ``dataset`` and ``data_dir``, the data set and
    data folder recorded in the run folder's ``run.json`` are used, if there is one; without
    ``seed``, the seed it records (so the train/val split is the one the run trained on).

    Args:
        checkpoint: A Lightning .ckpt (loaded with load_from_checkpoint), or any weights
            file that --weights takes.
        weights: A state_dict .pt or .safetensors file, instead of a checkpoint.
        model: Registry name of the network, for a file that does not record it.
        model_kwargs: Constructor kwargs of the network (override what the file records).
        dataset: fashion-mnist, mnist or kmnist (default: the run's, else fashion-mnist).
        data_dir: Folder with the IDX files (default: the run's, else the usual lookup).
        batch_size: Evaluation batch size; it changes no accuracy.
        seed: Seed of the train/val split (default: the run's, else 42 as in training).
        accelerator: Lightning accelerator: auto, cpu, gpu, ...
        trust_pickled_file: Allow arbitrary unpickling (only for files you trust).

    Returns:
        ``{"train_acc": ..., "val_acc": ..., "test_acc": ...}``.
    """
    if (checkpoint is None) == (weights is None):
        raise UsageError("give exactly one of --checkpoint PATH or --weights PATH")
    if checkpoint is not None and not is_lightning_checkpoint(checkpoint, trust_pickled_file):
        # A state_dict .pt or .safetensors, given the way export, verify and bench take it.
        checkpoint, weights = None, checkpoint
    if checkpoint is not None:
        # A network named here is built and passed in, the tutorial's
        # load_from_checkpoint(path, model=net): a tutorial .ckpt does not record it.
        given = (
            load_network(checkpoint, model, model_kwargs, trust_pickled_file)
            if model is not None or model_kwargs
            else None
        )
        lightning_model = load_lightning_model(
            checkpoint, model=given, trust_pickled_file=trust_pickled_file
        )
        source = Path(checkpoint)
        name = model or str(
            lightning_model.hparams.get("network") or type(lightning_model.model).__name__
        )
    else:
        net = load_network(weights, model, model_kwargs, trust_pickled_file)  # type: ignore[arg-type]
        lightning_model = LightningModel(model=net)
        source = Path(weights)  # type: ignore[arg-type]
        name = model or type(net).__name__
    info = _run_info(source)
    run_text = text_fields(info)
    recorded_dir = None
    if dataset is None and data_dir is None:  # the data the run was trained on
        data_dir = run_text.get("data_dir")
        recorded_dir = source.parent / RUN_INFO if data_dir else None
    if dataset is None:
        dataset = recorded_dataset(run_text.get("dataset"), source.parent / RUN_INFO)
    if seed is None:  # the split the run trained on: its val samples were never trained on
        recorded = info.get("seed")
        seed = recorded if _valid_seed(recorded) else DEFAULT_SEED
    _check_numbers(0, 1.0, seed)
    data = MNISTDataModule(data_dir, dataset, batch_size, seed)
    with recorded_in(recorded_dir, data_dir):
        data.prepare_data()
    # Kwargs the user gave are a wrong call; a file's own network that does not fit is the
    # file's fault.
    error = UsageError if model_kwargs else CheckpointError
    _check_fits_data(lightning_model.model, name, _sample_shape(data), dataset, error=error)
    precision = run_text.get("precision", "32-true")  # as the run scored itself
    what = f"--accelerator {accelerator!r}" + (
        "" if precision == "32-true" else f" with the run's precision {precision!r}"
    )
    # Built last: the Trainer prints its device lines, which belong to no error.
    try:
        pl_trainer = L.Trainer(
            accelerator=accelerator,
            precision=precision,
            devices=1,
            logger=False,
            enable_progress_bar=sys.stderr.isatty(),
            enable_model_summary=False,
            enable_checkpointing=False,
        )
    except ImportError as exc:  # e.g. "tpu" without torch_xla
        raise MissingDependencyError(f"bad {what}: {first_line(exc)}") from None
    except (TypeError, ValueError, RuntimeError, MisconfigurationException) as exc:
        raise UsageError(f"bad {what}: {first_line(exc)}") from None
    with _stops_as_errors("no accuracy was measured"):
        train_acc, val_acc, test_acc = _accuracies(pl_trainer, lightning_model, data)
    print(format_accuracies(train_acc, val_acc, test_acc))
    return {"train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc}


def _run_info(path: Path) -> dict[str, Any]:
    return read_json_object(path.parent / RUN_INFO)
