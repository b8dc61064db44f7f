"""The CLI as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from toolkit.errors import TerminatedError


def assert_one_line_error(proc, code: int, *fragments: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("toolkit: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def _train_args(idx_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data_dir",
        str(idx_dir),
        "--max_epochs",
        "1",
        "--output_dir",
        str(out),
        "--trainer.accelerator",
        "cpu",
        "--trainer.limit_val_batches",
        "1",
        *extra,
    ]


def test_train_then_evaluate(tmp_path: Path, idx_dir: Path) -> None:
    proc = run_cli(*_train_args(idx_dir, tmp_path, "--run_name", "cli"))
    assert proc.returncode == 0, proc.stderr
    assert "transfer_batch_to_device" not in proc.stderr  # toolkit's own hook: no warning
    assert "GPU available" in proc.stderr and "litlogger" not in proc.stderr  # no advert
    info = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert info["data_dir"] == str(idx_dir.resolve())
    # without --data_dir, evaluate scores the data the run was trained on (run.json)
    proc = run_cli("evaluate", "--checkpoint", str(tmp_path / "cli" / "model.ckpt"))
    assert proc.returncode == 0, proc.stderr
    assert f"Test Acc {info['test_acc'] * 100:.2f}%" in proc.stdout.splitlines()[-1]
    assert "litlogger" not in proc.stderr
    bogus = ["--accelerator", "bogus", "--data_dir", str(idx_dir)]
    proc = run_cli("evaluate", "--checkpoint", str(tmp_path / "cli" / "model.ckpt"), *bogus)
    assert_one_line_error(proc, 2, "bad --accelerator 'bogus'", "invalid accelerator name")


def test_config_file_and_print_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: cnn\nmax_epochs: 3\ntrainer:\n  precision: bf16-mixed\n")
    proc = run_cli("train", "--config", str(config), "--print_config")
    assert proc.returncode == 0, proc.stderr
    assert "model: cnn" in proc.stdout and "max_epochs: 3" in proc.stdout
    assert "precision: bf16-mixed" in proc.stdout


def test_trainer_callback_from_the_command_line(tmp_path: Path, idx_dir: Path) -> None:
    """A callback given by class path is built and used: here a progress bar of the user's,
    which is shown although stderr is no terminal, and replaces toolkit's."""
    bar = ["--trainer.callbacks", "lightning.pytorch.callbacks.TQDMProgressBar"]
    proc = run_cli(*_train_args(idx_dir, tmp_path, *bar, "--trainer.callbacks.refresh_rate", "3"))
    assert proc.returncode == 0, proc.stderr
    drawn = set(re.findall(r"Epoch 0: +\d+%\|[^|]*\| (\d+)/6 ", proc.stdout))
    assert drawn == {"0", "3", "6"}  # 6 steps of 64 in the 440 training samples

    proc = run_cli(*_train_args(idx_dir, tmp_path, *bar, "--trainer.enable_progress_bar", "false"))
    assert_one_line_error(proc, 2, "enable_progress_bar=False", "TQDMProgressBar")
    bad = ["--trainer.callbacks", "lightning.pytorch.callbacks.EarlyStopping"]
    bad += ["--trainer.callbacks.monitor", "val_acc", "--trainer.callbacks.mode", "x"]
    proc = run_cli(*_train_args(idx_dir, tmp_path, *bad))
    assert_one_line_error(proc, 2, "`mode` can be min, max")
    assert [p.name for p in tmp_path.iterdir()] == ["mlp-fashion-mnist"]


def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    """The launching process hands the folders to the others; a ':' in them once broke it.

    121 test images do not split evenly over 2 processes: each must still be scored once.
    """
    from idx import write_idx_dataset

    odd = write_idx_dataset(tmp_path / "odd", n_test=121)
    out = tmp_path / "out:1"
    ddp = ["--run_name", "ddp:1", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    proc = run_cli(*_train_args(odd, out, *ddp))  # 3 batches of 64 per process
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "world_size: 2" in proc.stderr or "Initializing distributed: GLOBAL_RANK: 1" in proc.stderr
    )
    assert (out / "ddp:1" / "model.ckpt").is_file()
    info = json.loads((out / "ddp:1" / "run.json").read_text())
    assert info["run_dir"] == str(out / "ddp:1")
    assert info["batches_per_step"] == 1  # DDP takes one backward pass per forward
    assert sorted(p.name for p in out.iterdir()) == ["ddp:1"]
    # printed once, not once per process; no warnings about repeated samples or unsynced logs
    assert proc.stdout.count("run folder: ") == 1 and proc.stdout.count("Test Acc") == 1
    assert "replicates" not in proc.stderr and "sync_dist" not in proc.stderr
    # the same accuracy as one process scoring all 121 images
    single = run_cli("evaluate", "--checkpoint", str(out / "ddp:1" / "model.ckpt"))
    assert single.returncode == 0, single.stderr
    assert f"Test Acc {info['test_acc'] * 100:.2f}%" in single.stdout


def test_spawned_strategies_are_refused(idx_dir: Path, tmp_path: Path) -> None:
    """ddp_spawn published a run.json with 0 steps and accuracies of half the test split
    counted twice: the launching process's Trainer never sees the spawned fit."""
    spawn = ["--trainer.strategy", "ddp_spawn", "--trainer.devices", "2"]
    proc = run_cli(*_train_args(idx_dir, tmp_path, *spawn))
    assert_one_line_error(proc, 2, "ddp_spawn fits in spawned processes", "strategy ddp")
    assert list(tmp_path.iterdir()) == []


def test_an_error_is_printed_by_the_first_process_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under DDP every process runs the command: a bad option was printed once per process.
    The first process of each node prints, so an error met on one node only is seen."""
    from toolkit.cli import main

    args = ["train", "--model", "mlpx", "--output_dir", str(tmp_path)]
    for var in ("LOCAL_RANK", "SLURM_LOCALID", "JSM_NAMESPACE_LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)
    for env, shown in (
        ({"LOCAL_RANK": "1"}, False),  # Lightning's second DDP process, or torchrun's
        ({"SLURM_LOCALID": "3"}, False),
        ({"LOCAL_RANK": "0", "RANK": "2"}, True),  # the first process of a second node
        ({}, True),  # no launcher
    ):
        with monkeypatch.context() as patch:
            for var, value in env.items():
                patch.setenv(var, value)
            assert main(args) == 2
            err = capsys.readouterr().err
        assert err.startswith("toolkit: error: unknown model 'mlpx'") is shown, (env, err)


def test_unknown_model(tmp_path: Path) -> None:
    proc = run_cli("train", "--model", "mlpx", "--output_dir", str(tmp_path))
    assert_one_line_error(proc, 2, "unknown model 'mlpx'", "available: cnn, mlp")
    assert list(tmp_path.iterdir()) == []


def test_bad_option_value() -> None:
    assert_one_line_error(run_cli("train", "--max_epochs", "ten"), 2, "max_epochs")


def test_missing_data(tmp_path: Path) -> None:
    proc = run_cli(
        "train", "--data_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "out")
    )
    assert_one_line_error(proc, 1, "no FashionMNIST IDX files")
    assert not (tmp_path / "out").exists()


def test_truncated_data(tmp_path: Path, idx_dir: Path) -> None:
    import shutil

    shutil.copytree(idx_dir, tmp_path / "d")
    path = tmp_path / "d" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:999])
    proc = run_cli(
        "train", "--data_dir", str(tmp_path / "d"), "--output_dir", str(tmp_path / "out")
    )
    assert_one_line_error(proc, 1, "truncated", "t10k-images")


def test_ckpt_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "x.ckpt"
    bogus.write_bytes(random.Random(0).randbytes(2000))  # fixed bytes: the same case every run
    proc = run_cli("evaluate", "--checkpoint", str(bogus))
    assert_one_line_error(proc, 1, str(bogus), "not a readable torch file")


def test_state_dict_mismatch(tmp_path: Path) -> None:
    import torch

    from toolkit.models import build_model

    torch.save(build_model("cnn").state_dict(), tmp_path / "cnn.pt")
    proc = run_cli("evaluate", "--weights", str(tmp_path / "cnn.pt"), "--model", "mlp")
    assert_one_line_error(proc, 1, "missing keys: all_layers.1.weight", "unexpected keys:")


def test_debug_shows_traceback() -> None:
    proc = run_cli("train", "--model", "mlpx", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"]])
def test_help(argv: list[str]) -> None:
    proc = run_cli(*argv)
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_empty_run_name_with_overwrite_keeps_the_output_folder(tmp_path: Path) -> None:
    """It once renamed the whole output folder (every earlier run) away."""
    out = tmp_path / "runs"
    (out / "earlier").mkdir(parents=True)
    (out / "earlier" / "run.json").write_text("{}")
    proc = run_cli("train", "--output_dir", str(out), "--run_name", "", "--overwrite")
    assert_one_line_error(proc, 2, "--run_name must be a plain folder name", "got ''")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert [p.name for p in out.iterdir()] == ["earlier"]
    assert (out / "earlier" / "run.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [(signal.SIGINT, 130, "toolkit: interrupted"), (signal.SIGTERM, 143, "toolkit: terminated")],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_signal_while_training(
    tmp_path: Path, idx_dir: Path, signum: int, code: int, line: str, workers: int
) -> None:
    """Ctrl-C once exited 1 (Lightning's sys.exit) and SIGTERM 0; now 130 and 143, with the
    earlier run that --overwrite would replace left as it was.

    With DataLoader workers the signal goes to the whole process group, as a terminal's
    Ctrl-C or a job runner's stop does: the workers' death once replaced the stop with
    ``RuntimeError: DataLoader worker ... is killed by signal`` and a traceback (exit 1).
    """
    out = tmp_path / "runs"
    (out / "r").mkdir(parents=True)
    (out / "r" / "run.json").write_text("{}")
    args = ["train", "--data_dir", str(idx_dir), "--output_dir", str(out), "--run_name", "r"]
    args += ["--trainer.accelerator", "cpu", "--num_workers", str(workers)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", *args, "--overwrite", "--max_epochs", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=workers > 0,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".r.*.partial/metrics.csv")):  # an epoch has ended
            assert proc.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        if workers:
            time.sleep(0.2)  # well inside an epoch, with the workers serving batches
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert [ln for ln in stderr.splitlines() if ln.strip()][-1] == line
    assert "Traceback" not in stderr
    assert [p.name for p in out.iterdir()] == ["r"]  # no staging folder left
    assert [p.name for p in (out / "r").iterdir()] == ["run.json"]


def test_ctrl_c_while_reading_the_arguments(monkeypatch, capsys) -> None:
    """Once a KeyboardInterrupt traceback: the argument handling ran outside the try."""
    from toolkit import cli

    def ctrl_c(argv: list[str]) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_bool_flags", ctrl_c)
    try:
        code = cli.main(["train", "--overwrite"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert code == 130
    assert capsys.readouterr().err == "toolkit: interrupted\n"


def test_sigterm_while_reading_the_arguments(monkeypatch, capsys) -> None:
    from toolkit import cli

    class NotHandledError(Exception):
        pass

    def outer(signum: int, frame: object) -> None:
        raise NotHandledError

    def sigterm(argv: list[str]) -> list[str]:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at once; this is a fallback
        return argv

    previous = signal.signal(signal.SIGTERM, outer)
    try:
        monkeypatch.setattr(cli, "_bool_flags", sigterm)
        assert cli.main(["train"]) == 143
        assert signal.getsignal(signal.SIGTERM) is outer  # restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == "toolkit: terminated\n"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--seed", "-1"], "--seed must be 0 to 4294967295"),
        (["--max_epochs", "-1"], "--max_epochs -1 trains without end"),
        (["--trainer.val_check_interval", "100"], "bad Trainer option: `val_check_interval`"),
        (
            ["--trainer.callbacks", "lightning.pytorch.callbacks.EarlyStopping",
             "--trainer.callbacks.monitor", "foo"],
            "bad Trainer option: Early stopping conditioned on metric `foo`",
        ),
    ],
)  # fmt: skip
def test_settings_lightning_refuses_during_fit_are_one_line_errors(
    idx_dir: Path, tmp_path: Path, extra: list[str], fragment: str
) -> None:
    out = tmp_path / "runs"
    proc = run_cli(*_train_args(idx_dir, out, "--trainer.log_every_n_steps", "1", *extra))
    # Lightning's own device lines come first: the error is the last line, and the only one.
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("toolkit: ")]
    assert errors == [proc.stderr.strip().splitlines()[-1]] and fragment in errors[0]
    assert not out.exists()  # the output folder the run made is gone again


def test_train_prints_its_run_folder_and_accuracies(idx_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(*_train_args(idx_dir, tmp_path / "runs", "--run_name", "r"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"run folder: {tmp_path / 'runs' / 'r'}"
    accuracy = r"\d+\.\d\d%"
    line = f"Train Acc {accuracy} \\| Val Acc {accuracy} \\| Test Acc {accuracy}"
    assert re.fullmatch(line, lines[1])


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "verify", "bench"])
def test_every_option_has_help_text(command: str) -> None:
    """``--help`` shows each parameter's line from the ``Args:`` section of its docstring."""
    import inspect

    from toolkit.cli import COMMANDS, _function

    function = _function(COMMANDS[command])
    doc = inspect.getdoc(function) or ""
    args = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    for name in inspect.signature(function).parameters:
        assert re.search(rf"^\s+{name}:", args, re.MULTILINE), f"{command} --{name} has no help"


def test_train_help_states_the_default_learning_rates() -> None:
    from toolkit.train import DEFAULT_LEARNING_RATES, train

    for model, rate in DEFAULT_LEARNING_RATES.items():
        assert f"{model} {rate}" in (train.__doc__ or "")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--output_dir", ""],
        ["train", "--data_dir", " "],
        ["evaluate", "--checkpoint", ""],
        ["export", "--checkpoint", "x.ckpt", "--output_dir", ""],
        ["verify", "--checkpoint", "x.ckpt", "--exports", ""],
        ["bench", "--checkpoint", "x.ckpt", "--compare", ""],
    ],
)
def test_empty_paths_are_refused(argv: list[str], tmp_path: Path) -> None:
    proc = run_cli(*argv, cwd=tmp_path)
    assert_one_line_error(proc, 2, "must not be empty")
    assert list(tmp_path.iterdir()) == []


def test_a_leading_tilde_in_a_path_option_means_home(tmp_path: Path) -> None:
    # In a config file or after "--checkpoint=" no shell expands ~: it was taken literally.
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "cfg.yaml").write_text("checkpoint: ~/none.ckpt\n")
    for argv in (["--checkpoint=~/none.ckpt"], ["--config", "cfg.yaml"]):
        proc = run_cli("evaluate", *argv, cwd=work, env={"HOME": str(home)})
        assert_one_line_error(proc, 1, str(home / "none.ckpt"))
        assert "~" not in proc.stderr


def test_messages_name_what_is_wrong_with_a_path(tmp_path: Path) -> None:
    (tmp_path / "junk.ckpt").write_text("junk\n")
    (tmp_path / "file").write_text("x")
    cases = [
        (["evaluate", "--checkpoint", str(tmp_path)], 1, "is a folder; give the weights file"),
        (["export", "--checkpoint", str(tmp_path / "junk.ckpt")], 1, "not a readable torch file"),
        (["export"], 2, "required: --checkpoint (see toolkit export --help)"),
        (["verify", "--checkpoint", str(tmp_path / "gone.ckpt")], 1, "no such file: "),
        (["export", "--weights", "x.pt"], 2, "export takes every weights file (.ckpt, .pt or"),
        (["bench", "--weights=x.pt"], 2, "bench takes every weights file"),
        (["train", "--output_dir", str(tmp_path / "file")], 1, "it is a file, not a folder"),
    ]
    for argv, code, fragment in cases:
        assert_one_line_error(run_cli(*argv), code, fragment)
    assert (
        run_cli("export", "--checkpoint", str(tmp_path / "junk.ckpt"))
        .stderr.strip()
        .endswith("not a readable torch file")
    )  # no bare unpickler opcode after it


def test_train_help_says_which_trainer_defaults_toolkit_changes() -> None:
    from toolkit.train import _trainer

    proc = run_cli("train", "--help")
    text = " ".join(proc.stdout.split())
    assert "toolkit's defaults differ: deterministic true; enable_checkpointing false" in text
    trainer = _trainer(None, 1, 42, {"enable_progress_bar": False})  # what the text claims
    assert trainer.checkpoint_callback is None and trainer.logger is None
    assert torch.are_deterministic_algorithms_enabled()


def test_a_list_option_given_twice_is_refused(tmp_path: Path) -> None:
    cases = [
        (["export", "--checkpoint", "x.ckpt", "--format", "onnx", "--format=torchscript"],
         "--format was given more than once; list all values in one, e.g. --format onnx,"),
        (["bench", "--checkpoint", "x.ckpt", "--batch_sizes", "1", "--batch_sizes", "8"],
         "--batch_sizes was given more than once"),
        (["bench", "--checkpoint", "x.ckpt", "--runtimes", "eager", "--runtimes", "onnxruntime"],
         "--runtimes was given more than once"),
    ]  # fmt: skip
    for argv, fragment in cases:
        assert_one_line_error(run_cli(*argv, cwd=tmp_path), 2, fragment)
    assert list(tmp_path.iterdir()) == []


def test_list_options_have_no_append_form(tmp_path: Path) -> None:
    # jsonargparse's --name+ would append to the default: --batch_sizes+ 32 sweeps 1..256 too
    for argv, fragment in [
        (["bench", "--checkpoint", "x.ckpt", "--batch_sizes+", "32"],
         "--batch_sizes+ is not an option: --batch_sizes takes all its values in one"),
        (["export", "--checkpoint", "x.ckpt", "--format+=onnx"],
         "--format+ is not an option: --format takes all its values in one"),
    ]:  # fmt: skip
        assert_one_line_error(run_cli(*argv, cwd=tmp_path), 2, fragment)
    for command, name in [("bench", "batch_sizes"), ("bench", "runtimes"), ("export", "format")]:
        assert f"--{name}+" not in run_cli(command, "--help").stdout
    assert list(tmp_path.iterdir()) == []


def test_config_files_of_the_wrong_kind_are_one_line_errors(tmp_path: Path) -> None:
    binary = tmp_path / "model.ckpt.yaml"
    binary.write_bytes(b"PK\x03\x04\x80\x81\xfe\xff" * 8)  # once a UnicodeDecodeError
    assert_one_line_error(run_cli("evaluate", "--config", str(binary), cwd=tmp_path), 2,
                          "--config must name a YAML or JSON text file")  # fmt: skip
    scalar = tmp_path / "train.yaml"
    scalar.write_text("trainer: 5\n")  # once an AttributeError
    proc = run_cli("train", "--config", str(scalar), cwd=tmp_path)
    assert_one_line_error(proc, 2, "trainer must be a mapping of lightning.Trainer options")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt.yaml", "train.yaml"]


def test_version() -> None:
    from importlib import metadata

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"toolkit {metadata.version('toolkit')}"


def test_exports_given_as_a_file(trained_run: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"x")
    for command in ("verify", "bench"):
        proc = run_cli(command, "--checkpoint", str(trained_run / "model.ckpt"),
                       "--exports", str(artifact))  # fmt: skip
        assert_one_line_error(proc, 2, f"--exports {artifact} is a file; give the folder")


def test_export_and_bench_start_without_lightning(trained_run: Path, tmp_path: Path) -> None:
    # `import lightning` costs seconds of start-up; only train and evaluate need it.
    script = (
        "import sys; from toolkit.cli import main; code = main(sys.argv[1:]); "
        "print('lightning' in sys.modules); sys.exit(code)"
    )
    checkpoint = str(trained_run / "model.ckpt")
    exports = str(tmp_path / "exports")
    for argv in (
        ["export", "--checkpoint", checkpoint, "--format", "torchscript", "--output_dir", exports],
        ["bench", "--checkpoint", checkpoint, "--exports", exports, "--runtimes", "eager",
         "--batch_sizes", "1", "--rounds", "1", "--min_time", "0.01",
         "--output_dir", str(tmp_path / "bench")],
    ):  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == "False", f"{argv[0]} imported lightning"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("code", [0, 1])
@pytest.mark.parametrize("when", ["atexit", "teardown"])
def test_a_signal_after_the_command_ended_keeps_its_exit_status(
    signum: int, code: int, when: str
) -> None:
    """A finished (published) run once exited 130 or 143, or was killed by the signal, when
    Ctrl-C or SIGTERM came while Python shut down (about a second with torch loaded; Python
    restores the default handlers before it tears modules down), as if it had been stopped;
    now it exits with its own code."""
    signal_now = f"(os.kill(os.getpid(), {int(signum)}), time.sleep(5))"
    late = {
        "atexit": f"atexit.register(lambda: {signal_now})\n",
        # An object that a module still holds is finalized in the module teardown.
        "teardown": f"class Late:\n    def __del__(self):\n        {signal_now}\nlate = Late()\n",
    }[when]
    script = (
        "import atexit, os, sys, time\n"
        "from toolkit import cli\n"
        f"cli.main = lambda: (print('done'), {code})[1]\n"
        f"{late}"
        "cli.entry_point()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "done\n" and proc.stderr == ""


@pytest.mark.parametrize("publishes", [True, False])
def test_a_sigterm_that_a_library_swallowed_still_stops_the_command(
    tmp_path: Path, monkeypatch, capsys, publishes: bool
) -> None:
    """bench once published its report and exited 0 when SIGTERM's exception was lost
    inside torch.compile; the stop is now also recorded, and checked before publishing."""
    import toolkit.bench
    from toolkit import cli
    from toolkit.atomic import write_json

    def swallowing_bench(**kwargs: object) -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at once; this is a fallback
        except BaseException:  # what a library's "except BaseException: pass" does
            pass
        if publishes:
            write_json(tmp_path / "bench.json", {"rows": []})

    monkeypatch.setattr(toolkit.bench, "bench_command", swallowing_bench)
    assert cli.main(["bench"]) == 143
    assert capsys.readouterr().err == "toolkit: terminated\n"
    assert list(tmp_path.iterdir()) == []  # nothing published, no temporary file left
    assert cli.main(["bench"]) == 143  # the flag is per command
    from toolkit.errors import raise_if_stopped

    raise_if_stopped()  # forgotten once main returned


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_that_cannot_be_written_at_exit_is_an_error() -> None:
    """Leaving with os._exit once dropped a buffered result that a full disk refused, and
    exited 0; Python's own exit says so and exits 120."""
    script = (
        "from toolkit import cli\ncli.main = lambda: (print('result'), 0)[1]\ncli.entry_point()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-c", script], stdout=full, stderr=subprocess.PIPE, text=True,
            env=env, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 120
    assert proc.stderr.strip().splitlines() == [
        "toolkit: error: cannot write the output: [Errno 28] No space left on device"
    ]


def test_train_batches_per_step_option(tmp_path: Path, idx_dir: Path) -> None:
    proc = run_cli(*_train_args(idx_dir, tmp_path, "--run_name", "g", "--batches_per_step", "4"))
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "g" / "run.json").read_text())
    assert (info["batches_per_step"], info["steps_run"]) == (4, 6)
    proc = run_cli(*_train_args(idx_dir, tmp_path, "--batches_per_step", "0"))
    assert_one_line_error(proc, 2, "--batches_per_step must be at least 1, got 0")


@pytest.mark.parametrize(
    ("stop", "code", "line"),
    [("sigterm", 143, "toolkit: terminated"), ("ctrl-c", 130, "toolkit: interrupted")],
)
def test_an_error_raised_while_a_stop_is_handled_still_stops(
    monkeypatch, capsys, stop: str, code: int, line: str
) -> None:
    """Seen in CI: SIGTERM to the process group killed the DataLoader workers, and torch's
    SIGCHLD handler raised "DataLoader worker ... is killed by signal" inside the code that
    was turning the stop into exit 143: exit 1 and a traceback."""
    from toolkit import cli

    def stopped_then_worker_error(argv: list[str]) -> list[str]:
        try:
            if stop == "sigterm":
                cli._raise_terminated(signal.SIGTERM, None)
            raise KeyboardInterrupt
        except (TerminatedError, KeyboardInterrupt):
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal")  # noqa: B904

    previous = signal.getsignal(signal.SIGCHLD)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # as torch's handler would be
    monkeypatch.setattr(cli, "_bool_flags", stopped_then_worker_error)
    try:
        assert cli.main(["train"]) == code
        # the stop handler quiets worker-death reports for the rest of the clean-up
        assert (signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL) == (stop == "sigterm")
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert capsys.readouterr().err == line + "\n"


def test_other_errors_are_not_taken_for_stops(monkeypatch) -> None:
    from toolkit import cli

    def fails(argv: list[str]) -> list[str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_bool_flags", fails)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train"])
