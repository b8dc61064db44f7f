"""Artifact runtimes: parity with eager, the Runner protocol, integrity and load errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from toolkit.errors import CheckpointError, IntegrityError, UsageError
from toolkit.export import export_model
from toolkit.formats import FORMATS
from toolkit.manifest import MANIFEST_NAME, Manifest, sha256_file
from toolkit.models import build_model
from toolkit.runtimes import RUNTIMES
from toolkit.runtimes.base import ArtifactRunner

ARTIFACT_RUNTIMES = [n for n in RUNTIMES.names() if issubclass(RUNTIMES.get(n), ArtifactRunner)]
#: A format of each model-file suffix, whose artifact the runtimes of that suffix run.
FORMAT_FOR_SUFFIX = {".pt": "torchscript", ".pt2": "exported-program", ".onnx": "onnx"}


def inputs(batch: int) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(10 + batch))


def format_for(runtime: str) -> str:
    return FORMAT_FOR_SUFFIX[RUNTIMES.get(runtime).model_suffix]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A random mlp exported to every format (legacy ONNX exporter: fast)."""
    torch.manual_seed(0)
    model = build_model("mlp").eval()
    out = tmp_path_factory.mktemp("artifacts")
    export_model(model, None, "all", out, exporter="legacy", network="mlp")
    return out, model


def copy_artifact(artifacts: tuple, fmt: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifacts[0] / fmt, tmp_path / fmt))


def test_every_artifact_runtime_is_tested() -> None:
    assert {"torchscript", "exported-program", "onnxruntime", "onnxruntime-iobinding"} <= set(
        ARTIFACT_RUNTIMES
    )
    for name in ARTIFACT_RUNTIMES:
        assert RUNTIMES.get(name).model_suffix in FORMAT_FOR_SUFFIX, f"no test artifact for {name}"


def test_every_format_names_a_registered_runtime() -> None:
    for name in FORMATS.names():
        assert FORMATS.get(name).runtime in ARTIFACT_RUNTIMES


@pytest.mark.parametrize("runtime", ARTIFACT_RUNTIMES)
def test_runtime_matches_eager(runtime: str, artifacts: tuple) -> None:
    out, model = artifacts
    runner = RUNTIMES.get(runtime)(out / format_for(runtime), "cpu", threads=2)
    assert runner.input_shape == (1, 28, 28)  # from the manifest, before loading
    assert runner.load() > 0
    for batch in (1, 7):
        x = inputs(batch)
        with torch.no_grad():
            want = model(x).numpy()
        got = runner(x)
        assert got.dtype == np.float32 and got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
        # The bench protocol: prepare once, infer repeatedly.
        prepared = runner.prepare(x)
        first = runner.infer(prepared)
        runner.synchronize()
        np.testing.assert_array_equal(runner.to_numpy(first), got)
        np.testing.assert_array_equal(runner.to_numpy(runner.infer(prepared)), got)
    # Batches of one new shape: each gets its own result; no input is written to.
    xs = [torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    kept = [x.clone() for x in xs]
    for x, out in zip(xs, [runner(x) for x in xs], strict=True):
        with torch.no_grad():
            np.testing.assert_allclose(out, model(x).numpy(), atol=1e-4, rtol=1e-3)
    assert all(torch.equal(x, k) for x, k in zip(xs, kept, strict=True))


def test_iobinding_feeds_large_cpu_inputs_without_copying(artifacts: tuple) -> None:
    """With --include_copies, iobinding on CPU once copied every batch into its own buffer
    (12 µs at batch 256) where the plain onnxruntime runner copies nothing: small inputs
    are still copied (cheaper than a new binding), large ones are bound where they lie."""
    from toolkit.runtimes.onnxruntime import HOST_COPY_MAX_BYTES

    out, model = artifacts
    runner = RUNTIMES.get("onnxruntime-iobinding")(out / "onnx", "cpu", threads=1)
    large = 1 + HOST_COPY_MAX_BYTES // (28 * 28 * 4)
    for batch, in_place in ((2, False), (large, True)):
        for seed in (1, 2):  # a second batch of the same shape reuses the binding
            x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
            kept = x.clone()
            prepared = runner.prepare(x)
            got = runner.to_numpy(runner.infer(prepared))
            with torch.no_grad():
                np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-3)
            assert torch.equal(x, kept)  # ORT only read it
            x.mul_(0.5)  # seen by the next run only where the caller's memory is bound
            again = runner.to_numpy(runner.infer(prepared))
            assert np.array_equal(again, got) is not in_place
    # An earlier prepared input runs on the newest batch of its shape, never on the freed
    # copy of a non-contiguous one.
    first = runner.prepare(torch.rand(200, 1, 28, 28))
    newer = torch.rand(1, 28, 28, 200).permute(3, 0, 1, 2)  # contiguous() copies it
    runner.prepare(newer)  # the prepared copy is dropped at once
    junk = [torch.full((200, 1, 28, 28), 1e6) for _ in range(5)]  # may reuse its memory
    with torch.no_grad():
        want = model(newer.contiguous()).numpy()
    np.testing.assert_allclose(runner.to_numpy(runner.infer(first)), want, atol=1e-4, rtol=1e-3)
    del junk


@pytest.mark.parametrize("fmt", ["onnx-fp16", "onnx-int8"])
@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-iobinding"])
def test_derived_onnx_formats_run_in_onnxruntime(runtime: str, fmt: str, artifacts: tuple) -> None:
    out, model = artifacts
    cls = FORMATS.get(fmt)
    got = RUNTIMES.get(runtime)(out / fmt, threads=1)(inputs(7))
    with torch.no_grad():
        want = model(inputs(7)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=cls.atol, rtol=cls.rtol)


@pytest.mark.parametrize("runtime", ARTIFACT_RUNTIMES)
def test_tampered_artifact_raises_integrity_error(
    runtime: str, artifacts: tuple, tmp_path: Path
) -> None:
    folder = copy_artifact(artifacts, format_for(runtime), tmp_path)
    model_file = folder / Manifest.load(folder).model_file
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))
    runner = RUNTIMES.get(runtime)(folder)
    with pytest.raises(IntegrityError, match="does not match its manifest sha256"):
        runner.load()


@pytest.mark.parametrize("runtime", ARTIFACT_RUNTIMES)
def test_corrupt_file_with_matching_manifest_is_a_checkpoint_error(
    runtime: str, artifacts: tuple, tmp_path: Path
) -> None:
    folder = copy_artifact(artifacts, format_for(runtime), tmp_path)
    manifest = Manifest.load(folder)
    model_file = folder / manifest.model_file
    model_file.write_bytes(b"not a model at all" * 10)
    manifest.files[0].sha256 = sha256_file(model_file)
    manifest.files[0].size = model_file.stat().st_size
    manifest.save(folder)
    with pytest.raises(CheckpointError, match="export it again") as info:
        RUNTIMES.get(runtime)(folder).load()
    assert not isinstance(info.value, IntegrityError)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("runtime", ARTIFACT_RUNTIMES)
def test_missing_manifest_is_a_checkpoint_error(
    runtime: str, artifacts: tuple, tmp_path: Path
) -> None:
    folder = copy_artifact(artifacts, format_for(runtime), tmp_path)
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="no manifest"):
        RUNTIMES.get(runtime)(folder)


def test_missing_external_data_file_is_an_integrity_error(tmp_path: Path) -> None:
    export_model(build_model("mlp"), None, "onnx", tmp_path, exporter="legacy", external_data=True)
    (tmp_path / "onnx" / "model.onnx.data").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        RUNTIMES.get("onnxruntime")(tmp_path / "onnx").load()


def test_wrong_artifact_kind_is_a_usage_error(artifacts: tuple) -> None:
    with pytest.raises(UsageError, match=r"cannot run .* 'onnx' artifact"):
        RUNTIMES.get("torchscript")(artifacts[0] / "onnx")
    with pytest.raises(UsageError, match="expected an exported artifact folder"):
        RUNTIMES.get("onnxruntime")(artifacts[0] / "onnx" / "model.onnx")


def test_wrong_input_shape_is_a_usage_error(artifacts: tuple) -> None:
    runner = RUNTIMES.get("onnxruntime")(artifacts[0] / "onnx")
    with pytest.raises(UsageError, match=r"does not match the model's \(batch, 1, 28, 28\)"):
        runner(torch.rand(2, 784))


def test_thread_settings_are_explicit(artifacts: tuple) -> None:
    runner = RUNTIMES.get("onnxruntime")(artifacts[0] / "onnx", threads=1)
    runner.load()
    options = runner.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    before = torch.get_num_threads()
    try:
        for runtime in ("torchscript", "exported-program"):
            torch.set_num_threads(2)
            RUNTIMES.get(runtime)(artifacts[0] / format_for(runtime), threads=1).load()
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cuda_without_the_cuda_provider_is_a_usage_error(artifacts: tuple) -> None:
    import onnxruntime as ort

    from toolkit.errors import RuntimeUnavailableError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    runner = RUNTIMES.get("onnxruntime")(artifacts[0] / "onnx", "cuda")
    with pytest.raises(RuntimeUnavailableError, match="pip install onnxruntime-gpu"):
        runner.load()  # a UsageError: one line from the CLI; bench and verify skip it


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-iobinding"])
@pytest.mark.parametrize(("field", "value"), [("input_name", "x"), ("output_names", ["zzz"])])
def test_onnx_manifest_naming_other_inputs_or_outputs_than_the_graph_is_refused(
    runtime: str, field: str, value: object, artifacts: tuple, tmp_path: Path
) -> None:
    # The manifest tells users the feed name; once a wrong one passed verify unnoticed.
    folder = copy_artifact(artifacts, "onnx", tmp_path)
    manifest = Manifest.load(folder)
    setattr(manifest, field, value)
    manifest.save(folder)
    with pytest.raises(CheckpointError, match=r"takes \['input'\] and gives \['logits'\], but"):
        RUNTIMES.get(runtime)(folder).load()


def test_manifest_is_plain_json(artifacts: tuple) -> None:
    data = json.loads((artifacts[0] / "onnx" / MANIFEST_NAME).read_text())
    assert Manifest.from_json(data) == Manifest.load(artifacts[0] / "onnx")


def test_eager_runner_leaves_the_callers_module_as_it_was() -> None:
    # Runners once called source.to(device).eval() on the caller's own module: bench()
    # left a model in eval mode (and would have moved it to the GPU).
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Dropout(0.5)).train()
    runner = RUNTIMES.get("eager")(model, "cpu", (1, 28, 28))
    out = runner(inputs(4))
    assert all(m.training for m in model.modules())
    np.testing.assert_allclose(out, runner(inputs(4)))  # the runner's copy is in eval mode
    model.eval()
    assert RUNTIMES.get("eager")(model, "cpu", (1, 28, 28)).eval_module() is model  # no copy


def test_eager_runner_refuses_what_is_not_a_module() -> None:
    with pytest.raises(UsageError, match=r"runtime 'eager' needs an nn\.Module, got str"):
        RUNTIMES.get("eager")("model.pt", "cpu", (1, 28, 28))(inputs(2))
