"""LightningModel internals that exist for speed must not change what is computed."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from toolkit.data import MNISTDataModule
from toolkit.models import PyTorchMLP
from toolkit.module import Adam, LightningModel


def _steps(
    optimizer_class: type[torch.optim.Optimizer], steps: int = 5, **kwargs: object
) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = PyTorchMLP(784, 10)
    frozen = net.all_layers[3].bias  # gets no gradient from step 3 on
    late = net.all_layers[1].bias  # gets its first gradient at step 2, after the others
    optimizer = optimizer_class(net.parameters(), **{"lr": 1e-3, **kwargs})
    generator = torch.Generator().manual_seed(1)
    for i in range(steps):
        x = torch.rand(8, 1, 28, 28, generator=generator)
        y = torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        frozen.requires_grad_(i < 3)
        late.requires_grad_(i >= 2)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in net.parameters()] + [
        t.clone() for state in optimizer.state.values() for t in state.values()
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fused": True},
        {"fused": None},
        {"fused": True, "amsgrad": True},
        {"fused": True, "weight_decay": 0.1, "maximize": True},
        {"fused": True, "decoupled_weight_decay": True, "weight_decay": 0.1},
        {"fused": True, "lr": torch.tensor(1e-3)},
    ],
    ids=["fused", "default", "amsgrad", "decay-maximize", "adamw", "tensor-lr"],
)
def test_adam_updates_exactly_as_torch_adam(kwargs: dict[str, object]) -> None:
    ours, theirs = _steps(Adam, 8, **kwargs), _steps(torch.optim.Adam, 8, **kwargs)
    assert len(ours) == len(theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_adam_fast_path_is_taken_and_runs_step_hooks_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # torch wraps its own step too
    torch_calls = []
    group = torch.optim.Optimizer._group_tensors_by_device_and_dtype

    def counting_group(*args: object, **kwargs: object) -> object:
        torch_calls.append(1)  # only torch's own step groups tensors
        return group(*args, **kwargs)

    monkeypatch.setattr(
        torch.optim.Optimizer, "_group_tensors_by_device_and_dtype", staticmethod(counting_group)
    )
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = Adam([param], lr=0.1, fused=True)
    hook_calls = []
    optimizer.register_step_pre_hook(lambda *args: hook_calls.append("pre"))
    optimizer.register_step_post_hook(lambda *args: hook_calls.append("post"))
    for _ in range(3):
        optimizer.zero_grad()
        param.sum().backward()
        optimizer.step()
    assert hook_calls == ["pre", "post"] * 3
    assert len(torch_calls) == 1  # torch's first step creates the state, then the fast path
    assert float(optimizer.state[param]["step"]) == 3.0
    loss = optimizer.step(lambda: torch.tensor(5.0))  # a closure's loss is returned
    assert float(loss) == 5.0


def test_adam_applies_torchs_step_wrapper_only_when_it_has_work() -> None:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    param = torch.nn.Parameter(torch.ones(4))
    optimizer = Adam([param], lr=0.1, fused=True)
    assert not hasattr(Adam.step, "__wrapped__")  # torch did not wrap this class's step
    calls = []
    handle = register_optimizer_step_pre_hook(lambda *args: calls.append("global"))
    try:
        for _ in range(2):
            param.sum().backward()
            optimizer.step()
    finally:
        handle.remove()
    assert calls == ["global", "global"]  # torch's global hooks still run
    param.sum().backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        optimizer.step()
    assert "Optimizer.step#Adam.step" in {event.name for event in prof.events()}
    assert float(optimizer.state[param]["step"]) == 3.0


def test_adam_step_counters_share_one_tensor_and_survive_a_checkpoint(tmp_path: Path) -> None:
    net = PyTorchMLP(784, 10)
    optimizer = Adam(net.parameters(), lr=1e-3, fused=True)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    steps = [state["step"] for state in optimizer.state.values()]
    assert steps[0]._base is not None and all(s._base is steps[0]._base for s in steps)
    assert [float(s) for s in steps] == [3.0] * 6
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    reloaded = Adam(net.parameters(), lr=1e-3, fused=True)
    reloaded.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    reference = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    reference.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))

    def one_step(optim: torch.optim.Optimizer) -> list[torch.Tensor]:
        """Parameters after one step on fixed gradients; the network is put back after."""
        before = [p.detach().clone() for p in net.parameters()]
        optim.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optim.step()
        after = [p.detach().clone() for p in net.parameters()]
        with torch.no_grad():
            for p, b in zip(net.parameters(), before, strict=True):
                p.copy_(b)
        return after

    ours, theirs = one_step(reloaded), one_step(reference)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert [float(s["step"]) for s in reloaded.state.values()] == [4.0] * 6


def test_adam_skips_the_capture_probe_only_for_cpu_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    # torch's own check (what it probes differs between torch versions: NVML, accelerator)
    name = next(
        n
        for n in ("_accelerator_graph_capture_health_check", "_cuda_graph_capture_health_check")
        if hasattr(torch.optim.Optimizer, n)
    )
    monkeypatch.setattr(torch.optim.Optimizer, name, lambda self: calls.append(self))
    cpu = Adam([torch.nn.Parameter(torch.zeros(3))], lr=1e-3)
    getattr(cpu, name)()
    assert calls == []
    meta = Adam([torch.nn.Parameter(torch.zeros(3, device="meta"))], lr=1e-3)
    getattr(meta, name)()  # not a CPU parameter: torch's check runs
    assert calls == [meta]


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


def test_adam_zero_grad_sets_none_or_zeros() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = Adam([param], lr=0.1, fused=True)
    param.sum().backward()
    optimizer.zero_grad(set_to_none=False)
    assert param.grad is not None and torch.equal(param.grad, torch.zeros(3))
    param.sum().backward()
    optimizer.zero_grad()
    assert param.grad is None


def test_cpu_batches_skip_the_transfer_walk_only_when_nothing_would_move() -> None:
    model = LightningModel(network="mlp")
    cpu = torch.device("cpu")
    batch = (torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    assert model.transfer_batch_to_device(batch, cpu, 0) is batch
    nested = {"x": batch[0]}  # not a flat tuple: Lightning's own transfer, a new dict
    moved = model.transfer_batch_to_device(nested, cpu, 0)
    assert moved is not nested and moved["x"] is batch[0]
    meta = torch.device("meta")  # another device: Lightning moves the tensors
    on_meta = model.transfer_batch_to_device(batch, meta, 0)
    assert all(t.device == meta for t in on_meta)
    with pytest.raises(NotImplementedError, match="meta"):  # bound for the CPU: moved too
        model.transfer_batch_to_device(on_meta, cpu, 0)  # (a meta tensor has no data to copy)


def test_stored_training_step_signature_matches_the_method() -> None:
    from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature

    model = LightningModel(network="mlp")
    stored = LightningModel.training_step.__signature__
    del LightningModel.training_step.__signature__
    try:
        assert inspect.signature(LightningModel.training_step) == stored
    finally:
        LightningModel.training_step.__signature__ = stored
    assert is_param_in_hook_signature(model.training_step, "batch_idx", min_args=2)

    class NoIndex(LightningModel):
        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return super().training_step(batch, 0)

    no_index = NoIndex(network="mlp").training_step
    assert not is_param_in_hook_signature(no_index, "batch_idx", min_args=2)


def test_registered_network_given_as_model_is_recorded(tmp_path) -> None:
    # LightningModel(model=PyTorchMLP(784, 10)), the tutorial's way with toolkit's class,
    # saved network None: load_from_checkpoint(path) and the CLI then needed the name.
    import lightning

    from toolkit.models import PyTorchMLP, build_model

    lm = LightningModel(model=PyTorchMLP(784, 5), learning_rate=0.01)
    assert lm.hparams["network"] == "mlp"
    assert lm.hparams["network_kwargs"] == {"num_features": 784, "num_classes": 5}
    path = tmp_path / "tutorial-way.ckpt"
    torch.save(
        {
            "state_dict": lm.state_dict(),
            "hyper_parameters": dict(lm.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    reloaded = LightningModel.load_from_checkpoint(path, weights_only=True)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), lm.eval()(x))

    class Unregistered(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

    assert LightningModel(model=Unregistered()).hparams["network"] is None
    changed = build_model("mlp")
    changed.num_classes = 3  # attributes that no longer describe the weights: not recorded
    assert LightningModel(model=changed).hparams["network"] is None
