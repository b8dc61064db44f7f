"""Untrusted files, write failures and killed processes (train and reload paths)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import assert_one_line_error

from toolkit.errors import CheckpointError, OutputError, UnsafeFileError
from toolkit.reload import load_lightning_model, load_network, read_safetensors, read_torch_file


class _RunsCode:
    """Unpickling this object runs a shell command (the attack being refused)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_file(path: Path, marker: Path, trained_run: Path) -> Path:
    checkpoint = torch.load(trained_run / "model.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["payload"] = _RunsCode(marker)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, trained_run: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    bad = _malicious_file(tmp_path / f"evil{suffix}", marker, trained_run)
    with pytest.raises(UnsafeFileError, match="could run code"):
        load_network(bad)
    with pytest.raises(UnsafeFileError, match="could run code"):  # verify's lightning row
        load_lightning_model(bad)
    assert not marker.exists()
    flag = "--checkpoint" if suffix == ".ckpt" else "--weights"
    proc = run_cli("evaluate", flag, str(bad))
    assert_one_line_error(proc, 1, "refusing to load", "--trust_pickled_file")
    assert "system)" in proc.stderr and "add_safe_globals" not in proc.stderr  # names it
    assert not marker.exists()


def test_trust_option_is_explicit(tmp_path: Path, trained_run: Path) -> None:
    marker = tmp_path / "ran"
    bad = _malicious_file(tmp_path / "evil.ckpt", marker, trained_run)
    read_torch_file(bad, trust_pickled_file=True)  # the user said they trust it
    assert marker.exists()


def test_trust_covers_the_named_file_only(tmp_path: Path, trained_run: Path) -> None:
    """verify also reloads the run's other weight files; trusting model.ckpt once extended
    to a planted model.pt beside it, and to any path run.json's ``files`` named."""
    from toolkit.parity import reload_sources, verify

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "model.ckpt", run / "model.ckpt")
    info = json.loads((trained_run / "run.json").read_text())
    info["files"] = {"checkpoint": "model.ckpt", "state_dict": "model.pt",
                     "safetensors": "../elsewhere/evil.safetensors"}  # fmt: skip
    (run / "run.json").write_text(json.dumps(info))
    marker = tmp_path / "pwned"
    planted = torch.load(trained_run / "model.pt", weights_only=True)
    planted["payload"] = _RunsCode(marker)
    torch.save(planted, run / "model.pt")
    assert set(reload_sources(run / "model.ckpt")) == {"checkpoint", "state_dict"}
    (tmp_path / "exports").mkdir()
    report = verify(run / "model.ckpt", tmp_path / "exports", limit=8, trust_pickled_file=True)
    rows = {row.name: row for row in report.rows}
    assert not marker.exists()
    assert "--trust_pickled_file covers only the --checkpoint file" in rows["reload:model.pt"].error
    assert rows["reload:model.ckpt"].status == "PASS"


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        (b"[1, 2]", "does not record its network"),  # not an object: ignored, with a note
        (b"\xff\xfe", "does not record its network"),  # not UTF-8: ignored, with a note
        (b'{"network": "mlp", "network_kwargs": "abc"}', "network_kwargs that are not JSON"),
        (b'{"network": 5}', "network name that is not text"),
        (b'{"network": "mlp", "network_kwargs": {"num_features": -5}}', "bad arguments for"),
    ],
)
def test_malformed_run_json_is_one_clear_line(
    tmp_path: Path, trained_run: Path, sidecar: bytes, message: str
) -> None:
    shutil.copy(trained_run / "model.pt", tmp_path / "model.pt")
    (tmp_path / "run.json").write_bytes(sidecar)
    proc = run_cli("evaluate", "--checkpoint", str(tmp_path / "model.pt"))
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
    ignored = {b"[1, 2]": "not a JSON object", b"\xff\xfe": "not UTF-8 text"}.get(sidecar)
    if ignored:  # the note says why the file's network was not used, then the error
        note, *rest = proc.stderr.splitlines()
        assert note == f"note: ignoring {tmp_path / 'run.json'}: {ignored}", proc.stderr
        proc.stderr = "\n".join(rest)
    assert_one_line_error(proc, proc.returncode, message)


def test_a_run_json_that_is_not_used_is_noted_once(tmp_path: Path, capsys: Any) -> None:
    """An unreadable run.json used to be ignored without a word: evaluate then scored on
    the default data set and seed. One note per file, however often it is read."""
    from toolkit.reload import read_json_object

    (tmp_path / "run.json").write_text('{"dataset": "mnist",')  # truncated
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "folder.json").mkdir()
    for _ in range(2):
        for name in ("run.json", "list.json", "folder.json", "missing.json"):
            assert read_json_object(tmp_path / name) == {}
    assert capsys.readouterr().err.splitlines() == [
        f"note: ignoring {tmp_path / 'run.json'}: not JSON",
        f"note: ignoring {tmp_path / 'list.json'}: not a JSON object",
        f"note: ignoring {tmp_path / 'folder.json'}: Is a directory",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(hyper_parameters=[1]), "hyper_parameters that are not a mapping"),
        (lambda c: c["state_dict"].update(extra=3), "values are not all tensors"),
        (lambda c: c["hyper_parameters"].update(network_kwargs="abc"), "are not JSON"),
        (lambda c: c["hyper_parameters"].update(network_kwargs=[1, 2]), "not an object: "),
        (lambda c: c["hyper_parameters"].update(network=5), "network name that is not text"),
    ],
)
def test_checkpoint_with_wrong_contents_is_one_clear_line(
    tmp_path: Path, trained_run: Path, change: Any, message: str
) -> None:
    from toolkit.reload import load_lightning_model

    checkpoint = torch.load(trained_run / "model.ckpt", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match=message):
        load_network(tmp_path / "odd.ckpt", "mlp")
    # evaluate and verify reload through LightningModel: once AttributeError/TypeError
    with pytest.raises(CheckpointError, match=message):
        load_lightning_model(tmp_path / "odd.ckpt")


def test_an_exported_artifact_given_as_weights_is_named_as_such(
    trained_run: Path, tmp_path: Path
) -> None:
    """Once "not a readable torch file (corrupt or truncated)" for a good model.onnx, and
    torch's TorchScript warning plus advice to unpickle for a TorchScript model.pt."""
    from toolkit.export import export_model

    net = load_network(trained_run / "model.ckpt")
    formats = ["onnx", "torchscript", "exported-program"]
    export_model(net, torch.rand(2, 1, 28, 28), formats, tmp_path / "exports")
    kinds = {"onnx": "ONNX", "torchscript": "TorchScript", "exported-program": "ExportedProgram"}
    for fmt, kind in kinds.items():
        (artifact,) = [
            p for p in (tmp_path / "exports" / fmt).iterdir() if p.name != "manifest.json"
        ]
        proc = run_cli("evaluate", "--checkpoint", str(artifact))
        assert_one_line_error(proc, 1, f"is an exported {kind} artifact, not weights")
    for name in ("model.ckpt", "model.pt"):  # real weights are not mistaken for artifacts
        read_torch_file(trained_run / name)


def test_an_unreadable_weights_file_is_named_as_such(
    tmp_path: Path, trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors reported a file it may not read as "No such file or directory"."""
    target = tmp_path / "model.safetensors"
    shutil.copy(trained_run / "model.safetensors", target)
    real_open = Path.open

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == target:  # as for a mode-000 file when not root
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(CheckpointError, match=f"cannot read {target}: Permission denied"):
        read_safetensors(target)


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.safetensors"])
@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_damaged_weight_files(tmp_path: Path, trained_run: Path, name: str, damage: str) -> None:
    original = (trained_run / name).read_bytes()
    data = {
        "random": random.Random(name).randbytes(len(original)),  # fixed: same bytes every run
        "truncated": original[: len(original) // 2],
        "empty": b"",
    }[damage]
    path = tmp_path / name
    path.write_bytes(data)
    # a checkpoint records its network; --model is for weights files only
    args = ["--checkpoint", str(path)] if name.endswith(".ckpt") else ["--weights", str(path)]
    proc = run_cli("evaluate", *args, *([] if name.endswith(".ckpt") else ["--model", "mlp"]))
    assert proc.returncode == 1, proc.stderr
    assert_one_line_error(proc, 1, str(path))


@st.composite
def _damaged(draw: st.DrawFn, original: bytes) -> bytes:
    """Random bytes, a truncation, or a few overwritten bytes of a real file."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "legacy-header"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "truncated":
        return original[: draw(st.integers(0, len(original) - 1))]
    if kind == "legacy-header":
        # What random bytes once produced in CI: bytes that torch's legacy (non-zip) reader
        # hands to its weights-only unpickler, which then fails with an IndexError.
        return b"\x80\x02" + draw(st.binary(max_size=256))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.safetensors"])
def test_damaged_weight_files_raise_only_checkpoint_errors(
    tmp_path: Path, trained_run: Path, name: str
) -> None:
    """Fuzz the readers: damage gives a CheckpointError (or loads), never another exception."""
    original = (trained_run / name).read_bytes()
    reader = read_safetensors if name.endswith(".safetensors") else read_torch_file

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,  # the same cases on every CI run
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=_damaged(original))
    def check(data: bytes) -> None:
        path = tmp_path / name
        path.write_bytes(data)
        with contextlib.suppress(CheckpointError, UnsafeFileError):
            reader(path)

    check()


def _as_unprivileged(cmd: list[str]) -> list[str]:
    """Root ignores permission bits, so drop to 'nobody' for the permission check."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop privileges")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]


def test_output_folder_not_writable(idx_dir: Path) -> None:
    # pytest's tmp_path lives under a 0700 folder that "nobody" cannot enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="toolkit-perm-"))
    tmp_path.chmod(0o755)
    try:
        _check_not_writable(tmp_path, idx_dir)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _check_not_writable(tmp_path: Path, idx_dir: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    tmp_path.chmod(0o755)
    data = tmp_path / "data"
    shutil.copytree(idx_dir, data)
    for p in [data, *data.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    cmd = _as_unprivileged(
        [
            sys.executable,
            "-m",
            "toolkit",
            "train",
            "--data_dir",
            str(data),
            "--output_dir",
            str(locked / "runs"),
            "--max_epochs",
            "1",
        ]
    )
    env = {
        **os.environ,
        "TOOLKIT_CACHE": str(tmp_path / "cache"),
        "HOME": str(tmp_path / "cache"),
        "MPLCONFIGDIR": str(tmp_path / "cache"),
    }
    (tmp_path / "cache").mkdir(mode=0o777)
    (tmp_path / "cache").chmod(0o777)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert_one_line_error(proc, 1, "cannot write", "permission denied")
    assert list(locked.iterdir()) == []


def test_output_path_under_a_file(tmp_path: Path, idx_dir: Path) -> None:
    (tmp_path / "file").write_text("x")
    proc = run_cli(
        "train", "--data_dir", str(idx_dir), "--output_dir", str(tmp_path / "file" / "runs")
    )
    assert_one_line_error(proc, 1, "cannot write")


def test_writable_dir_removes_only_the_empty_folders_it_made(tmp_path: Path) -> None:
    from toolkit.atomic import writable_dir

    with pytest.raises(RuntimeError), writable_dir(tmp_path / "a" / "b" / "c"):
        raise RuntimeError("late failure")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError), writable_dir(tmp_path / "a" / "b") as folder:
        (folder.parent / "kept").write_text("x")  # something else wrote beside it
        raise RuntimeError("late failure")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["kept"]
    with writable_dir(tmp_path / "a" / "b") as folder:
        pass  # success keeps the folder
    assert folder.is_dir()


def test_check_writable_dir_creates_nothing(tmp_path: Path) -> None:
    from toolkit.atomic import check_writable_dir

    assert check_writable_dir(tmp_path / "x" / "y") == tmp_path / "x" / "y"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        check_writable_dir(tmp_path / "file" / "y")


def test_late_training_error_leaves_no_new_output_folder(tmp_path: Path, idx_dir: Path) -> None:
    proc = run_cli(
        "train", "--data_dir", str(idx_dir), "--output_dir", str(tmp_path / "new" / "runs"),
        "--trainer.accelerator", "tpu",
    )  # fmt: skip
    assert_one_line_error(proc, 2, "bad Trainer option")
    assert not (tmp_path / "new").exists()


def test_disk_full_while_writing_weights(
    tmp_path: Path, idx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import toolkit.train as train_module

    kwargs = {
        "data_dir": str(idx_dir),
        "max_epochs": 1,
        "output_dir": str(tmp_path),
        "run_name": "r",
        "trainer": {"limit_train_batches": 2, "limit_val_batches": 1},
    }
    first = train_module.train(**kwargs)
    before = {p.name: p.read_bytes() for p in Path(first.run_dir).iterdir()}

    real_save = torch.save

    def full_disk(obj, target, *args, **kw):  # writes part of the file, then the disk is full
        if not isinstance(target, str | Path):
            return real_save(obj, target, *args, **kw)  # Lightning's in-memory buffers
        Path(target).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_module.torch, "save", full_disk)
    with pytest.raises(OutputError, match="no space left"):
        train_module.train(**{**kwargs, "overwrite": True})
    after = {p.name: p.read_bytes() for p in Path(first.run_dir).iterdir()}
    assert after == before  # the earlier run is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no partial leftovers


def test_a_full_disk_while_writing_a_report_set_names_the_output_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolkit import atomic

    (tmp_path / "bench.json").write_text("OLD")

    def full_disk(fd: int) -> None:  # the data do not fit when they are flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with (
        pytest.raises(OutputError, match=f"cannot write {tmp_path}: no space left"),
        atomic.atomic_paths([tmp_path / "bench.json", tmp_path / "bench.md"]) as temps,
    ):
        for temp in temps:
            atomic.write_plain(temp, "NEW")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no partials
    assert (tmp_path / "bench.json").read_text() == "OLD"
    with (
        pytest.raises(OutputError, match=r"cannot write .*bench\.json: "),
        atomic.atomic_paths([tmp_path / "bench.json"]) as (temp,),
    ):
        raise OSError(errno.EACCES, "Permission denied", str(temp))  # names its temporary


def test_killed_training_leaves_nothing_partial(tmp_path: Path, idx_dir: Path) -> None:
    out = tmp_path / "runs"
    train = ["train", "--data_dir", str(idx_dir), "--output_dir", str(out), "--run_name", "r"]
    short = ["--max_epochs", "1", "--trainer.limit_val_batches", "1"]
    ok = run_cli(*train, *short)
    assert ok.returncode == 0, ok.stderr
    before = (out / "r" / "model.pt").read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", *train, "--overwrite", "--max_epochs", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob(".r.*.partial/metrics.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(out.glob(".r.*.partial")), "training never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out / "r" / "model.pt").read_bytes() == before  # earlier run intact
    rerun = run_cli(*train, "--overwrite", *short)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == ["r"]  # the killed run's leftovers are gone


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_bench_keeps_the_old_report(tmp_path: Path, trained_run: Path, signum: int) -> None:
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.json").write_text("OLD REPORT")
    (tmp_path / "no-exports").mkdir()  # an exports folder without artifacts
    args = [
        "bench",
        "--checkpoint",
        str(trained_run / "model.ckpt"),
        "--exports",
        str(tmp_path / "no-exports"),
        "--output_dir",
        str(out),
        "--runtimes",
        "eager",
        "--batch_sizes",
        "[1]",
        "--rounds",
        "1",
        "--warmup_time",
        "0.01",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit", *args, "--min_time", "60", "--max_time", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # kill once timing has started
        if line.startswith("bench:"):
            break
    proc.send_signal(signum)
    proc.wait(timeout=30)
    if signum == signal.SIGTERM:  # once caught as a failing eager row: exit 0, report replaced
        assert proc.returncode == 143
        assert [ln for ln in proc.stderr.read().splitlines() if ln][-1] == "toolkit: terminated"
    assert (out / "bench.json").read_text() == "OLD REPORT"
    assert sorted(p.name for p in out.iterdir()) == ["bench.json"]
    rerun = run_cli(*args, "--min_time", "0.05", "--min_calls", "10")
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "bench.json").read_text().startswith("{")
    assert not list(out.glob(".*"))


def test_onnx_with_another_input_shape_fails_clearly(
    tmp_path: Path, trained_run: Path, idx_dir: Path
) -> None:
    from toolkit.export import export_model
    from toolkit.models import build_model

    other = build_model("mlp", num_features=100)  # the run's network takes 1x28x28
    export_model(other, torch.rand(2, 1, 10, 10), ["onnx"], tmp_path / "exports")
    args = ["--checkpoint", str(trained_run / "model.ckpt"), "--exports", str(tmp_path / "exports")]
    for command in ("verify", "bench"):  # the manifest says: other weights; refused at once
        proc = run_cli(command, *args)
        assert_one_line_error(proc, 2, "were exported from other weights (an unrecorded file)")
    # A manifest from before weights_sha256 existed: the input shape is what tells.
    manifest = tmp_path / "exports" / "onnx" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["weights_sha256"]
    manifest.write_text(json.dumps(data))
    proc = run_cli(
        "verify",
        "--checkpoint",
        str(trained_run / "model.ckpt"),
        "--exports",
        str(tmp_path / "exports"),
        "--data_dir",
        str(idx_dir),
    )
    assert proc.returncode == 1
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("toolkit: error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert "does not match the model's (batch, 1, 10, 10)" in error[0]
    bench = run_cli(
        "bench",
        "--checkpoint",
        str(trained_run / "model.ckpt"),
        "--exports",
        str(tmp_path / "exports"),
        "--output_dir",
        str(tmp_path / "bench"),
        "--batch_sizes",
        "[1]",
        "--min_time",
        "0.02",
        "--min_calls",
        "5",
        "--rounds",
        "1",
        "--runtimes",
        "eager,onnxruntime",
    )
    # onnxruntime was asked for and nothing could run it: exit 1, after the reports
    assert bench.returncode == 1 and "Traceback" not in bench.stderr, bench.stderr
    assert bench.stderr.splitlines()[-1].startswith(
        "toolkit: error: --runtimes asked for what was not measured: onnxruntime: "
        "artifact input shape (batch, 1, 10, 10) differs"
    )
    skipped = json.loads((tmp_path / "bench" / "bench.json").read_text())["skipped"]
    assert any(
        "artifact input shape (batch, 1, 10, 10) differs from the network's (batch, 1, 28, 28)"
        in entry["reason"]
        for entry in skipped
    )


@pytest.fixture(scope="module")
def small_exports(tmp_path_factory: pytest.TempPathFactory, trained_run: Path) -> Path:
    from toolkit.export import export_model
    from toolkit.reload import load_network

    out = tmp_path_factory.mktemp("exports")
    export_model(
        load_network(trained_run / "model.ckpt"),
        None,
        ["onnx", "exported-program", "torchscript"],
        out,
        exporter="legacy",
    )
    return out


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_damaged_artifacts_fail_their_rows(
    tmp_path: Path, trained_run: Path, idx_dir: Path, small_exports: Path, damage: str
) -> None:
    from toolkit.manifest import Manifest, sha256_file

    exports = tmp_path / "exports"
    shutil.copytree(small_exports, exports)
    for fmt in ("onnx", "exported-program", "torchscript"):
        manifest = Manifest.load(exports / fmt)
        path = exports / fmt / manifest.model_file
        data = path.read_bytes()
        rng = random.Random(fmt)  # fixed bytes, so every CI run tries the same damage
        path.write_bytes(rng.randbytes(len(data)) if damage == "random" else data[: len(data) // 2])
        manifest.files[0].sha256, manifest.files[0].size = sha256_file(path), path.stat().st_size
        manifest.save(exports / fmt)  # past the hash check: the loaders must cope
    proc = run_cli(
        "verify",
        "--checkpoint",
        str(trained_run / "model.ckpt"),
        "--exports",
        str(exports),
        "--data_dir",
        str(idx_dir),
        "--limit",
        "50",
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("toolkit: error:")]
    assert len(error) == 1
    for row in ("onnx", "exported-program", "torchscript"):  # every failing row is named
        assert re.search(rf"(: |, ){re.escape(row)}( \(|,|;)", error[0]), (row, error[0])


def test_paths_that_are_not_utf8_are_refused_before_anything_runs(
    tmp_path: Path, trained_run: Path
) -> None:
    """Linux allows such names, torch and onnx do not: export --format all once aborted the
    interpreter inside torch.export's C++ writer (exit 134), and the ONNX checker and the
    markdown reports raised tracebacks."""
    odd = os.fsdecode(b"odd\xff")
    checkpoint = str(trained_run / "model.ckpt")
    proc = run_cli("export", "--checkpoint", checkpoint, "--output_dir", str(tmp_path / odd))
    assert_one_line_error(proc, 2, "--output_dir is not valid UTF-8", "odd\\xff")
    proc = run_cli("train", "--output_dir", str(tmp_path / "runs"), "--run_name", odd)
    assert_one_line_error(proc, 2, "--run_name is not valid UTF-8 (odd\\xff)")
    # A relative path inside a folder whose own name is not UTF-8 is no better.
    (tmp_path / odd).mkdir()
    proc = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", cwd=tmp_path / odd)
    assert_one_line_error(proc, 1, "cannot write", "odd\\xff", "the path is not valid UTF-8")
    assert [p.name for p in tmp_path.iterdir()] == [odd]
    assert list((tmp_path / odd).iterdir()) == []
