"""Training writes a complete run folder; every reload path gives bitwise-identical logits."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging

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


def test_a_lightning_models_own_state_dict_loads_as_the_network(
    run, tmp_path: Path, probe: torch.Tensor
) -> None:
    lightning_model = load_lightning_model(Path(run.run_dir) / "model.ckpt")
    torch.save(lightning_model.state_dict(), tmp_path / "lightning.pt")  # keys "model.*"
    with torch.no_grad():
        reloaded = load_network(tmp_path / "lightning.pt", network="mlp")(probe)
        assert torch.equal(reloaded, run.model(probe))
    # Keys that do not fit with or without the prefix are still named as they are.
    state = {f"model.{k}": v for k, v in lightning_model.model.state_dict().items()}
    state["model.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys: model\.all_layers"):
        load_network(tmp_path / "bad.pt", network="mlp")


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


def test_existing_run_is_not_overwritten(run, idx_dir: Path, monkeypatch) -> None:
    """Refused before training, not after a whole run whose result is then thrown away."""
    import toolkit.train

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained although the run folder exists")

    monkeypatch.setattr(toolkit.train, "_train_into", no_training)
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


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_run_alongside_taking_the_default_name_moves_this_one_on(
    tmp_path: Path, idx_dir: Path, monkeypatch, overwrite: bool
) -> None:
    """Two runs started together chose the same free name; the one that finished second
    failed with 'already exists' after training (or, with --overwrite, replaced the other)."""
    import toolkit.train

    accuracies = toolkit.train._accuracies

    def other_run_publishes(*args, **kwargs):
        other = tmp_path / "mlp-fashion-mnist"
        other.mkdir()
        (other / "run.json").write_text('{"other": true}')
        return accuracies(*args, **kwargs)

    monkeypatch.setattr(toolkit.train, "_accuracies", other_run_publishes)
    result = train(
        data_dir=str(idx_dir),
        max_epochs=1,
        output_dir=str(tmp_path),
        overwrite=overwrite,
        trainer={"limit_train_batches": 2, "limit_val_batches": 1},
    )
    run_dir = Path(result.run_dir)
    assert run_dir == tmp_path / "mlp-fashion-mnist-v2"
    assert json.loads((run_dir / "run.json").read_text())["run_dir"] == str(run_dir)
    assert (tmp_path / "mlp-fashion-mnist" / "run.json").read_text() == '{"other": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp-fashion-mnist", run_dir.name]


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


def test_evaluate_scores_in_the_precision_the_run_recorded(tmp_path: Path, idx_dir: Path) -> None:
    # bf16-mixed: the accuracy passes after training ran in bf16; evaluate once ran in fp32
    # and printed other numbers for the same weights.
    run = train(data_dir=str(idx_dir), max_epochs=1, output_dir=str(tmp_path),
                trainer={"logger": False, "precision": "bf16-mixed",
                         "limit_train_batches": 1})  # fmt: skip
    info = json.loads((Path(run.run_dir) / "run.json").read_text())
    assert info["precision"] == "bf16-mixed"
    scores = evaluate(checkpoint=str(Path(run.run_dir) / "model.ckpt"))
    assert (scores["train_acc"], scores["val_acc"], scores["test_acc"]) == pytest.approx(
        (run.train_acc, run.val_acc, run.test_acc), abs=0
    )


def test_evaluate_uses_the_split_the_run_trained_on(tmp_path: Path, idx_dir: Path) -> None:
    # One step: a half-trained network scores two different val splits differently.
    run = train(data_dir=str(idx_dir), max_epochs=1, seed=7, output_dir=str(tmp_path),
                trainer={"logger": False, "limit_train_batches": 1})  # fmt: skip
    scores = evaluate(checkpoint=str(Path(run.run_dir) / "model.ckpt"))  # data and seed: run's
    assert (scores["train_acc"], scores["val_acc"]) == pytest.approx((run.train_acc, run.val_acc))
    other_split = evaluate(checkpoint=str(Path(run.run_dir) / "model.ckpt"), seed=42)
    assert other_split["val_acc"] != pytest.approx(run.val_acc)  # the test can tell splits apart
    with pytest.raises(UsageError, match="--seed must be 0 to"):
        evaluate(checkpoint=str(Path(run.run_dir) / "model.ckpt"), seed=-1)


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


def test_a_line_per_epoch_when_no_bar_is_shown(
    idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal (as under pytest) each finished epoch prints one line on stderr."""
    common = {"model": "mlp", "data_dir": str(idx_dir), "output_dir": str(tmp_path)}
    train(**common, max_epochs=2, run_name="a", trainer={"accelerator": "cpu", "devices": 1})
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    # then the accuracy passes, which for a big network take minutes with no bar
    # named with the data set and folder: evaluate on a tutorial file once scored the
    # default Fashion-MNIST without a word, where the user had trained on MNIST
    scoring = f"scoring train, val and test of fashion-mnist from {idx_dir} (600 samples)"
    assert scoring in err.splitlines()
    assert [ln.split("  ")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"]
    for line in lines:
        assert re.fullmatch(
            r"epoch \d/2  train_loss \d\.\d{4}  train_acc \d+\.\d\d%  "
            r"val_loss \d\.\d{4}  val_acc \d+\.\d\d%  \d+\.\d s",
            line,
        ), line
    from lightning.pytorch.callbacks import TQDMProgressBar

    from toolkit.train import EpochLines, _trainer

    own = _trainer(None, 1, 0, {"callbacks": [TQDMProgressBar()]}).callbacks  # the user's bar
    assert not any(isinstance(c, EpochLines) for c in own)
    quiet = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    train(**common, max_epochs=1, run_name="b", trainer=quiet)
    assert "epoch 1/1" not in capsys.readouterr().err  # the user turned progress off


def test_epoch_lines_show_only_this_epochs_validation_and_mark_a_cut_short_epoch(
    idx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An epoch without validation repeated the last epoch's val metrics, and an epoch
    stopped by max_steps was announced as finished while run.json did not count it."""
    common = {"model": "mlp", "data_dir": str(idx_dir), "output_dir": str(tmp_path)}
    cpu = {"accelerator": "cpu", "devices": 1, "limit_val_batches": 1}
    train(**common, max_epochs=3, run_name="a", trainer={**cpu, "check_val_every_n_epoch": 2})
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    assert ["val_loss" in ln for ln in lines] == [False, True, False], lines
    result = train(**common, max_epochs=3, run_name="b", trainer={**cpu, "max_steps": 9})
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split("  ")[0] for ln in lines] == [
        "epoch 1/3",
        "epoch 2/3 (cut short: 3 of 6 batches)",
    ]
    assert result.epochs_run == 1 and result.steps_run == 9


def test_logger_true_keeps_the_run_folders_csv_log(tmp_path: Path) -> None:
    """``--trainer.logger true`` replaced the CSV log in the run folder with Lightning's
    default logger under lightning_logs/, so epochs.csv went missing."""
    from lightning.pytorch.loggers import CSVLogger

    from toolkit.train import _trainer

    trainer = _trainer(tmp_path, 1, 0, {"logger": True})
    assert isinstance(trainer.logger, CSVLogger) and Path(trainer.logger.log_dir) == tmp_path
    assert _trainer(tmp_path, 1, 0, {"logger": False}).logger is None


def test_strategies_that_fit_in_spawned_processes_are_refused() -> None:
    from lightning.pytorch.strategies import DDPStrategy

    from toolkit.train import _trainer

    cpu2 = {"accelerator": "cpu", "devices": 2}
    for strategy in ("ddp_spawn", "ddp_fork", "ddp_notebook", DDPStrategy(start_method="spawn")):
        with pytest.raises(UsageError, match="fits in spawned processes"):
            _trainer(None, 1, 0, {**cpu2, "strategy": strategy})
    for strategy in ("ddp", DDPStrategy()):  # one process per device, each running the command
        trainer = _trainer(None, 1, 0, {**cpu2, "strategy": strategy})
        assert isinstance(trainer.strategy, DDPStrategy)


def test_a_moved_data_folder_is_named_as_the_runs(run, tmp_path: Path) -> None:
    """evaluate and verify use the run's recorded --data_dir; when it has moved, the error
    named a folder the user never typed, without saying where it came from."""
    import shutil

    from toolkit.errors import DataError
    from toolkit.parity import verify

    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy)
    info = json.loads((copy / "run.json").read_text())
    info["data_dir"] = str(tmp_path / "moved")
    (copy / "run.json").write_text(json.dumps(info))
    recorded = re.escape(f"(the run's --data_dir, recorded in {copy / 'run.json'}; pass --data_dir")
    with pytest.raises(DataError, match=recorded):
        evaluate(checkpoint=str(copy / "model.ckpt"))
    with pytest.raises(DataError, match=recorded):
        verify(copy / "model.ckpt", None)
    with pytest.raises(DataError, match="no FashionMNIST IDX files") as given:
        evaluate(checkpoint=str(copy / "model.ckpt"), data_dir=str(tmp_path / "typed"))
    assert "recorded in" not in str(given.value)  # a folder the user gave is theirs
    (tmp_path / "moved").mkdir()  # there, but without the files: no advice to move it
    with pytest.raises(DataError, match=r"recorded in .*run\.json\)$"):
        evaluate(checkpoint=str(copy / "model.ckpt"))


def test_an_unknown_dataset_recorded_in_run_json_is_named_as_the_runs(run, tmp_path: Path) -> None:
    """A bad name in run.json was reported as 'unknown dataset' (exit 2, a wrong call)
    although the user typed no --dataset."""
    import shutil

    from toolkit.errors import DataError
    from toolkit.parity import verify

    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy)
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "dataset": "foo"}))
    recorded = re.escape(f"{copy / 'run.json'} records an unknown dataset 'foo'; pass --dataset")
    with pytest.raises(DataError, match=recorded):
        evaluate(checkpoint=str(copy / "model.ckpt"))
    with pytest.raises(DataError, match=recorded):
        verify(copy / "model.ckpt", None)


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


def test_progress_bar_counts_batches_not_groups(tmp_path: Path, idx_dir: Path) -> None:
    import contextlib
    import io

    from toolkit.train import ThrottledProgressBar

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        train(
            data_dir=str(idx_dir),
            max_epochs=1,
            output_dir=str(tmp_path),
            batches_per_step=4,  # 6 batches: groups of 4 and 2
            trainer={
                "callbacks": [ThrottledProgressBar(min_interval=0.0)],
                "limit_val_batches": 1,
            },
        )
    draws = re.findall(r"Epoch 0: +\d+%\|[^|]*\| (\d+)/(\d+)", out.getvalue())
    assert {total for _, total in draws} == {"6"}
    assert {int(done) for done, _ in draws} - {0} == {4, 6}  # after each group


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


# -- checks before training ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../up", "/tmp/elsewhere", ".hidden"])
def test_run_name_must_be_a_plain_folder_name(tmp_path: Path, idx_dir: Path, name: str) -> None:
    """``--run_name "" --overwrite`` once moved the whole output folder away."""
    out = tmp_path / "runs"
    (out / "earlier").mkdir(parents=True)
    (out / "earlier" / "run.json").write_text("{}")
    with pytest.raises(UsageError, match="--run_name must be a plain folder name"):
        train(data_dir=str(idx_dir), output_dir=str(out), run_name=name, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["earlier"]
    assert (out / "earlier" / "run.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_workers": -1}, "--num_workers must be 0 to"),
        ({"num_workers": 100_000}, "--num_workers must be 0 to"),  # once killed at 24 GB
        # Lightning divides by these unchecked: once a ZeroDivisionError traceback mid-fit
        ({"trainer": {"val_check_interval": 0}}, "--trainer.val_check_interval must be above 0"),
        (
            {"trainer": {"accumulate_grad_batches": 0}},
            "--trainer.accumulate_grad_batches must be above 0",
        ),
        (
            {"trainer": {"check_val_every_n_epoch": 0}},
            "--trainer.check_val_every_n_epoch must be above 0",
        ),
        ({"learning_rate": 0.0}, "--learning_rate must be a positive number"),
        ({"learning_rate": -0.01}, "--learning_rate must be a positive number"),
        ({"learning_rate": float("nan")}, "--learning_rate must be a positive number"),
        ({"learning_rate": float("inf")}, "--learning_rate must be a positive number"),
        # 480 samples: 440 train, 40 val
        ({"batch_size": 441}, "--batch_size 441 is larger than the training split (440"),
        ({"model_kwargs": {"num_features": 100}}, "shape (1, 10, 10), but fashion-mnist"),
        ({"model_kwargs": {"num_classes": 5}}, "outputs of shape (2, 5) for a batch of 2"),
        ({"model": "cnn", "model_kwargs": {"in_channels": 3}}, "shape (3, 28, 28), but"),
        ({"batches_per_step": 0}, "--batches_per_step must be at least 1, got 0"),
        (
            {"batches_per_step": 4, "trainer": {"gradient_clip_val": 1.0}},
            "--batches_per_step 4 (one Lightning step per group of batches) cannot honour "
            "--trainer.gradient_clip_val 1.0, which counts or acts on batches",
        ),
        (
            {"batches_per_step": 2, "trainer": {"accumulate_grad_batches": 2}},
            "cannot honour --trainer.accumulate_grad_batches 2",
        ),
        (
            {"batches_per_step": 2, "trainer": {"limit_train_batches": 1}},
            "cannot honour --trainer.limit_train_batches 1,",
        ),
        (
            {"batches_per_step": 2, "trainer": {"val_check_interval": 0.5}},
            "cannot honour --trainer.val_check_interval 0.5",
        ),
        (
            {"batches_per_step": 2, "trainer": {"overfit_batches": 2}},
            "cannot honour --trainer.overfit_batches 2",
        ),
        (
            {"batches_per_step": 2, "trainer": {"fast_dev_run": True}},
            "cannot honour --trainer.fast_dev_run True",
        ),
        (
            {"batches_per_step": 2, "trainer": {"callbacks": [StochasticWeightAveraging(0.01)]}},
            "cannot honour StochasticWeightAveraging, which needs Lightning's automatic",
        ),
        (
            {
                "batches_per_step": 2,
                "trainer": {"callbacks": [ModelCheckpoint(every_n_train_steps=3)]},
            },
            "cannot honour ModelCheckpoint(every_n_train_steps=3)",
        ),
        (
            {
                "batches_per_step": 2,
                "trainer": {"strategy": "ddp", "devices": 2, "accelerator": "cpu"},
            },
            "trains on one device; with 2 processes give --batches_per_step 1",
        ),
    ],
)
def test_bad_settings_fail_before_training(
    tmp_path: Path, idx_dir: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(UsageError) as info:
        train(data_dir=str(idx_dir), max_epochs=1, output_dir=str(tmp_path / "runs"), **kwargs)
    assert message in str(info.value)
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_batch_size_of_the_whole_split_still_trains(tmp_path: Path, idx_dir: Path) -> None:
    result = train(
        data_dir=str(idx_dir),
        max_epochs=1,
        batch_size=440,
        output_dir=str(tmp_path),
        trainer={"logger": False, "limit_val_batches": 1},
    )
    assert result.epochs_run == 1


def test_python_api_shows_no_warnings_the_user_cannot_act_on(
    tmp_path: Path, idx_dir: Path, recwarn: pytest.WarningsRecorder
) -> None:
    # Lightning 2.6's _pytree trips torch 2.14's LeafSpec FutureWarning in fit and in test.
    train(data_dir=str(idx_dir), max_epochs=1, output_dir=str(tmp_path),
          trainer={"logger": False, "limit_val_batches": 1})  # fmt: skip
    shown = [str(w.message) for w in recwarn]
    assert not [m for m in shown if "LeafSpec" in m or "transfer_batch_to_device" in m], shown


@pytest.mark.parametrize("batches_per_step", [1, 4])
@pytest.mark.parametrize(("max_steps", "epochs", "steps"), [(5, 0, 5), (6, 1, 6), (13, 2, 13)])
def test_epochs_run_counts_whole_epochs_only(
    tmp_path: Path, idx_dir: Path, max_steps: int, epochs: int, steps: int, batches_per_step: int
) -> None:
    # 440 training samples in batches of 64: 6 steps per epoch; in groups of 4, two groups
    # (4 and 2 batches): max_steps 5 stops inside the second group, the epoch's last.
    result = train(
        data_dir=str(idx_dir),
        max_epochs=3,
        output_dir=str(tmp_path),
        trainer={"logger": False, "limit_val_batches": 1, "max_steps": max_steps},
        batches_per_step=batches_per_step,
    )
    assert (result.epochs_run, result.steps_run) == (epochs, steps)
    info = json.loads((Path(result.run_dir) / "run.json").read_text())
    assert (info["epochs_run"], info["steps_run"]) == (epochs, steps)


def test_clean_stale_partials_parses_names_strictly(tmp_path: Path) -> None:
    import subprocess
    import sys

    from toolkit.atomic import clean_stale_partials

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead, alive = child.pid, os.getpid()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    (tmp_path / ".backup.old").write_text("a user's file")  # once a ValueError
    (tmp_path / f".best.{pid_max + 1}.partial").mkdir()  # no process can have this pid
    (tmp_path / f".best.{pid_max + 1}.partial" / "keep").write_text("x")
    (tmp_path / ".x.12.partial.bak").write_text("x")
    (tmp_path / f".{dead}.partial").write_text("x")  # no name before the pid
    (tmp_path / f"..hidden.{dead}.partial").write_text("x")
    (tmp_path / f".link.{dead}.partial").symlink_to(tmp_path / "done")  # toolkit makes none
    (tmp_path / f".notes.{dead}.old").write_text("n")  # a replaced file, not yet restored
    (tmp_path / f".r.{alive}.partial").mkdir()  # a run in progress
    (tmp_path / f".r.{dead}.partial").mkdir()  # a killed run
    (tmp_path / f".run.json.{dead}.partial").write_text("{")  # a killed atomic write
    (tmp_path / f".prev.{dead}.old").mkdir()  # killed between publish_dir's two renames
    (tmp_path / f".prev.{dead}.old" / "run.json").write_text("{}")
    (tmp_path / "done").mkdir()
    (tmp_path / f".done.{dead}.old").mkdir()  # its replacement was published
    untouched = {p.name for p in tmp_path.iterdir()} - {
        f".r.{dead}.partial",
        f".run.json.{dead}.partial",
        f".prev.{dead}.old",
        f".done.{dead}.old",
        f".notes.{dead}.old",
    }

    touched = clean_stale_partials(tmp_path)

    assert sorted(p.name for p in touched) == sorted(
        [
            f".r.{dead}.partial",
            f".run.json.{dead}.partial",
            f".prev.{dead}.old",
            f".done.{dead}.old",
            f".notes.{dead}.old",
        ]
    )
    assert {p.name for p in tmp_path.iterdir()} == untouched | {"prev", "notes"}
    assert (tmp_path / "notes").read_text() == "n"
    assert (tmp_path / "prev" / "run.json").read_text() == "{}"  # moved back
    assert (tmp_path / f".best.{pid_max + 1}.partial" / "keep").is_file()
    assert clean_stale_partials(tmp_path / "missing") == []


# -- what a run folder records ---------------------------------------------------------------
def _full_accuracies(model: torch.nn.Module, idx_dir: Path) -> tuple[float, float, float]:
    """Accuracy of ``model`` on every train, val and test sample, without Lightning."""
    from toolkit.data import MNISTDataModule

    data = MNISTDataModule(str(idx_dir))
    data.setup("fit")
    with torch.no_grad():
        return tuple(
            float((model(part.images).argmax(dim=1) == part.labels).float().mean())
            for part in (data.mnist_train, data.mnist_val, data.mnist_test)
        )  # type: ignore[return-value]


@pytest.mark.parametrize(
    "options",
    [
        {"fast_dev_run": True},  # also limits the test passes to one batch
        {"logger": False, "limit_test_batches": 0, "limit_val_batches": 1},  # once IndexError
    ],
)
def test_accuracies_count_every_sample_and_files_lists_only_written_files(
    tmp_path: Path, idx_dir: Path, options: dict
) -> None:
    (tmp_path / ".backup.old").write_text("a user's file")  # once crashed every train
    result = train(
        data_dir=str(idx_dir),
        max_epochs=1,
        output_dir=str(tmp_path),
        eval_batch_size=16,  # the test passes would have 28, 3 and 8 batches
        trainer={"accelerator": "cpu", "devices": 1, **options},
    )
    run_dir = Path(result.run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    full = _full_accuracies(result.model, idx_dir)
    assert (info["train_acc"], info["val_acc"], info["test_acc"]) == pytest.approx(full)
    assert info["files"] == {
        "checkpoint": "model.ckpt",
        "state_dict": "model.pt",
        "safetensors": "model.safetensors",
    }  # no logger wrote metrics.csv, so no epochs.csv either
    assert all((run_dir / name).is_file() for name in info["files"].values())
    assert not (run_dir / "metrics.csv").exists()
    assert (tmp_path / ".backup.old").read_text() == "a user's file"


def test_run_json_lists_the_logged_files(run) -> None:
    files = json.loads((Path(run.run_dir) / "run.json").read_text())["files"]
    assert set(files) == {
        "checkpoint", "state_dict", "safetensors", "metrics", "epochs", "hparams"
    }  # fmt: skip
    assert all((Path(run.run_dir) / name).is_file() for name in files.values())


def test_a_users_model_checkpoint_turns_checkpointing_on(tmp_path: Path, idx_dir: Path) -> None:

    from toolkit.train import _trainer

    own = ModelCheckpoint()
    assert _trainer(None, 1, 0, {"callbacks": [own]}).checkpoint_callback is own
    with pytest.raises(UsageError, match="enable_checkpointing=False"):
        _trainer(None, 1, 0, {"callbacks": [ModelCheckpoint()], "enable_checkpointing": False})
    result = train(
        data_dir=str(idx_dir),
        max_epochs=1,
        output_dir=str(tmp_path),
        trainer={"callbacks": [ModelCheckpoint()], "limit_train_batches": 2},
    )
    assert list(Path(result.run_dir).glob("checkpoints/*.ckpt"))  # inside the run folder


# -- interrupted training publishes nothing --------------------------------------------------
def _stop_at_second_step(action):
    import lightning as L

    class Stop(L.Callback):
        def on_train_batch_end(self, trainer, *args: object) -> None:
            if trainer.global_step == 2:
                action()

    return Stop()


def test_sigterm_while_training_raises_and_publishes_nothing(tmp_path: Path, idx_dir: Path):
    """Lightning ends a fit on SIGTERM with SystemExit(None): a program would exit 0."""
    import signal

    from toolkit.errors import TerminatedError

    before = signal.getsignal(signal.SIGTERM)
    stop = _stop_at_second_step(lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TerminatedError, match="no run folder was written"):
        train(
            data_dir=str(idx_dir),
            max_epochs=100,
            output_dir=str(tmp_path),
            run_name="r",
            trainer={"accelerator": "cpu", "devices": 1, "callbacks": [stop]},
        )
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_ctrl_c_while_training_raises_keyboard_interrupt(tmp_path: Path, idx_dir: Path):
    """Lightning turns Ctrl-C into sys.exit(1); train raises KeyboardInterrupt instead and
    leaves the run it would have replaced as it was."""
    import signal

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text("{}")

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            data_dir=str(idx_dir),
            max_epochs=100,
            output_dir=str(tmp_path),
            run_name="r",
            overwrite=True,
            trainer={
                "accelerator": "cpu",
                "devices": 1,
                "callbacks": [_stop_at_second_step(ctrl_c)],
            },
        )
    assert [p.name for p in tmp_path.iterdir()] == ["r"]
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["run.json"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# -- evaluate ----------------------------------------------------------------------------------
def test_evaluate_takes_any_weights_file_as_checkpoint(run, idx_dir: Path) -> None:
    """As export, verify and bench do: --checkpoint model.pt / model.safetensors."""
    for name in ("model.pt", "model.safetensors"):
        scores = evaluate(checkpoint=str(Path(run.run_dir) / name), data_dir=str(idx_dir))
        assert scores["test_acc"] == pytest.approx(run.test_acc)


def test_evaluate_a_checkpoint_that_does_not_record_its_network(
    run, idx_dir: Path, tmp_path: Path
) -> None:
    """A .ckpt of the tutorial's own LightningModel: hparams without the network name."""
    checkpoint = torch.load(Path(run.run_dir) / "model.ckpt", weights_only=True)
    checkpoint["hyper_parameters"] = {"learning_rate": 0.001}
    tutorial = tmp_path / "tutorial.ckpt"
    torch.save(checkpoint, tutorial)
    with pytest.raises(UsageError, match=r"does not record its network; pass --model NAME"):
        evaluate(checkpoint=str(tutorial), data_dir=str(idx_dir))
    scores = evaluate(checkpoint=str(tutorial), model="mlp", data_dir=str(idx_dir))
    assert scores["test_acc"] == pytest.approx(run.test_acc)
    with pytest.raises(CheckpointError, match="does not fit network"):
        evaluate(checkpoint=str(tutorial), model="cnn", data_dir=str(idx_dir))
    with pytest.raises(CheckpointError, match="does not fit network"):
        evaluate(checkpoint=str(tutorial), model="mlp", model_kwargs={"num_classes": 5})


@pytest.mark.parametrize("accelerator", ["bogus", "tpu"])
def test_evaluate_bad_accelerator_is_a_usage_error(run, idx_dir: Path, accelerator: str) -> None:
    from toolkit.train import _trainer

    with pytest.raises(UsageError, match="bad Trainer option"):
        _trainer(None, 1, 0, {"accelerator": accelerator})
    with pytest.raises(UsageError, match=f"bad --accelerator '{accelerator}'"):
        evaluate(
            checkpoint=str(Path(run.run_dir) / "model.ckpt"),
            data_dir=str(idx_dir),
            accelerator=accelerator,
        )


def test_evaluate_checks_the_network_against_the_data(tmp_path: Path, idx_dir: Path) -> None:
    from toolkit.models import build_model

    torch.save(build_model("mlp", num_features=100).state_dict(), tmp_path / "small.pt")
    with pytest.raises(UsageError, match=r"shape \(1, 10, 10\), but fashion-mnist"):
        evaluate(
            weights=str(tmp_path / "small.pt"),
            model="mlp",
            model_kwargs={"num_features": 100},
            data_dir=str(idx_dir),
        )


@pytest.mark.parametrize("fails", [False, True])
def test_train_puts_back_the_process_state_it_changes(
    idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    """Deterministic mode (NaN-filling every new tensor), Lightning's seed variables and the
    seeded generators stayed set in the caller's process after train returned or raised."""
    import os
    import random
    from contextlib import nullcontext

    import numpy as np

    from toolkit import train as train_module

    for name in train_module._TRAINING_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PL_SEED_WORKERS", "caller's")
    torch.use_deterministic_algorithms(False)
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    if fails:

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("written badly")

        monkeypatch.setattr(train_module, "_save_weights", broken)
    options = {"accelerator": "cpu", "devices": 1, "limit_train_batches": 2}
    with pytest.raises(RuntimeError, match="written badly") if fails else nullcontext():
        train_module.train(
            data_dir=str(idx_dir), max_epochs=1, output_dir=str(tmp_path), trainer=options
        )
    assert not torch.are_deterministic_algorithms_enabled()
    assert os.environ.get("PL_SEED_WORKERS") == "caller's"
    assert "PL_GLOBAL_SEED" not in os.environ and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_model_kwargs_that_cannot_be_recorded_are_refused_before_training(
    idx_dir: Path, tmp_path: Path
) -> None:
    """numpy numbers trained to the end, then failed writing run.json, and nothing was saved."""
    import numpy as np

    from toolkit.errors import UsageError
    from toolkit.train import train

    with pytest.raises(UsageError, match=r"model_kwargs must be JSON values .*int64"):
        train(
            data_dir=str(idx_dir),
            max_epochs=1,
            output_dir=str(tmp_path / "runs"),
            model_kwargs={"num_classes": np.int64(10)},
        )
    assert not (tmp_path / "runs").exists()


def test_trusted_pickle_of_a_class_that_cannot_be_imported_says_so(tmp_path: Path) -> None:
    # Once "is not a readable torch file (No module named 'tut')": the file was fine.
    import subprocess
    import sys

    from toolkit.reload import read_torch_file

    code = tmp_path / "code"
    code.mkdir()
    (code / "tut_net.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(2, 2)\n"
    )
    saved = tmp_path / "whole_model.pt"
    subprocess.run(
        [sys.executable, "-c", f"import torch, tut_net; torch.save(tut_net.Net(), {str(saved)!r})"],
        cwd=code,
        check=True,
    )
    with pytest.raises(CheckpointError, match=r"class cannot be imported here \(No module named"):
        read_torch_file(saved, trust_pickled_file=True)


def test_a_dangling_link_under_the_default_name_is_skipped(tmp_path: Path, idx_dir: Path) -> None:
    """The name check saw no folder (Path.exists follows the link), the publish did: the
    retry loop for a name taken meanwhile spun for ever."""
    (tmp_path / "mlp-fashion-mnist").symlink_to(tmp_path / "nowhere")
    result = train(
        data_dir=str(idx_dir),
        max_epochs=1,
        output_dir=str(tmp_path),
        trainer={"limit_train_batches": 2, "limit_val_batches": 1},
    )
    assert Path(result.run_dir).name == "mlp-fashion-mnist-v2"
    assert (tmp_path / "mlp-fashion-mnist").is_symlink()


def _plain_and_grouped(
    tmp_path: Path, idx_dir: Path, max_epochs: int, trainer: dict[str, Any]
) -> dict[int, Any]:
    """The same run with one batch per Lightning step and with groups of 4, in run folders
    ``k1`` and ``k4``."""
    return {
        k: train(
            data_dir=str(idx_dir),
            max_epochs=max_epochs,
            output_dir=str(tmp_path),
            run_name=f"k{k}",
            batches_per_step=k,
            trainer=trainer,
        )
        for k in (1, 4)
    }


def test_batches_per_step_trains_the_same_weights_to_the_bit(tmp_path: Path, idx_dir: Path) -> None:
    # 6 batches per epoch: groups of 4 and 2. The same Adam steps on the same batches.
    # step rows inside the second group and epoch
    results = _plain_and_grouped(tmp_path, idx_dir, 2, {"log_every_n_steps": 5})
    plain, grouped = (results[k].model.state_dict() for k in (1, 4))
    assert plain.keys() == grouped.keys()
    assert all(torch.equal(plain[key], grouped[key]) for key in plain)
    assert results[1].steps_run == results[4].steps_run == 12
    info = {k: json.loads((tmp_path / f"k{k}" / "run.json").read_text()) for k in (1, 4)}
    assert (info[1]["batches_per_step"], info[4]["batches_per_step"]) == (1, 4)
    for key in ("train_acc", "val_acc", "test_acc", "epochs_run", "steps_run"):
        assert info[1][key] == info[4][key], key
    # the logs are the same: step rows at the same steps with the same losses, epoch and
    # validation rows at the same steps
    for name in ("metrics.csv", "epochs.csv"):
        assert (tmp_path / "k1" / name).read_text() == (tmp_path / "k4" / name).read_text()
    assert "train_loss_step" in (tmp_path / "k4" / "metrics.csv").read_text()


def test_grouped_batches_are_the_plain_batches_in_order() -> None:
    from torch.utils.data import BatchSampler, RandomSampler

    from toolkit.data import BatchGroup, GroupedBatchSampler, group_collate

    data = range(30)
    plain = list(BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(3)),
                              4, drop_last=True))  # fmt: skip
    grouped = GroupedBatchSampler(
        RandomSampler(data, generator=torch.Generator().manual_seed(3)), 4, True, 3
    )
    groups = list(grouped)
    assert [len(g) for g in groups] == [12, 12, 4] and len(grouped) == 3  # 7 batches
    assert [i for g in groups for i in g] == [i for b in plain for i in b]
    images, labels = torch.arange(12.0).view(12, 1), torch.arange(12)
    batches = group_collate((images, labels), batch_size=4)
    assert isinstance(batches, BatchGroup) and len(batches) == 3
    assert all(torch.equal(y, torch.arange(4 * i, 4 * i + 4)) for i, (_, y) in enumerate(batches))


def test_a_grouped_runs_checkpoint_resumes_its_step_count(tmp_path: Path, idx_dir: Path) -> None:
    # The run trains with manual optimization; the checkpoint reloads as an automatic one.
    import lightning as L

    from toolkit.data import MNISTDataModule

    result = train(
        data_dir=str(idx_dir), max_epochs=2, output_dir=str(tmp_path), batches_per_step=3
    )
    checkpoint = Path(result.run_dir) / "model.ckpt"
    model = LightningModel.load_from_checkpoint(checkpoint, weights_only=False)
    assert model.automatic_optimization
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, MNISTDataModule(str(idx_dir)), ckpt_path=str(checkpoint))
    assert trainer.global_step == 18  # 12 before, 6 in the third epoch


@pytest.mark.parametrize("max_steps", [5, 9])
def test_max_steps_inside_a_group_logs_and_validates_as_a_plain_run(
    tmp_path: Path, idx_dir: Path, max_steps: int
) -> None:
    # 6 batches per epoch, groups of 4 and 2: step 5 ends inside the epoch's last group
    # (Lightning validated after it, a plain run does not), step 9 inside a first group.
    trainer = {"max_steps": max_steps, "limit_val_batches": 1}
    results = _plain_and_grouped(tmp_path, idx_dir, 3, trainer)
    assert results[1].steps_run == results[4].steps_run == max_steps
    assert results[1].epochs_run == results[4].epochs_run
    plain, grouped = (results[k].model.state_dict() for k in (1, 4))
    assert all(torch.equal(plain[key], grouped[key]) for key in plain)
    epochs = [(tmp_path / f"k{k}" / "epochs.csv").read_text() for k in (1, 4)]
    assert epochs[0] == epochs[1]


def test_a_plain_runs_checkpoint_resumes_its_step_count_in_groups(
    tmp_path: Path, idx_dir: Path
) -> None:
    import lightning as L

    from toolkit.data import MNISTDataModule

    result = train(data_dir=str(idx_dir), max_epochs=2, output_dir=str(tmp_path))
    checkpoint = Path(result.run_dir) / "model.ckpt"
    model = LightningModel.load_from_checkpoint(checkpoint, weights_only=False)
    model.automatic_optimization = False
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    data = MNISTDataModule(str(idx_dir), batches_per_step=4)
    trainer.fit(model, data, ckpt_path=str(checkpoint))
    assert trainer.global_step == 18  # 12 before, 6 in the third epoch


def test_manual_optimization_of_plain_batches_trains_as_automatic(idx_dir: Path) -> None:
    # It silently trained nothing: no optimizer step was taken.
    import lightning as L

    from toolkit.data import MNISTDataModule

    weights = []
    for automatic in (True, False):
        L.seed_everything(42, verbose=False)
        model = LightningModel(network="mlp")
        model.automatic_optimization = automatic
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, deterministic=True,
                            enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False, limit_val_batches=0)  # fmt: skip
        trainer.fit(model, MNISTDataModule(str(idx_dir)))
        assert trainer.global_step == 6
        weights.append(model.model.state_dict())
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_grouped_batches_need_manual_optimization(idx_dir: Path) -> None:
    from toolkit.data import BatchGroup

    model = LightningModel(network="mlp")
    group = BatchGroup([(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))])
    with pytest.raises(UsageError, match="needs manual optimization"):
        model.training_step(group, 0)


def test_default_batches_per_step_is_chosen_from_the_settings(
    tmp_path: Path, idx_dir: Path
) -> None:
    from lightning.pytorch.callbacks import (
        Callback,
        EarlyStopping,
        GradientAccumulationScheduler,
        LearningRateMonitor,
        ModelSummary,
    )

    from toolkit.train import AUTO_BATCHES_PER_STEP, ThrottledProgressBar, choose_batches_per_step

    assert AUTO_BATCHES_PER_STEP > 1
    assert choose_batches_per_step(None) == AUTO_BATCHES_PER_STEP
    assert choose_batches_per_step({"max_steps": 5, "log_every_n_steps": 7}) > 1
    for quiet in (EarlyStopping(monitor="val_loss"), ThrottledProgressBar(), ModelSummary()):
        assert choose_batches_per_step({"callbacks": [quiet]}) == AUTO_BATCHES_PER_STEP

    class EpochEnd(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None: ...

    class ZeroGrad(Callback):  # manual optimization does not call on_before_zero_grad
        def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None: ...

    assert choose_batches_per_step({"callbacks": [EpochEnd()]}) == AUTO_BATCHES_PER_STEP
    for options in (
        {"limit_train_batches": 2},
        {"val_check_interval": 0.5},
        {"accumulate_grad_batches": 2},
        {"max_time": "00:00:01:00"},  # Lightning's Timer checks it after each step
        {"callbacks": [LearningRateMonitor()]},  # on_train_batch_start
        {"callbacks": ModelCheckpoint()},  # on_train_batch_end
        {"callbacks": [ZeroGrad()]},
        {"callbacks": [StochasticWeightAveraging(swa_lrs=0.01)]},  # automatic only
        {"callbacks": [GradientAccumulationScheduler({1: 2})]},
    ):
        assert choose_batches_per_step(options) == 1, options
    chosen = train(data_dir=str(idx_dir), max_epochs=1, output_dir=str(tmp_path), run_name="a")
    plain = train(data_dir=str(idx_dir), max_epochs=1, output_dir=str(tmp_path), run_name="b",
                  trainer={"limit_train_batches": 1.0, "accumulate_grad_batches": 1,
                           "callbacks": [LearningRateMonitor()]})  # fmt: skip
    assert (chosen.batches_per_step, plain.batches_per_step) == (AUTO_BATCHES_PER_STEP, 1)
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["batches_per_step"] == AUTO_BATCHES_PER_STEP
    weights = [r.model.state_dict() for r in (chosen, plain)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_step_losses_reach_callbacks_with_groups(tmp_path: Path, idx_dir: Path) -> None:
    # Written straight to the loggers they were missing from callback_metrics: an
    # EarlyStopping on train_loss_step stopped the run with an error.
    from lightning.pytorch.callbacks import EarlyStopping

    stop = EarlyStopping(monitor="train_loss_step", check_on_train_epoch_end=True)
    result = train(data_dir=str(idx_dir), max_epochs=2, output_dir=str(tmp_path),
                   trainer={"log_every_n_steps": 1, "callbacks": [stop]})  # fmt: skip
    assert result.batches_per_step > 1 and result.steps_run == 12
