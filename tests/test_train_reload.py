"""Training writes a complete run folder; every reload path gives bitwise-identical logits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from toolkit.errors import CheckpointError, OutputExistsError, UsageError
from toolkit.models import PyTorchMLP
from toolkit.module import LightningModel
from toolkit.reload import load_lightning_model, load_network
from toolkit.train import evaluate, train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, idx_dir: Path):
    out = tmp_path_factory.mktemp("runs")
    return train(
        model="mlp",
        data_dir=str(idx_dir),
        max_epochs=2,
        output_dir=str(out),
        run_name="r",
        trainer={"accelerator": "cpu", "devices": 1},
    )


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(7))


def test_run_folder_contents(run) -> None:
    run_dir = Path(run.run_dir)
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "model.ckpt",
        "model.pt",
        "model.safetensors",
        "run.json",
        "metrics.csv",
        "epochs.csv",
    } <= names
    info = json.loads((run_dir / "run.json").read_text())
    assert info["network"] == "mlp" and info["input_shape"] == [1, 28, 28]
    assert info["dataset"] == "fashion-mnist" and info["epochs_run"] == 2
    for key in ("train_acc", "val_acc", "test_acc"):
        assert 0.0 <= info[key] <= 1.0
    assert info["test_acc"] > 0.5  # the synthetic classes are easy to learn
    epochs = (run_dir / "epochs.csv").read_text().splitlines()
    assert epochs[0].split(",")[:1] == ["epoch"] and len(epochs) == 3  # header + 2 epochs
    assert "val_acc" in epochs[0] and "train_acc" in epochs[0]
    assert not list(run_dir.parent.glob(".*partial"))


@pytest.mark.parametrize("file_name", ["model.ckpt", "model.pt", "model.safetensors"])
def test_load_network_is_bitwise_identical(run, probe: torch.Tensor, file_name: str) -> None:
    reloaded = load_network(Path(run.run_dir) / file_name)
    assert not reloaded.training
    with torch.no_grad():
        assert torch.equal(reloaded(probe), run.model(probe))


def test_load_from_checkpoint_without_arguments(run, probe: torch.Tensor) -> None:
    lightning_model = LightningModel.load_from_checkpoint(Path(run.run_dir) / "model.ckpt")
    lightning_model.eval()
    with torch.no_grad():
        assert torch.equal(lightning_model(probe), run.model(probe))


def test_load_from_checkpoint_the_tutorial_way(run, probe: torch.Tensor) -> None:
    net = PyTorchMLP(num_features=784, num_classes=10)
    lightning_model = LightningModel.load_from_checkpoint(
        Path(run.run_dir) / "model.ckpt", model=net
    )
    lightning_model.eval()
    assert lightning_model.model is net
    with torch.no_grad():
        assert torch.equal(net(probe), run.model(probe))


def test_safe_lightning_loader(run, probe: torch.Tensor) -> None:
    lightning_model = load_lightning_model(Path(run.run_dir) / "model.ckpt")
    assert not lightning_model.training
    with torch.no_grad():
        assert torch.equal(lightning_model(probe), run.model(probe))


def test_state_dict_without_sidecar_needs_a_name(run, tmp_path: Path, probe) -> None:
    bare = tmp_path / "weights.pt"
    bare.write_bytes((Path(run.run_dir) / "model.pt").read_bytes())
    with pytest.raises(UsageError, match="pass --model NAME"):
        load_network(bare)
    with torch.no_grad():
        assert torch.equal(load_network(bare, network="mlp")(probe), run.model(probe))


def test_mismatched_state_dict_names_keys(run, tmp_path: Path) -> None:
    state = torch.load(Path(run.run_dir) / "model.pt", weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["all_layers.5.bias"]
    state["all_layers.1.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_network(tmp_path / "bad.pt", network="mlp")
    message = str(info.value)
    assert "missing keys: all_layers.5.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "all_layers.1.weight (3, 3) vs (50, 784)" in message


def test_existing_run_is_not_overwritten(run, idx_dir: Path) -> None:
    run_dir = Path(run.run_dir)
    before = (run_dir / "model.pt").read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train(data_dir=str(idx_dir), max_epochs=1, output_dir=str(run_dir.parent), run_name="r")
    assert (run_dir / "model.pt").read_bytes() == before


def test_default_run_name_never_reuses_a_folder(tmp_path: Path, idx_dir: Path) -> None:
    kwargs = {
        "data_dir": str(idx_dir),
        "max_epochs": 1,
        "output_dir": str(tmp_path),
        "trainer": {"limit_train_batches": 2, "limit_val_batches": 1},
    }
    first, second = train(**kwargs), train(**kwargs)
    assert Path(first.run_dir).name == "mlp-fashion-mnist"
    assert Path(second.run_dir).name == "mlp-fashion-mnist-v2"


def test_evaluate_prints_the_tutorial_line(run, idx_dir: Path, capsys) -> None:
    result = evaluate(checkpoint=str(Path(run.run_dir) / "model.ckpt"), data_dir=str(idx_dir))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == (
        f"Train Acc {result['train_acc'] * 100:.2f}% | Val Acc "
        f"{result['val_acc'] * 100:.2f}% | Test Acc {result['test_acc'] * 100:.2f}%"
    )
    assert result["test_acc"] == pytest.approx(run.test_acc)
    from_weights = evaluate(weights=str(Path(run.run_dir) / "model.pt"), data_dir=str(idx_dir))
    assert from_weights == result


def test_cnn_trains_and_reloads(tmp_path: Path, idx_dir: Path) -> None:
    result = train(
        model="cnn",
        data_dir=str(idx_dir),
        max_epochs=1,
        output_dir=str(tmp_path),
        trainer={"limit_train_batches": 3, "limit_val_batches": 1},
    )
    probe = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(
            load_network(Path(result.run_dir) / "model.safetensors")(probe), result.model(probe)
        )


def test_progress_bar_is_throttled_unless_the_user_sets_one() -> None:
    from lightning.pytorch.callbacks import TQDMProgressBar

    from toolkit.train import ThrottledProgressBar, _trainer

    bar = _trainer(None, 1, 0, {"enable_progress_bar": True}).progress_bar_callback
    assert isinstance(bar, ThrottledProgressBar) and bar.min_interval == 0.1
    own = TQDMProgressBar(refresh_rate=3)
    trainer = _trainer(None, 1, 0, {"enable_progress_bar": True, "callbacks": [own]})
    assert trainer.progress_bar_callback is own
    assert _trainer(None, 1, 0, {"enable_progress_bar": False}).progress_bar_callback is None
    # a bar of the user's is shown off a terminal too; a single callback needs no list
    assert _trainer(None, 1, 0, {"callbacks": own}).progress_bar_callback is own
    with pytest.raises(UsageError, match="enable_progress_bar=False"):
        _trainer(None, 1, 0, {"callbacks": own, "enable_progress_bar": False})


def test_throttled_progress_bar_redraws_after_min_interval_and_at_the_end() -> None:
    from toolkit.train import ThrottledProgressBar

    bar = ThrottledProgressBar(min_interval=0.1)
    now = [0.0]
    bar._clock = lambda: now[0]
    decisions = []
    for t, step in [(0.0, 1), (0.05, 2), (0.099, 3), (0.12, 4), (0.13, 5), (0.14, 100), (0.15, 1)]:
        now[0] = t
        decisions.append(bar._should_update(step, 100))
    # drawn at the first step, after 0.1 s, always at the last step (100), then throttled
    assert decisions == [True, False, False, True, False, True, False]
    every_5 = ThrottledProgressBar(min_interval=0.0, refresh_rate=5)
    assert not every_5._should_update(3, 100) and every_5._should_update(5, 100)
    bar.disable()
    now[0] = 10.0
    assert not bar._should_update(100, 100)


def test_throttled_progress_bar_shows_every_step_of_a_run(tmp_path: Path, idx_dir: Path) -> None:
    """Through a real Trainer: the bar ends at the epoch's last step, with far fewer redraws
    than steps (Lightning's own bar would draw all 12)."""
    import contextlib
    import io

    from toolkit.train import ThrottledProgressBar

    bar = ThrottledProgressBar(min_interval=60.0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        train(
            model="mlp",
            data_dir=str(idx_dir),
            max_epochs=1,
            batch_size=16,
            output_dir=str(tmp_path),
            trainer={
                "enable_progress_bar": True,
                "callbacks": [bar],
                "limit_train_batches": 12,
                "limit_val_batches": 1,
            },
        )
    epoch_draws = re.findall(r"Epoch 0: +\d+%\|[^|]*\| (\d+)/(\d+)", out.getvalue())
    assert epoch_draws and epoch_draws[-1][0] == epoch_draws[-1][1] == "12"
    assert len({done for done, _ in epoch_draws}) <= 3  # start, first step, last step


def test_default_profiler_records_nothing_and_a_users_profiler_replaces_it(
    tmp_path: Path, idx_dir: Path
) -> None:
    from lightning.pytorch.profilers import SimpleProfiler

    from toolkit.train import NoProfiler, _trainer

    quiet = _trainer(None, 1, 0, {}).profiler
    assert isinstance(quiet, NoProfiler)
    with quiet.profile("[Strategy]training_step") as name:
        assert name == "[Strategy]training_step"
    assert quiet.summary() == ""
    train(
        model="mlp",
        data_dir=str(idx_dir),
        max_epochs=1,
        output_dir=str(tmp_path),
        run_name="profiled",
        trainer={
            "accelerator": "cpu",
            "devices": 1,
            "limit_train_batches": 3,
            "profiler": SimpleProfiler(dirpath=str(tmp_path), filename="profile"),
        },
    )
    report = (tmp_path / "fit-profile.txt").read_text()
    assert "run_training_batch" in report


@pytest.mark.parametrize("flush", [True, False])
def test_denormals_are_flushed_while_training_and_restored_after(
    tmp_path: Path, idx_dir: Path, flush: bool
) -> None:
    import lightning as L

    from toolkit.train import _denormals_are_flushed

    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, *args: object) -> None:
            seen.append(_denormals_are_flushed())

    assert not _denormals_are_flushed()
    train(
        model="mlp",
        data_dir=str(idx_dir),
        max_epochs=1,
        output_dir=str(tmp_path),
        flush_denormal=flush,
        trainer={
            "accelerator": "cpu",
            "devices": 1,
            "callbacks": [Record()],
            "limit_train_batches": 2,
        },
    )
    assert seen == [flush, flush]
    assert not _denormals_are_flushed()
