"""Training speed: toolkit's pipeline against the tutorial's, side by side in one run.

The baseline reimplements the tutorial as written: torchvision ``FashionMNIST`` with a
per-sample ``ToTensor`` transform, ``num_workers=0``, a LightningModel that logs its
torchmetrics accuracy object every step, and the tutorial's ``L.Trainer(max_epochs,
accelerator="auto", devices="auto", deterministic=True)`` with its default progress bar,
logger, checkpointing and model summary. The toolkit side is ``toolkit.train.train`` with
its progress bar and summary on, as on a terminal (bars are drawn into a buffer, not shown).
``--no-extras`` turns all of those off on both sides. Both train the tutorial MLP for the
same number of epochs at batch size 64 (seed 42), one after the other, each in a fresh
Python process, and the script prints their training wall times and the ratio. Each side
is timed from its first step (the tutorial building its datasets, toolkit's ``train``
called) to the end of ``Trainer.fit``; the test pass and writing the run folder come
after. ``--rounds N`` repeats the pair, alternating which side goes first, and
prints the median ratio: on a shared machine single runs vary by up to 30%.
``--batches-per-step 1 16 auto`` times toolkit once per value of ``toolkit train
--batches_per_step`` in each round (the same Adam steps on the same batches, fewer
Lightning steps); ``auto``, the default, is toolkit's own choice (32 here).

Run: ``python benchmarks/train_speed.py --epochs 10 --rounds 3 --batches-per-step 1 auto``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch.utils.data import DataLoader, random_split
from torchvision import datasets, transforms

from toolkit.data import cache_dir, locate_data
from toolkit.models import PyTorchMLP
from toolkit.train import train


class TutorialLightningModel(L.LightningModule):
    """The tutorial's final LightningModel, verbatim in behaviour."""

    def __init__(self, model: torch.nn.Module, learning_rate: float = 0.001) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.model = model
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)
        self.save_hyperparameters(ignore=["model"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _shared_step(self, batch):
        features, true_labels = batch
        logits = self(features)
        loss = F.cross_entropy(logits, true_labels)
        return loss, true_labels, torch.argmax(logits, dim=1)

    def training_step(self, batch, batch_idx):
        loss, true_labels, predicted_labels = self._shared_step(batch)
        self.log("train_loss", loss)
        self.train_acc(predicted_labels, true_labels)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, true_labels, predicted_labels = self._shared_step(batch)
        self.log("val_loss", loss, prog_bar=True)
        self.val_acc(predicted_labels, true_labels)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        _, true_labels, predicted_labels = self._shared_step(batch)
        self.test_acc(predicted_labels, true_labels)
        self.log("accuracy", self.test_acc)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


def _tutorial_trainer(epochs: int, root: str, as_written: bool) -> L.Trainer:
    """The tutorial's ``L.Trainer(max_epochs, accelerator="auto", devices="auto",
    deterministic=True)``: progress bar, logger, checkpointing and summary on. With
    ``as_written=False`` they are all off, which only makes the baseline faster."""
    extra = (
        {}
        if as_written
        else {
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        }
    )
    return L.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices="auto",
        deterministic=True,
        default_root_dir=root,
        **extra,
    )


def run_tutorial(epochs: int, output_dir: str, as_written: bool = True) -> dict:
    """Train and test as the tutorial does; return wall time and test accuracy."""
    root = str(cache_dir())
    start = time.perf_counter()
    L.seed_everything(42, verbose=False)
    full = datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    test = datasets.FashionMNIST(root, train=False, transform=transforms.ToTensor())
    train, val = random_split(full, [55_000, 5_000], generator=torch.Generator().manual_seed(42))
    model = TutorialLightningModel(PyTorchMLP(784, 10), learning_rate=0.001)
    trainer = _tutorial_trainer(epochs, output_dir, as_written)
    with contextlib.redirect_stderr(io.StringIO()):  # the bar is drawn, just not shown
        trainer.fit(
            model,
            DataLoader(train, batch_size=64, shuffle=True, drop_last=True),
            DataLoader(val, batch_size=64),
        )
    fit_s = time.perf_counter() - start
    acc = trainer.test(model, DataLoader(test, batch_size=64), verbose=False)[0]["accuracy"]
    return {"fit_s": fit_s, "test_acc": acc}


def run_toolkit(
    epochs: int, output_dir: str, as_written: bool = True, batches_per_step: int | None = None
) -> dict:
    """Train with ``toolkit.train.train`` (what ``toolkit train`` runs), CSV logger included.

    Timed as the tutorial: from the call (which finds and loads the data and checks the
    options) to the end of ``Trainer.fit``; writing the run folder and the accuracy passes
    come after it. The progress bar and summary are on, as on a terminal, unless
    ``as_written`` is False. ``batches_per_step`` is ``toolkit train --batches_per_step``
    (None: its default).
    """
    fit_end = _FitEnd()
    shown = {
        "enable_progress_bar": as_written,
        "enable_model_summary": as_written,
        "callbacks": [fit_end],
    }
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        result = train(
            model="mlp",
            max_epochs=epochs,
            learning_rate=0.001,
            output_dir=output_dir,
            trainer=shown,
            batches_per_step=batches_per_step,
        )
    return {
        "fit_s": fit_end.at - start,
        "test_acc": result.test_acc,
        "steps": result.steps_run,
        "batches_per_step": result.batches_per_step,
    }


class _FitEnd(L.Callback):
    """Notes when ``Trainer.fit`` ends (``on_fit_end``, its last hook)."""

    at = float("nan")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Note the time."""
        self.at = time.perf_counter()


def _run_side(side: str, epochs: int, as_written: bool, batches_per_step: str = "auto") -> dict:
    """One pipeline in a fresh interpreter, so neither side inherits the other's warm
    caches, thread pools or floating-point mode."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "side.json")
        command = [sys.executable, __file__, "--side", side, "--epochs", str(epochs)]
        command += ["--json", out] + ([] if as_written else ["--no-extras"])
        command += ["--batches-per-step", batches_per_step]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the {side} pipeline failed:\n{done.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def _batches_per_step(value: str) -> str:
    if value != "auto" and not (value.isdigit() and int(value) > 0):
        raise argparse.ArgumentTypeError(f"a positive number or auto, got {value!r}")
    return value


def _k_label(side: str, figures: dict) -> str:
    k = side.partition(":")[2]
    used = figures.get("batches_per_step")
    return f" (default: {used})" if k == "auto" else f" --batches_per_step {k}"


def main() -> None:
    """Run both pipelines ``--rounds`` times and print their times and the speed-ups."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="repeat both sides, alternating")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--no-extras",
        action="store_true",
        help="turn off progress bars, loggers, checkpointing and summaries on both sides",
    )
    parser.add_argument(
        "--batches-per-step",
        type=_batches_per_step,
        nargs="+",
        default=["auto"],
        metavar="K",
        help="time toolkit with each of these --batches_per_step values: a number, or auto "
        "for toolkit's default (the default)",
    )
    parser.add_argument("--side", choices=["toolkit", "tutorial"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    as_written = not args.no_extras
    if args.side:  # a child process: one pipeline, figures to --json
        with tempfile.TemporaryDirectory() as output_dir:
            if args.side == "toolkit":
                k = args.batches_per_step[0]
                figures = run_toolkit(
                    args.epochs, output_dir, as_written, None if k == "auto" else int(k)
                )
            else:
                figures = run_tutorial(args.epochs, output_dir, as_written)
        with open(args.json, "w") as f:
            json.dump(figures, f)
        return
    locate_data("fashion-mnist")  # unpack once, outside both timings
    print(
        f"{args.epochs} epochs, mlp, batch 64, Fashion-MNIST, {torch.get_num_threads()} threads, "
        f"progress bars/loggers/checkpoints {'on' if as_written else 'off'}, "
        "each pipeline in a fresh process",
        flush=True,
    )
    sides = ["tutorial"] + [f"toolkit:{k}" for k in args.batches_per_step]
    rounds = []
    for i in range(args.rounds):
        order = sides if i % 2 == 0 else sides[::-1]  # alternate who goes first
        figures = {}
        for side in order:
            name, _, k = side.partition(":")
            figures[side] = _run_side(name, args.epochs, as_written, k or "auto")
        tutorial = figures["tutorial"]
        figures["speedup"] = {s: tutorial["fit_s"] / figures[s]["fit_s"] for s in sides[1:]}
        rounds.append(figures)
        toolkit = "; ".join(
            f"toolkit{_k_label(s, figures[s])} {figures[s]['fit_s']:5.1f} s (test acc "
            f"{figures[s]['test_acc']:.4f}, {figures[s]['steps']} Adam steps): "
            f"{figures['speedup'][s]:.1f}x"
            for s in sides[1:]
        )
        print(
            f"  round {i + 1}: tutorial {tutorial['fit_s']:6.1f} s (test acc "
            f"{tutorial['test_acc']:.4f}); {toolkit}",
            flush=True,
        )
    for side in sides[1:]:
        speedups = [r["speedup"][side] for r in rounds]
        print(
            f"  toolkit{_k_label(side, rounds[0][side])} speed-up median "
            f"{statistics.median(speedups):.1f}x "
            f"(min {min(speedups):.1f}x, max {max(speedups):.1f}x over {len(rounds)} rounds)"
        )
    if args.json:
        result = {"epochs": args.epochs, "trainer_extras": as_written, "rounds": rounds}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
