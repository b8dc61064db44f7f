"""Export: every registered format, manifests, atomic outputs, pre-export checks, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import requires_cuda, run_cli
from torch import nn

from toolkit.atomic import clean_stale_partials, publish_dir
from toolkit.errors import (
    CheckpointError,
    ExportError,
    IntegrityError,
    OutputError,
    OutputExistsError,
    UnknownNameError,
    UsageError,
)
from toolkit.export import export_command, export_model, onnx_opset_range, resolve_formats
from toolkit.formats import FORMATS
from toolkit.manifest import MANIFEST_NAME, Manifest, sha256_file, weights_sha256
from toolkit.models import build_model
from toolkit.reload import load_network

BATCHES = (1, 7)

# How each format's artifact is loaded by its own library alone (no toolkit import).
# A new format must add its loader here: test_every_format_has_a_test fails otherwise.
PLAIN_LOADERS = {
    "torchscript": (
        "import torch\nm = torch.jit.load(path)\n"
        "run = lambda x: m(torch.from_numpy(x)).detach().numpy()"
    ),
    "exported-program": (
        "import torch\nm = torch.export.load(path).module()\n"
        "run = lambda x: m(torch.from_numpy(x)).detach().numpy()"
    ),
    "onnx": (
        "import onnxruntime as ort\n"
        "s = ort.InferenceSession(path, providers=['CPUExecutionProvider'])\n"
        "run = lambda x: s.run(None, {'input': x})[0]"
    ),
}
PLAIN_LOADERS["onnx-fp16"] = PLAIN_LOADERS["onnx-int8"] = PLAIN_LOADERS["onnx"]

PLAIN_SCRIPT = """
import sys
import lightning as L
import numpy as np
folder, jobs = sys.argv[1], sys.argv[2:]
for fmt, path in zip(jobs[::2], jobs[1::2]):
    namespace = {{"path": path}}
    exec(LOADERS[fmt], namespace)
    for b in {batches}:
        out = namespace["run"](np.load(f"{{folder}}/in{{b}}.npy"))
        np.save(f"{{folder}}/{{fmt}}-out{{b}}.npy", np.asarray(out, dtype=np.float32))
assert not any(m == "toolkit" or m.startswith("toolkit.") for m in sys.modules), "toolkit imported"
"""


def inputs(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed + batch))


def eager(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


def assert_close(fmt: str, got: np.ndarray, want: np.ndarray) -> None:
    cls = FORMATS.get(fmt)
    np.testing.assert_allclose(got, want, atol=cls.atol, rtol=cls.rtol)
    if not cls.judged_by_labels:
        assert (got.argmax(1) == want.argmax(1)).all()


def run_without_toolkit(artifacts: dict[str, Path], tmp_path: Path) -> dict[str, dict]:
    """Outputs at each batch size of each artifact, loaded by its library in a subprocess."""
    for b in BATCHES:
        np.save(tmp_path / f"in{b}.npy", inputs(b).numpy())
    script = f"LOADERS = {PLAIN_LOADERS!r}\n" + PLAIN_SCRIPT.format(batches=BATCHES)
    jobs = [str(item) for fmt, path in artifacts.items() for item in (fmt, path)]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *jobs],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: toolkit is not importable from the cwd
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return {fmt: {b: np.load(tmp_path / f"{fmt}-out{b}.npy") for b in BATCHES} for fmt in artifacts}


def run_onnx(path: Path) -> dict[int, np.ndarray]:
    """Outputs at each batch size from a plain onnxruntime session (in this process)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {b: session.run(None, {"input": inputs(b).numpy()})[0] for b in BATCHES}


@pytest.fixture(scope="module")
def mlp_exports(
    tmp_path_factory: pytest.TempPathFactory, trained_run: Path
) -> tuple[Path, dict[str, Manifest], nn.Module]:
    """The trained tiny mlp exported to every format with the defaults (dynamo)."""
    checkpoint = trained_run / "model.ckpt"
    network = load_network(checkpoint)
    out = tmp_path_factory.mktemp("exports") / "tiny"
    manifests = export_model(network, None, "all", out, source_checkpoint=checkpoint, network="mlp")
    return out, manifests, network


@pytest.fixture(scope="module")
def plain_outputs(mlp_exports: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every mlp artifact's outputs, computed without toolkit (one subprocess for all)."""
    out, manifests, _ = mlp_exports
    artifacts = {fmt: out / fmt / m.model_file for fmt, m in manifests.items()}
    return run_without_toolkit(artifacts, tmp_path_factory.mktemp("plain"))


def test_every_format_has_a_test() -> None:
    assert set(FORMATS.names()) == set(PLAIN_LOADERS), "add the new format to PLAIN_LOADERS"


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_artifact_matches_eager_without_toolkit(
    fmt: str, mlp_exports: tuple, plain_outputs: dict
) -> None:
    network = mlp_exports[2]
    for b in BATCHES:
        assert plain_outputs[fmt][b].shape == (b, 10)
        assert_close(fmt, plain_outputs[fmt][b], eager(network, inputs(b)))


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_manifest_describes_the_artifact(fmt: str, mlp_exports: tuple, trained_run: Path) -> None:
    out, manifests, network = mlp_exports
    folder = out / fmt
    manifest = Manifest.load(folder)
    assert manifest == manifests[fmt]
    assert manifest.format == fmt and manifest.runtime == FORMATS.get(fmt).runtime
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest.json", *(f.name for f in manifest.files)]
    )
    for entry in manifest.files:
        assert entry.sha256 == sha256_file(folder / entry.name)
        assert entry.size == (folder / entry.name).stat().st_size
    manifest.verify_files(folder)
    assert manifest.model_file.endswith(FORMATS.get(fmt).suffix)
    assert manifest.input_shape == ["batch", 1, 28, 28]
    assert (manifest.input_name, manifest.input_dtype) == ("input", "float32")
    assert manifest.output_names == ["logits"]
    assert manifest.network == "mlp"
    assert manifest.source_checkpoint == str(trained_run / "model.ckpt")
    assert manifest.source_sha256 == sha256_file(trained_run / "model.ckpt")
    # what verify and bench match artifacts to checkpoints by
    assert manifest.weights_sha256 == weights_sha256(network)
    assert manifest.export_seconds > 0
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest.versions)
    if fmt.startswith("onnx"):
        import onnx

        proto = onnx.load(str(folder / manifest.model_file))
        assert manifest.ir_version == proto.ir_version
        assert manifest.opset == next(o.version for o in proto.opset_import if o.domain == "")
        assert "dynamo" in manifest.exporter
    else:
        assert manifest.opset is None and manifest.ir_version is None
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "leftover temporary files"


def test_reduced_precision_formats_hold_reduced_precision_weights(mlp_exports: tuple) -> None:
    """An fp32 copy passes fp16's and int8's label-judged tolerances, so the tolerances
    alone cannot tell that the conversion happened: the files must show it."""
    import onnx

    out, manifests, _ = mlp_exports
    fp32, fp16, int8 = (
        onnx.load(str(out / fmt / manifests[fmt].model_file)).graph
        for fmt in ("onnx", "onnx-fp16", "onnx-int8")
    )
    for graph, dtype in ((fp32, onnx.TensorProto.FLOAT), (fp16, onnx.TensorProto.FLOAT16)):
        matrices = [i for i in graph.initializer if len(i.dims) == 2]  # the Linear weights
        assert len(matrices) == 3 and {i.data_type for i in matrices} == {dtype}
    for graph in (fp16, int8):  # float32 at the boundary
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert onnx.TensorProto.INT8 in {i.data_type for i in int8.initializer}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & {n.op_type for n in int8.node}
    from toolkit.formats.onnx import onnx_precision

    for fmt in ("onnx", "onnx-fp16", "onnx-int8"):  # what verify and bench check on load
        assert onnx_precision(out / fmt / manifests[fmt].model_file) == FORMATS.get(fmt).kind


def test_the_source_checkpoint_is_recorded_as_an_absolute_path(
    trained_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """A relative --checkpoint was stored as typed, so messages naming it (exported from
    other weights: ...) pointed elsewhere when read from another folder."""
    monkeypatch.chdir(trained_run.parent)
    relative = Path(trained_run.name) / "model.ckpt"
    network = load_network(relative)
    manifest = export_model(network, None, "torchscript", tmp_path, source_checkpoint=relative)
    assert manifest["torchscript"].source_checkpoint == str(trained_run / "model.ckpt")


def test_torchscript_is_marked_legacy(mlp_exports: tuple) -> None:
    notes = " ".join(mlp_exports[1]["torchscript"].notes)
    assert "legacy" in notes and "traced" in notes


def test_legacy_exporter_and_opset(tmp_path: Path) -> None:
    model = build_model("mlp")
    manifest = export_model(
        model, inputs(3), "onnx", tmp_path, exporter="legacy", opset=17, network="mlp"
    )["onnx"]
    assert manifest.exporter == "torch.onnx.export (legacy)" and manifest.opset == 17
    outputs = run_onnx(tmp_path / "onnx" / "model.onnx")
    for b in BATCHES:
        assert_close("onnx", outputs[b], eager(model, inputs(b)))


@pytest.mark.parametrize(
    ("exporter", "fmt"),
    [("legacy", "onnx"), ("dynamo", "onnx"), ("legacy", "onnx-int8"), ("legacy", "onnx-fp16")],
)
def test_opset_range_ends_round_trip_and_beyond_is_refused(
    exporter: str, fmt: str, tmp_path: Path
) -> None:
    """Both ends of the range export as asked and run in onnxruntime; one step out is refused."""
    model = build_model("mlp")
    low, high = onnx_opset_range(exporter, fmt)
    assert low <= high
    for opset in (low, high):
        out = tmp_path / str(opset)
        manifest = export_model(model, inputs(3), fmt, out, exporter=exporter, opset=opset)[fmt]
        assert manifest.opset == opset
        if fmt == "onnx-fp16":  # below opset 9 the weights stayed float32 (graph inputs)
            import onnx

            graph = onnx.load(str(out / fmt / "model.onnx")).graph
            assert {i.data_type for i in graph.initializer} == {onnx.TensorProto.FLOAT16}
        outputs = run_onnx(out / fmt / "model.onnx")
        for b in BATCHES:
            assert_close(fmt, outputs[b], eager(model, inputs(b)))
    for opset in (low - 1, high + 1, -1):
        with pytest.raises(UsageError, match=f"opset {opset} is out of range for {fmt} with the "):
            export_model(model, inputs(3), fmt, tmp_path / "out", exporter=exporter, opset=opset)
    assert not (tmp_path / "out").exists()


def test_opset_ranges_of_the_installed_exporters() -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    assert onnx_opset_range("legacy")[0] >= 7, "opsets below 7 do not run in onnxruntime"
    assert onnx_opset_range("legacy")[1] <= min(20, newest)
    assert onnx_opset_range("dynamo") == (18, newest)
    assert onnx_opset_range("legacy", "onnx-int8")[0] == 11
    assert onnx_opset_range("legacy", "onnx-fp16")[0] == 9
    with pytest.raises(UsageError, match="unknown exporter 'jit'"):
        onnx_opset_range("jit")


def test_onnx_options_without_an_onnx_format_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="opset must be a whole number, got '17'"):
        export_model(build_model("mlp"), None, "onnx", tmp_path, opset="17")
    for options, what in (({"opset": 17}, "--opset"), ({"exporter": "legacy"}, "--exporter")):
        with pytest.raises(UsageError, match=f"{what} applies to the ONNX formats"):
            export_model(build_model("mlp"), None, "torchscript", tmp_path, **options)
    with pytest.raises(UsageError, match="--script applies to the torchscript format"):
        export_model(build_model("mlp"), None, "onnx", tmp_path, script=True)
    assert list(tmp_path.iterdir()) == []
    manifest = export_model(build_model("mlp"), None, "all", tmp_path, opset=18, script=True)
    assert manifest["torchscript"].opset is None and manifest["onnx"].opset == 18


def test_export_command_takes_model_kwargs(tmp_path: Path) -> None:
    from toolkit.models import PyTorchMLP

    torch.save(PyTorchMLP(784, 5).state_dict(), tmp_path / "five.pt")
    args = (str(tmp_path / "five.pt"), "torchscript", str(tmp_path / "out"))
    with pytest.raises(CheckpointError, match="mis-shaped"):
        export_command(*args, model="mlp")
    manifest = export_command(*args, model="mlp", model_kwargs={"num_classes": 5})
    assert manifest["torchscript"].network_kwargs == {"num_classes": 5}


def test_export_writing_another_opset_than_asked_fails(tmp_path: Path, monkeypatch) -> None:
    original = FORMATS.get("onnx").export

    def other_opset(self, *args, **kwargs):
        manifest = original(self, *args, **kwargs)
        manifest.opset = 18
        return manifest

    monkeypatch.setattr(FORMATS.get("onnx"), "export", other_opset)
    with pytest.raises(ExportError, match="wrote ONNX opset 18, not the 17 asked for"):
        export_model(build_model("mlp"), None, "onnx", tmp_path, exporter="legacy", opset=17)
    assert list(tmp_path.iterdir()) == []


def test_export_model_refuses_unknown_options_and_a_missing_source_file(
    tmp_path: Path,
) -> None:
    # A misspelled opset_version=13 was ignored (the manifest said opset 20), and a missing
    # source_checkpoint was a FileNotFoundError after the module was put in eval mode.
    model = build_model("mlp")
    with pytest.raises(UsageError, match=r"unknown export option\(s\) opset_version, scirpt; "):
        export_model(model, None, "onnx", tmp_path / "a", opset_version=13, scirpt=True)
    with pytest.raises(CheckpointError, match=r"no such file: .*nope\.ckpt"):
        export_model(model, None, "onnx", tmp_path / "b", source_checkpoint=tmp_path / "nope.ckpt")
    assert list(tmp_path.iterdir()) == []
    assert model.training  # refused before the module was touched


def test_warnings_of_a_failed_export_are_not_shown(tmp_path: Path, monkeypatch) -> None:
    def noisy(self, model, example_input, out_dir, fail: bool = False, **options):
        warnings.warn("exporter noise", UserWarning, stacklevel=1)
        if fail:
            raise ExportError("exporter crashed")
        return original(self, model, example_input, out_dir, **options)

    original = FORMATS.get("torchscript").export
    monkeypatch.setattr(FORMATS.get("torchscript"), "export", noisy)
    monkeypatch.setattr(FORMATS.get("torchscript"), "extra_options", ("fail",), raising=False)
    model = build_model("mlp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ExportError, match="crashed"):
            export_model(model, None, "torchscript", tmp_path / "failed", fail=True)
    assert not [w for w in caught if "exporter noise" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_model(model, None, "torchscript", tmp_path / "ok")
    assert [w for w in caught if "exporter noise" in str(w.message)], "success keeps warnings"


def test_unknown_exporter_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown exporter 'jit'; available: dynamo, legacy"):
        export_model(build_model("mlp"), None, "onnx", tmp_path, exporter="jit")
    assert not (tmp_path / "onnx").exists()


def test_external_data_file_is_listed_and_loads(tmp_path: Path) -> None:
    model = build_model("mlp")
    manifest = export_model(model, None, "onnx", tmp_path, exporter="legacy", external_data=True)[
        "onnx"
    ]
    roles = {f.name: f.role for f in manifest.files}
    assert roles == {"model.onnx": "model", "model.onnx.data": "external-data"}
    assert (tmp_path / "onnx" / "model.onnx").stat().st_size < 10_000  # weights are outside
    outputs = run_onnx(tmp_path / "onnx" / "model.onnx")
    assert_close("onnx", outputs[7], eager(model, inputs(7)))


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path: Path) -> None:
    model = build_model("mlp")
    export_model(model, None, "torchscript", tmp_path)
    artifact = tmp_path / "torchscript" / "model.pt"
    before = sha256_file(artifact)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_model(model, None, ["onnx", "torchscript"], tmp_path, script=True)
    assert sha256_file(artifact) == before
    assert not (tmp_path / "onnx").exists(), "nothing is exported when one output exists"
    manifest = export_model(model, None, "torchscript", tmp_path, overwrite=True, script=True)
    assert manifest["torchscript"].exporter == "torch.jit.script"
    assert sha256_file(artifact) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torchscript"]


def test_failed_overwrite_keeps_the_old_artifact(tmp_path: Path, monkeypatch) -> None:
    model = build_model("mlp")
    export_model(model, None, "torchscript", tmp_path)
    before = sha256_file(tmp_path / "torchscript" / "model.pt")

    def broken(self, model, example_input, out_dir, **options):
        (out_dir / "model.pt").write_bytes(b"half")
        raise ExportError("exporter crashed")

    monkeypatch.setattr(FORMATS.get("torchscript"), "export", broken)
    with pytest.raises(ExportError, match="crashed"):
        export_model(model, None, "torchscript", tmp_path, overwrite=True)
    assert sha256_file(tmp_path / "torchscript" / "model.pt") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torchscript"]


def test_failed_export_removes_the_folders_it_created(tmp_path: Path, monkeypatch) -> None:
    def broken(self, model, example_input, out_dir, **options):
        raise ExportError("exporter crashed")

    monkeypatch.setattr(FORMATS.get("torchscript"), "export", broken)
    with pytest.raises(ExportError, match="crashed"):
        export_model(build_model("mlp"), None, "torchscript", tmp_path / "new" / "exports")
    assert list(tmp_path.iterdir()) == []


def test_killed_export_leaves_no_partial_folder(tmp_path: Path) -> None:
    model = build_model("mlp")
    export_model(model, None, "torchscript", tmp_path)
    before = sha256_file(tmp_path / "torchscript" / "model.pt")
    script = f"""
import os, signal
from toolkit.export import export_model
from toolkit.formats import FORMATS
from toolkit.models import build_model

def killed(self, model, example_input, out_dir, **options):
    (out_dir / "model.pt").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)

for name in ("torchscript", "onnx"):
    FORMATS.get(name).export = killed
export_model(build_model("mlp"), None, ["onnx", "torchscript"], {str(tmp_path)!r}, overwrite=True)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[-1] == "torchscript" and all(n.endswith(".partial") for n in names[:-1])
    assert sha256_file(tmp_path / "torchscript" / "model.pt") == before
    export_model(model, None, "torchscript", tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torchscript"], "stale partials stay"


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) → its sha256."""
    return {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def two_exports(tmp_path: Path) -> Path:
    """``tmp_path/out`` with a torchscript and an onnx (legacy) export of the mlp."""
    out = tmp_path / "out"
    export_model(build_model("mlp"), None, ["torchscript", "onnx"], out, exporter="legacy")
    return out


def test_failed_format_leaves_every_output_as_it_was(two_exports: Path, monkeypatch) -> None:
    before = _snapshot(two_exports)

    def broken(self, model, example_input, out_dir, **options):
        (out_dir / "model.onnx").write_bytes(b"half")
        raise ExportError("exporter crashed")

    monkeypatch.setattr(FORMATS.get("onnx"), "export", broken)
    model = build_model("mlp")
    with pytest.raises(ExportError, match="crashed"):
        export_model(model, None, ["torchscript", "onnx"], two_exports, overwrite=True, script=True)
    assert _snapshot(two_exports) == before, "torchscript was replaced before onnx failed"
    fresh = two_exports.parent / "fresh"
    with pytest.raises(ExportError, match="crashed"):
        export_model(model, None, ["torchscript", "onnx"], fresh)
    assert not fresh.exists(), "a format was published although another failed"


def test_failed_publish_puts_every_output_back(two_exports: Path, monkeypatch) -> None:
    before = _snapshot(two_exports)
    rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(".onnx.") and Path(src).name.endswith(".partial"):
            raise OSError(28, "No space left on device")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OutputError, match="no space left"):
        export_model(build_model("mlp"), None, ["torchscript", "onnx"], two_exports, overwrite=True)
    monkeypatch.undo()
    assert _snapshot(two_exports) == before


@pytest.mark.parametrize("kind", ["file", "folder", "symlink", "dangling symlink"])
def test_publish_replaces_any_output_without_leftovers(kind: str, tmp_path: Path) -> None:
    out, target = tmp_path / "out", tmp_path / "target"
    out.mkdir()
    target.mkdir()
    (target / "keep.txt").write_text("not ours")
    final = out / "onnx"
    if kind == "file":
        final.write_text("a file")
    elif kind == "folder":
        final.mkdir()
        (final / "old.onnx").write_text("old")
    else:
        final.symlink_to(target if kind == "symlink" else tmp_path / "missing")
    staging = out / f".onnx.{os.getpid()}.partial"
    staging.mkdir()
    (staging / "model.onnx").write_text("new")
    with pytest.raises(OutputExistsError):
        publish_dir(staging, final, overwrite=False)
    publish_dir(staging, final, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["onnx"], "a .old or .partial was left"
    assert not final.is_symlink() and (final / "model.onnx").read_text() == "new"
    assert (target / "keep.txt").read_text() == "not ours", "a symlink's target was touched"


def test_publish_killed_between_renames_is_finished_by_the_next_run(two_exports: Path) -> None:
    before = _snapshot(two_exports)
    script = f"""
import os, signal
from pathlib import Path
from toolkit.export import export_model
from toolkit.models import build_model

rename = os.rename
def killing_rename(src, dst):  # dies right after the first staged folder is placed
    rename(src, dst)
    if Path(src).name.endswith(".partial"):
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = killing_rename
export_model(build_model("mlp"), None, ["torchscript", "onnx"], {str(two_exports)!r},
             overwrite=True, exporter="legacy", script=True)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    journals = list(two_exports.glob(".publish.*.journal"))
    assert len(journals) == 1 and (two_exports / "torchscript").is_dir()
    assert not (two_exports / "onnx").exists()  # moved aside as .old, the new one staged
    removed = clean_stale_partials(two_exports)
    assert journals[0] in removed
    assert sorted(p.name for p in two_exports.iterdir()) == ["onnx", "torchscript"]
    after = _snapshot(two_exports)
    assert Manifest.load(two_exports / "torchscript").exporter == "torch.jit.script"
    # Both outputs are the new ones: the same source network and export call, not a mix.
    assert after["onnx/manifest.json"] != before["onnx/manifest.json"]
    assert after["torchscript/model.pt"] != before["torchscript/model.pt"]


def test_torn_publish_journal_restores_the_old_outputs(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    (tmp_path / f".publish.{dead}.journal").write_text('["onnx", "torch')  # died mid-write
    (tmp_path / f".onnx.{dead}.old").mkdir()  # cannot happen after a torn journal, but
    (tmp_path / f".onnx.{dead}.partial").mkdir()  # the staged folder must not be placed
    clean_stale_partials(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


# -- pre-export checks ---------------------------------------------------------------------
class StuckInTraining(nn.Module):
    """A module whose train() override ignores mode=False: eval() does not reach Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Dropout(0.5))

    def train(self, mode: bool = True) -> StuckInTraining:
        return super().train(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class RandomForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.fc(x.flatten(1)), 0.5, training=True)


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 784))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_eval_mode_is_set_and_reported(tmp_path: Path, capsys) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Dropout(0.5)).train()
    manifest = export_model(model, inputs(4), "torchscript", tmp_path)["torchscript"]
    assert "export: put Sequential in eval mode for export" in capsys.readouterr().err
    assert all(m.training for m in model.modules())  # the caller's modes are back
    assert manifest.input_shape == ["batch", 1, 28, 28]
    loaded = torch.jit.load(str(tmp_path / "torchscript" / "model.pt"))
    # the artifact was exported in eval mode: no Dropout
    np.testing.assert_allclose(eager(loaded, inputs(7)), eager(model, inputs(7)), atol=1e-5)


def test_mixed_training_modes_are_restored_after_export(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Dropout(0.5), nn.ReLU())
    model.train()
    model[1].eval()
    export_model(model, inputs(4), "torchscript", tmp_path)
    assert [m.training for m in model.modules()] == [True, True, False, True, True]


def test_training_modes_are_restored_after_a_failed_export(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), FixedBatch()).train()
    with pytest.raises(ExportError):
        export_model(model, inputs(4), "torchscript", tmp_path)
    assert all(m.training for m in model.modules())


def test_module_left_in_training_mode_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"still in training mode after eval\(\).*Dropout"):
        export_model(StuckInTraining(), inputs(2), "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_random_forward_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="different outputs for the same input"):
        export_model(RandomForward(), inputs(2), "torchscript", tmp_path)


@pytest.mark.parametrize(
    ("head", "problem"),
    [
        (nn.Linear(784, 1), r"single score per sample \(shape \(2, 1\)\)"),
        (nn.Sequential(nn.Linear(784, 1), nn.Flatten(0)), r"shape \(2,\) for a batch of 2"),
    ],
)
def test_output_that_is_not_class_scores_is_an_error(
    head: nn.Module, problem: str, tmp_path: Path
) -> None:
    # A single column once passed fp16/int8 parity with all-zero outputs: every argmax is 0.
    with pytest.raises(ExportError, match=problem):
        export_model(nn.Sequential(nn.Flatten(), head), inputs(2), "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


class InPlaceScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x /= 255  # changes its input, as some preprocessing does
        return self.fc(x.flatten(1))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_forward_changing_its_input_exports_and_leaves_the_callers_tensor(tmp_path: Path) -> None:
    # Once refused as "random" (the second check call saw the first one's division), and
    # the caller's tensor came back divided.
    example = inputs(4) * 255
    kept = example.clone()
    export_model(InPlaceScale(), example, "torchscript", tmp_path)
    assert torch.equal(example, kept)


def test_example_not_matching_the_declared_input_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"shape \(4, 784\) does not match PyTorchMLP's input_"):
        export_model(build_model("mlp"), torch.rand(4, 784), "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


class CountingCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x.flatten(1))


def test_weights_are_hashed_before_any_forward_call(tmp_path: Path) -> None:
    model = CountingCalls()
    before = weights_sha256(model)
    manifest = export_model(model, inputs(2), "exported-program", tmp_path)["exported-program"]
    assert manifest.weights_sha256 == before  # the weights the caller saved, not a mid-check state


class NetAsAttribute(L.LightningModule):
    """A LightningModule that keeps its layers under another name than ``.model``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        self.example_input_array = torch.rand(2, 1, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_lightning_module_without_model_attribute_traces_to_torchscript(tmp_path: Path) -> None:
    # Tracing read LightningModule.trainer, which raised "not attached to a Trainer".
    module = NetAsAttribute()
    export_model(module, None, "torchscript", tmp_path)
    loaded = torch.jit.load(str(tmp_path / "torchscript" / "model.pt"))
    np.testing.assert_allclose(eager(loaded, inputs(3)), eager(module, inputs(3)), atol=1e-6)
    assert "_jit_is_scripting" not in vars(module)


class ScaledHead(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).log_softmax(1)


def test_lightning_forward_other_than_its_network_is_reported(tmp_path: Path, capsys) -> None:
    export_model(ScaledHead(), inputs(2), "exported-program", tmp_path / "a")
    assert (
        "export: note: ScaledHead.forward gives other outputs than its network Sequential; "
        "only Sequential is exported" in capsys.readouterr().err
    )
    from toolkit.module import LightningModel

    export_model(LightningModel(network="mlp"), None, "exported-program", tmp_path / "b")
    assert "note:" not in capsys.readouterr().err  # its forward is its network's


def test_batchnorm_using_batch_statistics_is_an_error(tmp_path: Path) -> None:
    model = nn.Sequential(nn.BatchNorm2d(1, track_running_stats=False), nn.Flatten())
    with pytest.raises(ExportError, match="track_running_stats=False"):
        export_model(model, inputs(2), "torchscript", tmp_path)


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_batch_dependent_model_is_an_error(fmt: str, tmp_path: Path) -> None:
    with pytest.raises(ExportError):
        export_model(FixedBatch(), inputs(2), fmt, tmp_path)
    assert not (tmp_path / fmt).exists()


def test_missing_example_input_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no example input"):
        export_model(nn.Sequential(nn.Linear(4, 2)), None, "onnx", tmp_path)


def test_example_batch_of_one_is_widened(tmp_path: Path, capsys) -> None:
    model = build_model("mlp")
    seen: list[int] = []  # the batch sizes the exporter traced the network with
    model.register_forward_pre_hook(lambda _module, args: seen.append(int(args[0].shape[0])))
    export_model(model, inputs(1), "onnx", tmp_path, exporter="legacy")
    assert "example batch of 1 repeated to 2" in capsys.readouterr().err
    assert seen and min(seen) >= 2, seen
    outputs = run_onnx(tmp_path / "onnx" / "model.onnx")
    assert_close("onnx", outputs[7], eager(model, inputs(7)))


def test_parameters_on_the_meta_device_are_an_error(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10, device="meta"), nn.Linear(10, 10))
    with pytest.raises(ExportError, match="meta"):
        export_model(model, inputs(2), "onnx", tmp_path)


@requires_cuda
def test_parameters_split_across_devices_are_an_error(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10).cuda(), nn.Linear(10, 10))
    with pytest.raises(ExportError, match="split across devices"):
        export_model(model, inputs(2), "onnx", tmp_path)


def test_lightning_module_exports_its_network(tmp_path: Path) -> None:
    from toolkit.module import LightningModel

    lightning_model = LightningModel(network="mlp").train()
    manifest = export_model(lightning_model, None, "exported-program", tmp_path)
    assert lightning_model.training and lightning_model.model.training  # modes restored
    loaded = torch.export.load(str(tmp_path / "exported-program" / "model.pt2")).module()
    with torch.no_grad():
        got = loaded(inputs(7)).numpy()
    np.testing.assert_allclose(got, eager(lightning_model.model, inputs(7)), atol=1e-6)
    assert manifest["exported-program"].input_shape == ["batch", 1, 28, 28]


def test_format_names() -> None:
    assert resolve_formats("onnx, torchscript,onnx") == ["onnx", "torchscript"]
    assert resolve_formats(["all"]) == FORMATS.names()
    with pytest.raises(UnknownNameError) as info:
        resolve_formats(["onnx", "onx"])
    assert str(info.value) == (
        "unknown format 'onx'; available: all, exported-program, onnx, onnx-fp16, onnx-int8, "
        "torchscript"
    )


def test_export_command_from_state_dict(tmp_path: Path, trained_run: Path) -> None:
    weights = trained_run / "model.pt"
    manifests = export_command(str(weights), "torchscript", output_dir=str(tmp_path))
    assert manifests["torchscript"].source_sha256 == sha256_file(weights)
    assert manifests["torchscript"].network == "mlp"


def test_resnet18_exports_to_onnx_and_exported_program(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18")
    # Non-trivial BatchNorm statistics, so eval vs training mode would show.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    model.train()
    export_model(model, None, ["onnx", "exported-program"], tmp_path)
    onnx_outputs = run_onnx(tmp_path / "onnx" / "model.onnx")
    program = torch.export.load(str(tmp_path / "exported-program" / "model.pt2")).module()
    for b in BATCHES:
        want = eager(model, inputs(b))
        assert_close("onnx", onnx_outputs[b], want)
        with torch.no_grad():
            assert_close("exported-program", program(inputs(b)).numpy(), want)


# -- CLI --------------------------------------------------------------------------------------
def test_cli_exports_listed_formats(tmp_path: Path, trained_run: Path) -> None:
    checkpoint = trained_run / "model.ckpt"
    proc = run_cli(
        "export", "--checkpoint", str(checkpoint), "--format", "onnx,torchscript",
        "--output_dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx", "torchscript"]
    lines = proc.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["onnx", "torchscript"]
    assert "model.onnx" in lines[0] and "MiB" in lines[0] and lines[0].endswith(" s")
    assert len({ln.index("MiB") for ln in lines}) == 1  # the columns line up
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["source_sha256"] == sha256_file(checkpoint)
    assert manifest["network"] == "mlp"


def test_cli_exports_all_formats_to_the_default_folder(tmp_path: Path, trained_run: Path) -> None:
    run_dir = tmp_path / "my-run"
    shutil.copytree(trained_run, run_dir)
    args = ["export", "--checkpoint", str(run_dir / "model.safetensors"), "--format", "all"]
    proc = run_cli(*args, "--exporter", "legacy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "exports" / "my-run"
    assert sorted(p.name for p in out.iterdir()) == FORMATS.names()
    assert [ln.split()[0] for ln in proc.stdout.strip().splitlines()] == FORMATS.names()


def test_default_exports_folder_is_the_run_or_the_loose_file(tmp_path: Path) -> None:
    from toolkit.manifest import default_exports_dir

    run = tmp_path / "runs" / "my-run"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    for name in ("model.ckpt", "model.pt", "model.safetensors"):
        assert default_exports_dir(run / name) == Path("exports/my-run")
    # tutorial files side by side, or of the same name in two folders: one exports folder each
    where = tmp_path.name
    assert default_exports_dir(tmp_path / "lightning.pt") == Path(f"exports/{where}-lightning")
    assert default_exports_dir(tmp_path / "other.pt") == Path(f"exports/{where}-other")
    assert default_exports_dir(tmp_path / "b" / "lightning.pt") == Path("exports/b-lightning")
    # Lightning's own layout: two versions that ran as many steps get a folder each
    logs = tmp_path / "lightning_logs"
    ckpt = "checkpoints/epoch=9-step=8590.ckpt"
    assert default_exports_dir(logs / "version_0" / ckpt) == Path(
        "exports/version_0-epoch=9-step=8590"
    )
    assert default_exports_dir(logs / "version_1" / ckpt) == Path(
        "exports/version_1-epoch=9-step=8590"
    )


def test_cli_unknown_format_is_one_line(tmp_path: Path, trained_run: Path) -> None:
    proc = run_cli(
        "export", "--checkpoint", str(trained_run / "model.ckpt"), "--format", "onx", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "toolkit: error: unknown format 'onx'; available: all, exported-program, onnx, "
        "onnx-fp16, onnx-int8, torchscript"
    ]
    assert not (tmp_path / "exports").exists()


@pytest.mark.parametrize(
    ("exporter", "opset"), [("dynamo", 99), ("dynamo", 5), ("legacy", 5), ("legacy", 99)]
)
def test_cli_opset_out_of_range_is_one_line(
    exporter: str, opset: int, tmp_path: Path, trained_run: Path
) -> None:
    low, high = onnx_opset_range(exporter)
    proc = run_cli(
        "export", "--checkpoint", str(trained_run / "model.ckpt"), "--format", "onnx",
        "--output_dir", str(tmp_path / "out"), "--exporter", exporter, "--opset", str(opset),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"toolkit: error: opset {opset} is out of range for onnx with the {exporter} exporter: "
        f"use {low} to {high}"
    ]
    assert not (tmp_path / "out").exists()


def test_cli_bad_option_leaves_earlier_exports_as_they_were(
    tmp_path: Path, trained_run: Path
) -> None:
    out = tmp_path / "out"
    export_model(build_model("mlp"), None, ["torchscript", "onnx"], out, exporter="legacy")
    before = _snapshot(out)
    proc = run_cli(
        "export", "--checkpoint", str(trained_run / "model.ckpt"),
        "--format", "torchscript,onnx", "--output_dir", str(out),
        "--exporter", "legacy", "--opset", "99", "--overwrite",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("toolkit: error: opset 99 "), proc.stderr
    assert _snapshot(out) == before, "an output was replaced before the opset was refused"


def test_cli_overwrite_replaces_a_plain_file_without_leftovers(
    tmp_path: Path, trained_run: Path
) -> None:
    (tmp_path / "onnx").write_text("not an export")
    proc = run_cli(
        "export", "--checkpoint", str(trained_run / "model.ckpt"), "--format", "onnx",
        "--output_dir", str(tmp_path), "--exporter", "legacy", "--overwrite",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"], "a .old was left"
    Manifest.load(tmp_path / "onnx").verify_files(tmp_path / "onnx")


def _edited_onnx_manifest(mlp_exports: tuple, tmp_path: Path, change: dict) -> tuple[Path, dict]:
    """A copy of the mlp's onnx export whose manifest has ``change`` applied; and the original."""
    folder = tmp_path / "onnx"
    shutil.copytree(mlp_exports[0] / "onnx", folder)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    Manifest.load(folder)  # valid as exported
    (folder / MANIFEST_NAME).write_text(json.dumps({**data, **change}))
    return folder, data


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"input_shape": None}, "'input_shape' must be a list, got null"),
        ({"input_shape": 5}, "'input_shape' must be a list, got 5"),
        ({"input_shape": ["batch", 0, 28, 28]}, "'input_shape' must list positive sizes"),
        ({"format": ["onnx"]}, "'format' must be a string"),
        ({"format": None}, "'format' must be a string, got null"),
        ({"format": "bogus"}, "unknown format 'bogus'; available: exported-program"),
        ({"runtime": ["onnxruntime"]}, "'runtime' must be a string"),
        ({"output_names": [1]}, "'output_names' must list strings"),
        ({"opset": True}, "'opset' must be an integer or null, got true"),
        ({"files": {"name": "model.onnx"}}, "'files' must be a list of objects"),
        ({"files": [{"name": 3, "sha256": "0", "size": 1}]}, "'name' must be a string, got 3"),
    ],
)
def test_manifest_with_a_field_of_the_wrong_type_is_refused(
    change: dict, problem: str, mlp_exports: tuple, tmp_path: Path
) -> None:
    # Hand-edited manifests once crashed bench and verify with a TypeError traceback.
    folder, _ = _edited_onnx_manifest(mlp_exports, tmp_path, change)
    with pytest.raises(CheckpointError, match=f"not a valid manifest.*{problem}"):
        Manifest.load(folder)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ([], "lists no files"),
        (
            [{"name": "model.onnx", "sha256": "0" * 64, "size": 1, "role": "external-data"}],
            "lists no model file",
        ),
        (
            [{"name": "../model.onnx", "sha256": "0" * 64, "size": 1, "role": "model"}],
            "not a plain file name",
        ),
    ],
)
def test_manifest_without_a_model_file_is_refused(
    files: list, problem: str, mlp_exports: tuple, tmp_path: Path
) -> None:
    folder, data = _edited_onnx_manifest(mlp_exports, tmp_path, {"files": files})
    with pytest.raises(CheckpointError, match=problem):
        Manifest.load(folder)
    manifest = Manifest.from_json({**data, "files": files})
    with pytest.raises(IntegrityError, match=problem):
        manifest.model_file  # noqa: B018
    with pytest.raises(IntegrityError, match=problem):
        manifest.verify_files(folder)


@pytest.mark.parametrize("command", ["verify", "bench"])
def test_cli_manifest_listing_no_files_is_named(
    command: str, mlp_exports: tuple, tmp_path: Path, trained_run: Path, idx_dir: Path
) -> None:
    exports = tmp_path / "exports"
    shutil.copytree(mlp_exports[0] / "onnx", exports / "onnx")
    data = json.loads((exports / "onnx" / MANIFEST_NAME).read_text())
    (exports / "onnx" / MANIFEST_NAME).write_text(json.dumps({**data, "files": []}))
    args = ["--checkpoint", str(trained_run / "model.ckpt"), "--exports", str(exports)]
    if command == "verify":
        args += ["--data_dir", str(idx_dir), "--limit", "20"]
    else:
        args += [
            "--runtimes", "onnxruntime", "--batch_sizes", "[1]", "--min_calls", "1",
            "--min_time", "0", "--max_time", "0.1", "--rounds", "1", "--warmup_calls", "1",
            "--output_dir", str(tmp_path / "bench"),
        ]  # fmt: skip
    proc = run_cli(command, *args, cwd=tmp_path, env={"COLUMNS": "400"})
    output = proc.stdout + proc.stderr
    assert "StopIteration" not in output
    assert f"{exports / 'onnx' / MANIFEST_NAME} lists no files" in " ".join(output.split())
    if command == "verify":
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith("toolkit: error: parity failed")


def test_low_precision_buffers_do_not_make_an_fp32_graph_reduced_precision(
    tmp_path: Path,
) -> None:
    """A uint8 lookup table once made a genuine fp32 export read as 'int8', and verify and
    bench refused it; only quantization ops and the compute nodes' types count."""
    from toolkit.formats.onnx import onnx_precision
    from toolkit.runtimes.base import RUNTIMES

    class LookupMLP(nn.Module):
        input_shape = (1, 28, 28)

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("lut", torch.arange(256, dtype=torch.uint8))
            self.register_buffer("scale", torch.ones(784, dtype=torch.float16))
            self.fc = nn.Linear(784, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            levels = self.lut[(x.flatten(1).clamp(0, 1) * 255).long()].to(x.dtype) / 255
            return self.fc(levels * self.scale.to(x.dtype))

    export_model(LookupMLP().eval(), inputs(2), ["onnx"], tmp_path / "exports")
    assert onnx_precision(tmp_path / "exports" / "onnx" / "model.onnx") == "fp32"
    RUNTIMES.get("onnxruntime")(tmp_path / "exports" / "onnx").load()
