"""The tutorial's ``LightningModel``, able to rebuild its own network from a checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from toolkit.errors import UsageError
from toolkit.models import build_model, input_shape_of


class LightningModel(L.LightningModule):
    """Wraps any classifier ``nn.Module``: cross-entropy, Adam, torchmetrics accuracy.

    As in the tutorial, ``save_hyperparameters(ignore=["model"])`` keeps the weights out of
    the hparams. The registry name and constructor kwargs of the network are saved instead
    (``network``, ``network_kwargs``), so ``LightningModel.load_from_checkpoint(path)``
    rebuilds the network without arguments; ``load_from_checkpoint(path, model=net)`` works
    as in the tutorial.

    Args:
        model: The network. If None, it is built from ``network`` and ``network_kwargs``.
        learning_rate: Adam learning rate.
        network: Registry name of the network (see ``toolkit.models.MODELS``).
        network_kwargs: Constructor kwargs of the network.
        num_classes: Number of classes for the accuracy metrics.
        input_shape: Shape of one sample; defaults to the network's ``input_shape``.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        learning_rate: float = 0.001,
        network: str | None = None,
        network_kwargs: dict[str, Any] | None = None,
        num_classes: int = 10,
        input_shape: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            if network is None:
                raise UsageError(
                    "LightningModel needs a model: pass model=... or network='mlp' "
                    "(this checkpoint holds no network name, so pass model=... to "
                    "load_from_checkpoint)"
                )
            model = build_model(network, **(network_kwargs or {}))
        self.learning_rate = learning_rate
        self.model = model
        if input_shape is None and hasattr(model, "input_shape"):
            input_shape = input_shape_of(model)
        if input_shape is not None:
            input_shape = [int(s) for s in input_shape]
            # Batch 2, not 1: exporters can specialise a batch of 1 to a constant.
            self.example_input_array = torch.rand(
                2, *input_shape, generator=torch.Generator().manual_seed(0)
            )
        # Predictions come from argmax and labels are range-checked when the data is
        # decoded, so per-step argument validation (two torch.unique calls) is skipped.
        accuracy = {"task": "multiclass", "num_classes": num_classes, "validate_args": False}
        self.train_acc = torchmetrics.Accuracy(**accuracy)
        self.val_acc = torchmetrics.Accuracy(**accuracy)
        self.test_acc = torchmetrics.Accuracy(**accuracy)
        self.train_loss = torchmetrics.MeanMetric()
        network_kwargs = dict(network_kwargs or {})
        # Lightning reads the (updated) local variables of __init__.
        self.save_hyperparameters(ignore=["model"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped network."""
        return self.model(x)

    def _shared_step(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, true_labels = batch
        logits = self(features)
        loss = F.cross_entropy(logits, true_labels)
        predicted_labels = torch.argmax(logits, dim=1)
        return loss, true_labels, predicted_labels

    # Metrics are updated every step but handed to `self.log` only when a logger would
    # write them: each `self.log` call costs ~1 ms on a CPU, as much as the MLP's step.
    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        """Cross-entropy loss; logs ``train_loss`` every ``log_every_n_steps`` and per epoch."""
        loss, true_labels, predicted_labels = self._shared_step(batch)
        self.train_loss.update(loss.detach())
        self.train_acc.update(predicted_labels, true_labels)
        trainer = self._trainer
        if trainer is None or (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            self.log("train_loss_step", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self) -> None:
        """Logs the epoch's mean ``train_loss`` and ``train_acc``."""
        self.log("train_loss", self.train_loss)
        self.log("train_acc", self.train_acc, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Logs ``val_loss``; accumulates ``val_acc``."""
        loss, true_labels, predicted_labels = self._shared_step(batch)
        self.log("val_loss", loss, prog_bar=True)
        self.val_acc.update(predicted_labels, true_labels)

    def on_validation_epoch_end(self) -> None:
        """Logs the epoch's ``val_acc``."""
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulates test accuracy."""
        _, true_labels, predicted_labels = self._shared_step(batch)
        self.test_acc.update(predicted_labels, true_labels)

    def on_test_epoch_end(self) -> None:
        """Logs ``accuracy`` (the tutorial's key)."""
        self.log("accuracy", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Predicted labels."""
        features = batch[0] if isinstance(batch, list | tuple) else batch
        return torch.argmax(self(features), dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with the configured learning rate (fused kernels on CPU and CUDA)."""
        # The fused step is ~3x faster than the per-tensor loop for small networks.
        fused = all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in self.parameters()
        )
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate, fused=fused or None)
