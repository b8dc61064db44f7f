"""LightningModel internals that exist for speed must not change what is computed."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from toolkit.data import MNISTDataModule
from toolkit.models import PyTorchMLP
from toolkit.module import Adam, LightningModel


def _steps(optimizer_class: type[torch.optim.Optimizer], **kwargs: object) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = PyTorchMLP(784, 10)
    optimizer = optimizer_class(net.parameters(), lr=1e-3, **kwargs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.rand(8, 1, 28, 28, generator=generator)
        y = torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("fused", [True, None])
def test_adam_updates_exactly_as_torch_adam(fused: bool | None) -> None:
    ours, theirs = _steps(Adam, fused=fused), _steps(torch.optim.Adam, fused=fused)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_adam_skips_the_capture_probe_only_for_cpu_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def probe(*args: object, **kwargs: object) -> None:
        calls.append(args)
        return None

    monkeypatch.setattr(torch.accelerator, "current_accelerator", probe)
    cpu = Adam([torch.nn.Parameter(torch.zeros(3))], lr=1e-3)
    cpu._accelerator_graph_capture_health_check()
    assert calls == []
    meta = Adam([torch.nn.Parameter(torch.zeros(3, device="meta"))], lr=1e-3)
    meta._accelerator_graph_capture_health_check()  # not a CPU parameter: torch's check runs
    assert len(calls) == 1


class PerStepMetrics(LightningModel):
    """The tutorial's way: every training step updates the metric objects."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss, true_labels, predicted_labels = self._shared_step(batch)
        self.train_loss.update(loss.detach())
        self.train_acc.update(predicted_labels, true_labels)
        return loss


def _fit(cls: type[LightningModel], idx_dir: Path) -> dict[str, float]:
    L.seed_everything(7, verbose=False)
    model = cls(network="mlp", learning_rate=0.0005)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=MNISTDataModule(str(idx_dir), batch_size=32))
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_")}


def test_epoch_metrics_equal_per_step_updates(idx_dir: Path) -> None:
    once_per_epoch, per_step = _fit(LightningModel, idx_dir), _fit(PerStepMetrics, idx_dir)
    assert once_per_epoch["train_acc"] == per_step["train_acc"]
    assert once_per_epoch["train_loss"] == pytest.approx(per_step["train_loss"], rel=1e-6)
    assert 0.0 < once_per_epoch["train_acc"] < 1.0, once_per_epoch  # not a trivial match


def test_current_fx_name_bypass_keeps_module_attributes_working() -> None:
    model = LightningModel(network="mlp")
    model._current_fx_name = "training_step"
    assert model._current_fx_name == "training_step"
    assert "_current_fx_name" not in model._modules and "_current_fx_name" not in model._buffers
    model.extra = torch.nn.Linear(2, 2)  # other attributes still go through nn.Module
    assert "extra" in model._modules
