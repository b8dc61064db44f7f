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


class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` without the per-step graph-capture probe when no parameter is on
    an accelerator.

    Before every step, torch's Adam asks whether a CUDA/XPU graph is being captured. Until
    CUDA is initialised that question re-probes NVML (a ``dlopen``) each time: on a CPU-only
    machine with a CUDA build of torch it costs ~0.25 ms per step, a quarter of the MLP's
    whole training step. Parameters on the CPU cannot be in a graph capture, so the probe is
    skipped for them; for any other device torch's check runs unchanged.
    """

    def _accelerator_graph_capture_health_check(self) -> None:
        if _on_accelerator(self):
            super()._accelerator_graph_capture_health_check()

    def _cuda_graph_capture_health_check(self) -> None:  # its older name
        if _on_accelerator(self):
            super()._cuda_graph_capture_health_check()


def _on_accelerator(optimizer: torch.optim.Optimizer) -> bool:
    return any(p.device.type != "cpu" for g in optimizer.param_groups for p in g["params"])


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
        self._train_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
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

    # Lightning sets `_current_fx_name` on the module around every hook call, about 25 times
    # per training step, and nn.Module.__setattr__ spends microseconds on each checking for
    # Parameters, Modules and buffers. The attribute is a plain string: it skips the checks.
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # The training step keeps its predictions, labels and loss and hands them to the
    # torchmetrics objects once per epoch: a metric update costs tens of µs and a `self.log`
    # of a metric ~1 ms on a CPU, as much as the MLP's whole step. Accuracy is a count of
    # hits and the loss a mean, so one update per epoch gives the same values.
    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        """Cross-entropy loss; logs ``train_loss`` every ``log_every_n_steps`` and per epoch."""
        loss, true_labels, predicted_labels = self._shared_step(batch)
        detached = loss.detach()
        self._train_outputs.append((detached, predicted_labels, true_labels))
        trainer = self._trainer
        if trainer is None or (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            self.log("train_loss_step", detached, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_start(self) -> None:
        """Starts a new list of step outputs."""
        self._train_outputs = []

    def on_train_epoch_end(self) -> None:
        """Logs the epoch's mean ``train_loss`` and ``train_acc``."""
        if self._train_outputs:
            losses, predicted, true = zip(*self._train_outputs, strict=True)
            self.train_loss.update(torch.stack(losses))
            self.train_acc.update(torch.cat(predicted), torch.cat(true))
            self._train_outputs = []
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
        return Adam(self.parameters(), lr=self.learning_rate, fused=fused or None)
