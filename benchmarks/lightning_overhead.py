"""Lightning's per-step cost on this machine, apart from any model's compute.

A ``Linear(2, 1)`` model is trained on one fixed 1-sample batch, so each step's own work
(forward, backward, Adam) is as small as PyTorch allows. The script times it in a bare
PyTorch loop and through ``Trainer.fit`` (automatic optimization, and manual optimization
with ``self.optimizers()``/``manual_backward``), and prints microseconds per step. The
difference is what Lightning adds to every step of every model, including the mlp's.

It also times one epoch of the mlp in a bare loop over the real Fashion-MNIST batches
(toolkit's Adam, denormals flushed, as ``toolkit train`` runs), and prints the floor that
follows for 10 epochs through the Trainer: (bare mlp step + Lightning's added cost) x 8590
steps. No Trainer-based pipeline that makes each batch of 64 a Lightning step can be faster
than that on this machine; ``toolkit train``'s default of 32 batches per Lightning step
(``--batches_per_step``) pays Lightning's per-step cost once per group.

Run: ``python benchmarks/lightning_overhead.py --rounds 3``
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F

from toolkit.bench import BUSY_CORES, OtherCpuUse
from toolkit.data import MNISTDataModule
from toolkit.models import PyTorchMLP
from toolkit.module import Adam

STEPS = 859  # one mlp epoch: 55,000 samples in batches of 64
BATCH = (torch.zeros(1, 2), torch.zeros(1, 1))


class Batches:
    """The same batch ``STEPS`` times, with a length so Lightning counts the epoch."""

    def __iter__(self):
        return iter([BATCH] * STEPS)

    def __len__(self) -> int:
        return STEPS


class Automatic(L.LightningModule):
    """Automatic optimization, as the tutorial's LightningModel uses."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return F.mse_loss(self.layer(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return Adam(self.parameters(), lr=1e-3, fused=True)


class Manual(Automatic):
    """Manual optimization through Lightning's optimizer wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        optimizer = self.optimizers()
        loss = F.mse_loss(self.layer(batch[0]), batch[1])
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


def lightning_us(module_class: type[Automatic]) -> float:
    """Microseconds per step of ``Trainer.fit`` over two epochs."""
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module_class(), Batches())
    return (time.perf_counter() - start) / (2 * STEPS) * 1e6


def bare_us() -> float:
    """Microseconds per step of the same work in a plain loop."""
    module = Automatic()
    optimizer = module.configure_optimizers()
    start = time.perf_counter()
    for features, target in Batches():
        loss = F.mse_loss(module.layer(features), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / STEPS * 1e6


def bare_mlp_us(data: MNISTDataModule) -> float:
    """Microseconds per step of one mlp epoch in a plain loop over the real batches."""
    torch.manual_seed(42)
    net = PyTorchMLP(784, 10)
    optimizer = Adam(net.parameters(), lr=0.003, fused=True)
    loader = data.train_dataloader()
    start = time.perf_counter()
    for features, labels in loader:
        loss = F.cross_entropy(net(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / len(loader) * 1e6


def main() -> None:
    """Print µs per step for each way, ``--rounds`` times, alternating."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # before any thread pool starts, as `toolkit train`
    data = MNISTDataModule()
    data.prepare_data()
    data.setup("fit")
    floors = []
    for _ in range(args.rounds):
        load = OtherCpuUse()
        with load.measuring():
            bare, auto, manual = bare_us(), lightning_us(Automatic), lightning_us(Manual)
            mlp = bare_mlp_us(data)
        floor = (mlp + auto - bare) * 10 * STEPS / 1e6
        floors.append(floor)
        other = load.cores()
        busy = (
            f"  (other processes used {other:.2g} cores)" if other and other >= BUSY_CORES else ""
        )
        print(
            f"us per step: bare {bare:7.1f}  lightning automatic {auto:7.1f} "
            f"(+{auto - bare:.0f})  lightning manual {manual:7.1f} (+{manual - bare:.0f})  "
            f"bare mlp {mlp:7.1f}  -> floor for 10 mlp epochs through the Trainer "
            f"{floor:.1f} s{busy}",
            flush=True,
        )
    print(
        f"floor median {statistics.median(floors):.1f} s (min {min(floors):.1f}, max "
        f"{max(floors):.1f} over {len(floors)} rounds)"
    )


if __name__ == "__main__":
    main()
