"""``toolkit verify``: metrics, pass/fail rules, reports, reload rows, artifacts and the CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from torch import nn

from toolkit import parity
from toolkit.errors import CheckFailedError, CheckpointError, UsageError
from toolkit.manifest import ArtifactFile, Manifest, sha256_file
from toolkit.parity import (
    EPS,
    FAIL,
    PASS,
    ParityRow,
    Tolerances,
    accuracy,
    allclose_violations,
    build_input_sets,
    check_overrides,
    check_threads,
    evaluate_row,
    max_abs_diff,
    max_rel_diff,
    mean_abs_diff,
    min_passing_atol,
    min_passing_rtol,
    nonfinite_counts,
    run_sets,
    top1_agreement,
    verify,
    verify_command,
)
from toolkit.report import Column, markdown_table, number, rich_table

SHAPE = (1, 28, 28)
RELOAD_ROWS = {
    "reference",
    "reload:model.ckpt",
    "lightning:model.ckpt",
    "reload:model.pt",
    "reload:model.safetensors",
}


# -- metrics ---------------------------------------------------------------------------------
def test_identical_outputs_have_zero_differences() -> None:
    ref = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32)
    assert max_abs_diff(ref, ref.copy()) == 0.0
    assert max_rel_diff(ref, ref.copy()) == 0.0
    assert mean_abs_diff(ref, ref.copy()) == 0.0
    assert top1_agreement(ref, ref.copy()) == (1.0, 0)
    assert allclose_violations(ref, ref.copy(), 0.0, 0.0) == 0
    assert min_passing_atol(ref, ref.copy(), 0.0) == 0.0
    assert min_passing_rtol(ref, ref.copy(), 0.0) == 0.0


def test_known_differences_and_stated_epsilon() -> None:
    ref = np.array([[1.0, 2.0], [0.0, -4.0]])
    cand = np.array([[1.5, 2.0], [1e-3, -4.0]])
    assert max_abs_diff(ref, cand) == pytest.approx(0.5)
    assert mean_abs_diff(ref, cand) == pytest.approx((0.5 + 1e-3) / 4)
    # Near zero the relative error explodes; eps keeps it finite and is stated.
    assert EPS == 1e-6
    assert max_rel_diff(ref, cand) == pytest.approx(1e-3 / EPS)
    assert max_rel_diff(ref, cand, eps=1.0) == pytest.approx(0.5 / 2.0)


def test_agreement_equals_a_direct_count() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(500, 10))
    cand = ref + rng.normal(scale=0.3, size=ref.shape)
    direct = sum(int(np.argmax(r) == np.argmax(c)) for r, c in zip(ref, cand, strict=True))
    agreement, flipped = top1_agreement(ref, cand)
    assert 0 < flipped < 500  # the noise flips some labels, not all
    assert flipped == 500 - direct
    assert agreement == pytest.approx(direct / 500)
    labels = rng.integers(0, 10, size=500)
    assert accuracy(cand, labels) == pytest.approx(np.mean(np.argmax(cand, axis=1) == labels))


def test_nan_and_inf_are_counted_apart() -> None:
    ref = np.zeros((3, 4))
    cand = np.array([[np.nan, 0, 0, 0], [np.inf, -np.inf, 0, 0], [0, 0, 0, 0.25]])
    assert nonfinite_counts(cand) == (1, 2)
    assert max_abs_diff(ref, cand) == 0.25  # over the finite values only
    # Row 0's NaN sits where argmax of both rows points (index 0), so only the NaN rule
    # can count it; row 1 agrees (argmax 0 both), row 2 flips to label 3.
    agreement, flipped = top1_agreement(ref, cand)
    assert flipped == 2  # a row with NaN never agrees
    assert agreement == pytest.approx(1 / 3)


def test_allclose_rule_matches_numpy_isclose() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(200, 10))
    cand = ref + rng.normal(scale=1e-3, size=ref.shape)
    for atol, rtol in [(1e-4, 1e-3), (1e-3, 0.0), (0.0, 1e-2)]:
        expected = int((~np.isclose(cand, ref, rtol=rtol, atol=atol)).sum())
        assert allclose_violations(ref, cand, atol, rtol) == expected


def test_min_passing_tolerances_are_tight() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(100, 10))
    cand = ref + rng.normal(scale=1e-3, size=ref.shape)
    rtol = 1e-3
    atol = min_passing_atol(ref, cand, rtol)
    assert atol > 0
    assert allclose_violations(ref, cand, atol * (1 + 1e-9), rtol) == 0
    assert allclose_violations(ref, cand, atol * 0.99, rtol) > 0
    # At rtol 0 the smallest passing atol is the max abs diff (Polygraphy's figure).
    assert min_passing_atol(ref, cand, 0.0) == pytest.approx(max_abs_diff(ref, cand))
    found = min_passing_rtol(ref, cand, 1e-4)
    assert allclose_violations(ref, cand, 1e-4, found * (1 + 1e-9)) == 0
    assert allclose_violations(ref, cand, 1e-4, found * 0.99) > 0
    # A difference where the reference is exactly 0 passes no rtol.
    assert min_passing_rtol(np.zeros((1, 2)), np.array([[0.0, 1.0]]), 0.1) == float("inf")


# -- pass/fail logic on a tiny network -------------------------------------------------------
def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()


class _Fn:
    """A runner stand-in: a callable from float32 tensors to numpy logits."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.fn(x).numpy()


@pytest.fixture(scope="module")
def synthetic():
    x = torch.rand(300, *SHAPE, generator=torch.Generator().manual_seed(0))
    sets = build_input_sets(x, SHAPE)
    net = _net()
    reference = run_sets(_Fn(net), sets)
    labels = np.argmax(reference["main"], axis=1)
    labels[:30] = (labels[:30] + 1) % 10  # reference accuracy 90%
    return net, sets, reference, labels


def _judge(synthetic, fn, tol: Tolerances) -> ParityRow:
    _, sets, reference, labels = synthetic
    ref_acc = accuracy(reference["main"], labels)
    row = ParityRow("candidate", "test", "test", "artifact", "-", tol)
    return evaluate_row(row, run_sets(_Fn(fn), sets), reference, sets, labels, ref_acc)


FP32 = Tolerances(atol=1e-4, rtol=1e-3, min_agreement=1.0, max_accuracy_drop=0.0)
LABELS = Tolerances(
    atol=1e-2, rtol=1e-1, min_agreement=0.9, max_accuracy_drop=0.005, judged_by_labels=True
)


def test_input_sets_cover_batch_sizes_and_edge_cases(synthetic) -> None:
    _, sets, _, _ = synthetic
    by_name = {s.name: s for s in sets}
    assert {s.batch_size for s in sets} >= {1, 7, 256}
    assert {"zeros", "ones", "large", "random-normal", "nonfinite"} <= set(by_name)
    assert by_name["main"].x.shape[0] == 300  # 256 + a partial batch of 44
    assert not by_name["nonfinite"].judged
    assert torch.isnan(by_name["nonfinite"].x).any() and torch.isinf(by_name["nonfinite"].x).any()


def test_small_noise_passes_fp32_tolerances(synthetic) -> None:
    net = synthetic[0]
    row = _judge(synthetic, lambda x: net(x) + 2e-5, FP32)
    assert row.status == PASS, row.reasons
    main = next(st for st in row.sets if st.name == "main")
    assert main.max_abs == pytest.approx(2e-5, rel=0.05) and main.samples == 300
    assert row.max_abs < 1e-4  # float32 rounding of large logits adds a little
    assert row.agreement == 1.0 and row.flipped == 0 and row.accuracy_delta == 0.0
    assert row.batch_sizes == [1, 7, 256]


def test_large_noise_fails_and_names_the_passing_tolerance(synthetic) -> None:
    net = synthetic[0]
    row = _judge(synthetic, lambda x: net(x) + 5e-3, FP32)
    assert row.status == FAIL
    assert any("atol 0.0001" in r and "would pass at atol" in r for r in row.reasons)
    assert row.min_atol is not None and 1e-3 < row.min_atol < 5e-3
    # The same outputs pass once the tolerance is overridden to the reported minimum.
    looser = Tolerances(
        atol=row.min_atol * 1.01, rtol=FP32.rtol, min_agreement=1.0, max_accuracy_drop=0.0
    )
    assert _judge(synthetic, lambda x: net(x) + 5e-3, looser).status == PASS


def test_flipped_labels_fail_agreement(synthetic) -> None:
    net = synthetic[0]

    def flip(x: torch.Tensor) -> torch.Tensor:
        out = net(x).clone()
        out[:3] = -out[:3]  # first rows of every batch get another argmax
        return out

    row = _judge(synthetic, flip, FP32)
    assert row.status == FAIL and row.flipped and row.flipped > 0
    assert any("top-1 agreement" in r and "flipped" in r for r in row.reasons)


def test_label_judged_format_fails_on_accuracy_drop_unless_overridden(synthetic) -> None:
    net, _, _, labels = synthetic
    wrong = torch.from_numpy(labels)

    def worse(x: torch.Tensor) -> torch.Tensor:
        out = net(x).clone() + 1e-3  # value differences alone do not fail this format
        if len(x) == 256:  # the first main batch: 5 correct answers become wrong
            out[30:35] = torch.nn.functional.one_hot((wrong[30:35] + 1) % 10, 10) * 100.0
        return out

    row = _judge(synthetic, worse, LABELS)
    assert row.accuracy_delta == pytest.approx(-5 / 300)
    assert row.status == FAIL
    assert any("accuracy drop 1.67 points > 0.5" in r for r in row.reasons)
    relaxed = Tolerances(**{**LABELS.__dict__, "max_accuracy_drop": 0.02})
    assert _judge(synthetic, worse, relaxed).status == PASS


def test_nan_outputs_fail_and_batch_dependence_fails(synthetic) -> None:
    net = synthetic[0]

    def nan_on_zeros(x: torch.Tensor) -> torch.Tensor:
        out = net(x).clone()
        out[x.reshape(len(x), -1).abs().sum(1) == 0] = float("nan")
        return out

    row = _judge(synthetic, nan_on_zeros, LABELS)
    assert row.status == FAIL and row.nan_count == 70  # 7 zero samples x 10 logits
    assert any("NaN" in r for r in row.reasons)

    row = _judge(synthetic, lambda x: net(x) + (1e-2 if len(x) == 1 else 0.0), FP32)
    assert row.status == FAIL
    assert row.batch_invariance_max_abs == pytest.approx(1e-2, rel=1e-3)
    assert any("depend on the batch" in r for r in row.reasons)


def test_zero_tolerances_are_the_strictest_for_batch_invariance_too(synthetic) -> None:
    # --atol 0 --rtol 0 once fell back to the defaults for batch invariance only, so 0
    # passed outputs that depend on the batch and 1e-9 failed them.
    net = synthetic[0]

    def drifting(x: torch.Tensor) -> torch.Tensor:
        return net(x) + (1e-6 if len(x) == 1 else 0.0)

    def judged(tolerance: float) -> ParityRow:
        tol = Tolerances(atol=tolerance, rtol=tolerance, min_agreement=1.0, max_accuracy_drop=0.0)
        return _judge(synthetic, drifting, tol)

    zero, tiny = judged(0.0), judged(1e-9)
    assert zero.batch_invariance_violations == tiny.batch_invariance_violations > 0
    assert any("depend on the batch" in r for r in zero.reasons)
    assert judged(1e-4).batch_invariance_violations == 0


def test_a_runtime_unavailable_here_skips_its_row_and_a_broken_one_fails(synthetic) -> None:
    """verify --device cuda with a CPU-only onnxruntime failed every ONNX row, where bench
    skips the runtime as not applicable; a runtime that breaks while loading still fails."""
    from toolkit.errors import RuntimeUnavailableError

    _, sets, _, _ = synthetic

    class Runner:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def load(self) -> float:
            raise self.error

        def close(self) -> None:
            pass

    no_provider = RuntimeUnavailableError("this onnxruntime has no CUDAExecutionProvider")
    row = ParityRow("onnx", "onnx", "onnxruntime", "artifact", "-")
    assert parity._run_row(row, lambda: Runner(no_provider), sets) is None
    assert (row.status, row.reasons, row.failed) == ("SKIP", [str(no_provider)], False)
    row = ParityRow("onnx", "onnx", "onnxruntime", "artifact", "-")
    assert parity._run_row(row, lambda: Runner(RuntimeError("bad graph")), sets) is None
    assert row.failed and row.reasons == ["RuntimeError: bad graph"]


def test_tolerances_of_format_apply_overrides(monkeypatch) -> None:
    from toolkit.formats import FORMATS, Format

    class Fake(Format):
        name, runtime, suffix = "fake", "eager", ".x"
        atol, judged_by_labels = 0.5, True

        def export(self, *args, **kwargs):  # pragma: no cover
            raise NotImplementedError

    monkeypatch.setitem(FORMATS._items, "fake", Fake)
    tol = Tolerances.of_format("fake", {"atol": 0.1, "min_agreement": 0.98})
    assert tol.atol == 0.1 and tol.min_agreement == 0.98
    assert tol.rtol == Format.rtol and tol.judged_by_labels


# -- rendering -------------------------------------------------------------------------------
def test_report_helpers_render_rows() -> None:
    rows = [{"name": "a|b[x]", "value": 0.5, "n": 3}, {"name": "c", "value": None, "n": 4}]
    columns = [
        Column("name", "name", justify="left"),
        Column("value", "value %", number(".1f", 100)),
        Column("n", "n", number("d")),
    ]
    text = markdown_table(rows, columns)
    assert text.splitlines()[0] == "| name | value % | n |"
    assert "| a\\|b[x] | 50.0 | 3 |" in text and "| c | – | 4 |" in text
    from rich.console import Console

    console = Console(file=io.StringIO(), width=80)
    console.print(rich_table(rows, columns, title="t"))
    assert "50.0" in console.file.getvalue() and "a|b[x]" in console.file.getvalue()


# -- the tiny trained run --------------------------------------------------------------------
@pytest.fixture(scope="module")
def empty_exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("no-artifacts")


@pytest.fixture(scope="module")
def tiny_report(trained_run: Path, idx_dir: Path, empty_exports: Path) -> parity.ParityReport:
    return verify(trained_run / "model.ckpt", empty_exports, data_dir=idx_dir, threads=1)


def test_parity_report_files_are_replaced_as_a_pair(
    tiny_report: parity.ParityReport, tmp_path: Path
) -> None:
    from toolkit.errors import OutputError

    (tmp_path / "parity.json").write_text("OLD")
    (tmp_path / "parity.md").mkdir()  # cannot be replaced by a file
    with pytest.raises(OutputError, match=r"parity\.md: it is a folder; earlier outputs were left"):
        parity.write_report(tiny_report, tmp_path)
    assert (tmp_path / "parity.json").read_text() == "OLD"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parity.json", "parity.md"]


def test_reload_rows_are_bitwise_equal(tiny_report: parity.ParityReport) -> None:
    rows = {row.name: row for row in tiny_report.rows}
    assert set(rows) == RELOAD_ROWS
    for row in rows.values():
        assert row.status == PASS, row.reasons
        assert row.tolerances == Tolerances.exact()
        assert row.max_abs == 0.0 and row.mean_abs == 0.0 and row.agreement == 1.0
        assert row.accuracy == tiny_report.reference_accuracy
        assert row.nonfinite_input_outputs is not None  # NaN inputs were run and reported
    assert tiny_report.passed and tiny_report.samples == 120 and tiny_report.threads == 1
    assert tiny_report.eps == EPS and tiny_report.split == "test"
    assert any("no artifact folders" in note for note in tiny_report.notes)


def test_report_json_and_markdown(
    tiny_report: parity.ParityReport, trained_run: Path, idx_dir: Path, tmp_path: Path
) -> None:
    json_path, md_path = parity.write_report(tiny_report, tmp_path)
    data = json.loads(json_path.read_text())
    # IDX files from a folder of one's own need not be the published test set: named
    assert data["dataset"] == "fashion-mnist" and data["data_dir"] == str(idx_dir.resolve())
    assert data["passed"] is True and data["eps"] == EPS
    assert data["schema_version"] == 2 and data["versions"]["torch"]
    assert data["checkpoint_sha256"] == sha256_file(trained_run / "model.ckpt")
    assert all(row["manifest_sha256"] is None for row in data["rows"])  # no artifact rows
    assert {row["name"] for row in data["rows"]} == RELOAD_ROWS
    assert {"max_abs", "max_rel", "mean_abs", "nan_count", "agreement", "flipped", "sets"} <= set(
        data["rows"][0]
    )
    text = md_path.read_text()
    assert text.startswith("# Parity report: PASS")
    assert f"- Inputs: fashion-mnist test from {idx_dir.resolve()}, " in text
    assert f"eps = {EPS:g}" in text and "| reload:model.pt |" in text
    assert not list(tmp_path.glob(".*partial"))


def test_terminal_table_names_every_row(tiny_report: parity.ParityReport) -> None:
    out = io.StringIO()
    parity.print_report(tiny_report, file=out)
    text = out.getvalue()
    assert all(name in text for name in RELOAD_ROWS)
    assert "parity: PASS" in text and "agree %" in text
    assert "rule: a value-judged row passes when every |diff| <= atol + rtol*|ref|" in text
    flat = " ".join(text.split())  # the title may wrap
    assert "mean abs the mean over all their samples" in flat  # not "the max", as it once said


def test_nan_inputs_are_reported_not_crashed(trained_run: Path, empty_exports: Path) -> None:
    x = np.random.default_rng(0).random((20, *SHAPE), dtype=np.float32)
    x[3, 0, 5, 5] = np.nan
    x[4, 0, 0, 0] = np.inf
    report = verify(trained_run / "model.ckpt", empty_exports, inputs=x)
    assert report.nonfinite_input_samples == 2 and report.samples == 20
    assert report.reference_accuracy is None and report.passed
    assert all(row.nonfinite_input_outputs >= 2 for row in report.rows)  # NaN in, NaN out
    assert report.input_sets["main"]["samples"] == 18


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 28, 28), np.float32), "expected shape (N, 1, 28, 28), got (4, 28, 28)"),
        (np.zeros((4, 1, 28, 28), np.float64), "expected float32 values, got float64"),
        (np.zeros((0, 1, 28, 28), np.float32), "no samples"),
    ],
)
def test_bad_inputs_give_one_usage_error(
    trained_run: Path, empty_exports: Path, array: np.ndarray, message: str
) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        verify(trained_run / "model.ckpt", empty_exports, inputs=array)


# -- option checks (before anything is loaded, run or written) -------------------------------
def test_check_overrides_accepts_the_bounds_and_drops_none() -> None:
    given = {"atol": 0, "rtol": 0.0, "min_agreement": 1, "max_accuracy_drop": None}
    assert check_overrides(given) == {"atol": 0.0, "rtol": 0.0, "min_agreement": 1.0}
    assert check_overrides({"min_agreement": 0.0, "max_accuracy_drop": 1.0}) == {
        "min_agreement": 0.0,
        "max_accuracy_drop": 1.0,
    }
    assert check_threads(None) is None and check_threads(1) == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"atol": -1.0}, "--atol must be a finite number >= 0, got -1.0"),
        ({"rtol": -1e-9}, "--rtol must be a finite number >= 0"),
        ({"atol": float("nan")}, "--atol must be a finite number >= 0, got nan"),
        ({"rtol": float("inf")}, "--rtol must be a finite number >= 0, got inf"),
        ({"min_agreement": 2.0}, "--min_agreement must be a fraction between 0 and 1"),
        ({"min_agreement": -0.5}, "--min_agreement must be a fraction between 0 and 1"),
        ({"min_agreement": float("nan")}, "--min_agreement must be a fraction"),
        ({"max_accuracy_drop": -1.0}, "--max_accuracy_drop must be a fraction between 0 and 1"),
        ({"max_accuracy_drop": float("inf")}, "--max_accuracy_drop must be a fraction"),
        ({"tolerance": 1.0}, "unknown tolerance override(s): tolerance"),
    ],
)
def test_bad_tolerances_are_usage_errors_before_loading(
    tmp_path: Path, overrides: dict[str, float], message: str
) -> None:
    missing = tmp_path / "nowhere" / "model.ckpt"  # loading it would raise CheckpointError
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        verify(missing, tmp_path, overrides=overrides)
    if "unknown" not in message:  # verify_command checks them before the exports folder
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            verify_command(str(missing), str(tmp_path / "no-exports"), **overrides)


@pytest.mark.parametrize("threads", [0, -1, 100_000])
def test_threads_out_of_range_are_usage_errors_before_loading(tmp_path: Path, threads: int) -> None:
    # 100,000 once crashed the process (OpenMP could not start its threads)
    missing = tmp_path / "nowhere" / "model.ckpt"
    message = rf"--threads must be 1 to \d+ \(this machine's cores\), got {threads}$"
    with pytest.raises(UsageError, match=message):
        verify(missing, tmp_path, threads=threads)
    with pytest.raises(UsageError, match=message):
        verify_command(str(missing), str(tmp_path / "no-exports"), threads=threads)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--atol", "-1", "--atol must be a finite number >= 0, got -1.0"),
        ("--rtol", "-1", "--rtol must be a finite number >= 0, got -1.0"),
        ("--min_agreement", "2", "--min_agreement must be a fraction between 0 and 1"),
        ("--min_agreement", "-0.5", "--min_agreement must be a fraction between 0 and 1"),
        ("--max_accuracy_drop", "-1", "--max_accuracy_drop must be a fraction between 0 and 1"),
        ("--threads", "-1", "--threads must be 1 to"),
        ("--threads", "0", "--threads must be 1 to"),
    ],
)
def test_cli_bad_options_are_one_line_and_write_nothing(
    trained_run: Path, idx_dir: Path, tmp_path: Path, option: str, value: str, message: str
) -> None:
    old_json, old_md = tmp_path / "parity.json", tmp_path / "parity.md"
    old_json.write_text('{"old": true}')
    old_md.write_text("old report")
    result = run_cli(
        "verify",
        "--checkpoint", str(trained_run / "model.ckpt"),
        "--exports", str(tmp_path),
        "--data_dir", str(idx_dir),
        "--limit", "8",
        option, value,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"toolkit: error: {message}"), line
    assert "parity:" not in result.stdout  # nothing was run
    assert old_json.read_text() == '{"old": true}' and old_md.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parity.json", "parity.md"]


def test_missing_exports_folder_is_a_usage_error(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no exports folder"):
        verify(trained_run / "model.ckpt", tmp_path / "nowhere", inputs=torch.rand(2, *SHAPE))
    with pytest.raises(UsageError, match="no exports folder"):
        verify_command(str(trained_run / "model.ckpt"), str(tmp_path / "nowhere"))
    # A tutorial state_dict records no network: the suggested export must name it, or
    # running the suggestion fails with "pass --model NAME".
    with pytest.raises(UsageError) as info:
        verify_command(str(trained_run / "model.pt"), str(tmp_path / "nowhere"), model="mlp",
                       model_kwargs={"num_classes": 10})  # fmt: skip
    assert (
        f"run `toolkit export --checkpoint {trained_run / 'model.pt'} --model mlp "
        """--model_kwargs '{"num_classes": 10}' --format all` first""" in str(info.value)
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(trained_run: Path, empty_exports: Path) -> None:
    with pytest.raises(UsageError, match="CUDA is not available"):
        verify(trained_run / "model.ckpt", empty_exports, device="cuda")


def _fake_artifact(folder: Path, fmt: str = "onnx", runtime: str = "onnxruntime") -> Path:
    """An artifact folder whose manifest lists a file that is not there."""
    folder.mkdir(parents=True)
    Manifest(
        format=fmt,
        runtime=runtime,
        files=[ArtifactFile("model.onnx", "0" * 64, 10)],
        input_name="input",
        input_shape=["batch", 1, 28, 28],
        input_dtype="float32",
        output_names=["logits"],
    ).save(folder)
    return folder


def test_broken_artifacts_fail_their_rows_only(trained_run: Path, idx_dir: Path, tmp_path: Path):
    _fake_artifact(tmp_path / "missing-file")
    (tmp_path / "bad-manifest").mkdir()
    (tmp_path / "bad-manifest" / "manifest.json").write_text("{not json")
    (tmp_path / "onnx").mkdir()  # named like a format, manifest lost
    (tmp_path / "notes").mkdir()  # anything else is not an artifact
    (tmp_path / ".torchscript.123.partial").mkdir()  # an export in progress
    report = verify(trained_run / "model.ckpt", tmp_path, data_dir=idx_dir, limit=50)
    rows = {row.name: row for row in report.rows}
    assert not report.passed
    assert {r.name for r in report.failing_rows()} == {"missing-file", "bad-manifest", "onnx"}
    assert set(rows) == RELOAD_ROWS | {"missing-file", "bad-manifest", "onnx"}
    assert "no manifest" in rows["onnx"].error
    assert "is missing" in rows["missing-file"].error
    assert "not a valid manifest" in rows["bad-manifest"].error
    assert all(rows[name].status == PASS for name in RELOAD_ROWS)
    assert report.samples == 50


def test_verify_command_raises_once_after_writing_reports(
    trained_run: Path, idx_dir: Path, tmp_path: Path
) -> None:
    _fake_artifact(tmp_path / "onnx")
    with pytest.raises(CheckFailedError) as info:
        verify_command(str(trained_run / "model.ckpt"), str(tmp_path), data_dir=str(idx_dir))
    assert str(info.value).startswith("parity failed for: onnx (")
    assert (tmp_path / "parity.json").is_file() and (tmp_path / "parity.md").is_file()
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is False


# -- exported artifacts -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONNX and TorchScript exports of the tiny run (copy before changing them)."""
    from toolkit.export import export_model
    from toolkit.reload import load_network

    out = tmp_path_factory.mktemp("exports") / "tiny"
    net = load_network(trained_run / "model.ckpt")
    example = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    export_model(net, example, ["onnx", "torchscript"], out)
    return out


def _copy(artifacts: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(artifacts, tmp_path / "exports"))


def _rows(report: parity.ParityReport) -> dict[str, ParityRow]:
    return {row.name: row for row in report.rows}


def test_exported_artifacts_pass(trained_run: Path, idx_dir: Path, artifacts: Path) -> None:
    report = verify(trained_run / "model.ckpt", artifacts, data_dir=idx_dir)
    rows = _rows(report)
    assert report.passed, [r.summary() for r in report.failing_rows()]
    assert {"onnx", "onnx[onnxruntime-iobinding]", "torchscript"} <= set(rows)
    assert rows["onnx"].format == "onnx" and rows["onnx"].runtime == "onnxruntime"
    assert rows["onnx"].tolerances.atol == 1e-4  # the format's default
    for name in ("onnx", "onnx[onnxruntime-iobinding]", "torchscript"):
        assert rows[name].agreement == 1.0 and rows[name].batch_sizes == [1, 7, 256]
        assert rows[name].min_atol <= rows[name].tolerances.atol


def _change_one_onnx_weight(folder: Path, delta: float = 0.5) -> str:
    """Add ``delta`` to one value of the output bias; rewrite the manifest's sha256."""
    import onnx
    from onnx import numpy_helper

    from toolkit.manifest import sha256_file

    path = folder / "model.onnx"
    model = onnx.load(str(path))
    floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    init = [i for i in floats if len(i.dims) == 1][-1]  # the output layer's bias
    values = numpy_helper.to_array(init).copy()
    values.flat[0] += delta
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(path))
    manifest = Manifest.load(folder)
    manifest.files[0].sha256, manifest.files[0].size = sha256_file(path), path.stat().st_size
    manifest.save(folder)  # the integrity check passes: parity itself must catch this
    return init.name


def test_one_changed_onnx_weight_fails_parity(
    trained_run: Path, idx_dir: Path, artifacts: Path, tmp_path: Path
) -> None:
    exports = _copy(artifacts, tmp_path)
    _change_one_onnx_weight(exports / "onnx")
    report = verify(trained_run / "model.ckpt", exports, data_dir=idx_dir)
    rows = _rows(report)
    assert {r.name for r in report.failing_rows()} == {"onnx", "onnx[onnxruntime-iobinding]"}
    assert rows["onnx"].error is None  # it loaded and ran: the values are wrong
    assert any("exceeds atol 0.0001" in reason for reason in rows["onnx"].reasons)
    main = next(st for st in rows["onnx"].sets if st.name == "main")
    assert main.max_abs == pytest.approx(0.5, rel=1e-3)
    # The "large" edge case has logits in the thousands: float32 rounds the 0.5 shift there.
    assert rows["onnx"].max_abs == pytest.approx(0.5, abs=1e-2)
    judged = [name for name, s in report.input_sets.items() if s["judged"]]
    for name in ("onnx", "onnx[onnxruntime-iobinding]"):  # each row keeps its own sets
        assert [st.name for st in rows[name].sets] == judged
        assert rows[name].reasons[0].count("main:") == 1
    assert rows["torchscript"].status == PASS


def test_tampered_artifact_fails_its_integrity_check(
    trained_run: Path, idx_dir: Path, artifacts: Path, tmp_path: Path
) -> None:
    exports = _copy(artifacts, tmp_path)
    path = exports / "onnx" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the sha256 tells
    path.write_bytes(bytes(data))
    report = verify(trained_run / "model.ckpt", exports, data_dir=idx_dir, limit=32)
    rows = _rows(report)
    assert {r.name for r in report.failing_rows()} == {"onnx"}  # refused before any runtime
    assert "does not match its manifest sha256" in rows["onnx"].error
    assert rows["onnx"].max_abs is None  # never run
    assert rows["torchscript"].status == PASS


def test_a_manifest_edited_to_another_onnx_format_fails_its_row(
    trained_run: Path, idx_dir: Path, artifacts: Path, tmp_path: Path
) -> None:
    """'format': 'onnx' edited to 'onnx-int8' once judged the fp32 graph by int8's loose
    label tolerances; the graph itself now has to be int8."""
    exports = _copy(artifacts, tmp_path)
    manifest = exports / "onnx" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format"] = "onnx-int8"
    manifest.write_text(json.dumps(data))
    report = verify(trained_run / "model.ckpt", exports, data_dir=idx_dir, limit=32)
    rows = _rows(report)
    assert {r.name for r in report.failing_rows()} == {"onnx"}
    assert "holds an fp32 graph, but its manifest says format 'onnx-int8'" in rows["onnx"].error
    assert rows["torchscript"].status == PASS


def test_a_manifest_that_is_a_folder_fails_its_row(
    trained_run: Path, idx_dir: Path, artifacts: Path, tmp_path: Path
) -> None:
    exports = _copy(artifacts, tmp_path)
    (exports / "onnx" / "manifest.json").unlink()
    (exports / "onnx" / "manifest.json").mkdir()  # once an IsADirectoryError traceback
    report = verify(trained_run / "model.ckpt", exports, data_dir=idx_dir, limit=32)
    rows = _rows(report)
    assert "cannot read manifest" in rows["onnx"].error and rows["onnx"].status == "FAIL"
    assert rows["torchscript"].status == PASS


def test_sigterm_during_a_row_stops_verify_and_keeps_the_old_report(
    trained_run: Path, idx_dir: Path, artifacts: Path, tmp_path: Path, monkeypatch
) -> None:
    from toolkit.errors import TerminatedError
    from toolkit.runtimes.torchscript import TorchScriptRunner

    exports = _copy(artifacts, tmp_path)
    verify_command(str(trained_run / "model.ckpt"), str(exports), data_dir=str(idx_dir), limit=32)
    before = {p.name: p.read_bytes() for p in exports.glob("parity.*")}
    assert set(before) == {"parity.json", "parity.md"}

    def terminated(self: object) -> float:
        raise TerminatedError("terminated")  # what the CLI's SIGTERM handler raises

    monkeypatch.setattr(TorchScriptRunner, "load", terminated)
    with pytest.raises(TerminatedError):  # once a failing torchscript row, and a new report
        verify_command(str(trained_run / "model.ckpt"), str(exports), data_dir=str(idx_dir),
                       limit=32)  # fmt: skip
    assert {p.name: p.read_bytes() for p in exports.glob("parity.*")} == before


def test_cli_names_the_changed_onnx_row(
    trained_run: Path, idx_dir: Path, artifacts: Path, tmp_path: Path
) -> None:
    exports = _copy(artifacts, tmp_path)
    _change_one_onnx_weight(exports / "onnx")
    result = run_cli(
        "verify",
        "--checkpoint", str(trained_run / "model.ckpt"),
        "--exports", str(exports),
        "--data_dir", str(idx_dir),
        "--limit", "64",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("toolkit: error: parity failed for: onnx (")
    assert "onnx[onnxruntime-iobinding] (" in line and "torchscript" not in line
    assert len(line.split("; see ")[0]) < 320, line  # parity.md has every reason
    assert "FAIL" in result.stdout and "torchscript" in result.stdout
    assert "# Parity report: FAIL" in (exports / "parity.md").read_text()


def test_parity_json_records_checkpoint_and_manifest_sha256(
    trained_run: Path, idx_dir: Path, artifacts: Path, tmp_path: Path
) -> None:
    exports = _copy(artifacts, tmp_path)
    (exports / "bad-manifest").mkdir()
    (exports / "bad-manifest" / "manifest.json").write_text("{not json")
    checkpoint = trained_run / "model.ckpt"
    with pytest.raises(CheckFailedError, match="bad-manifest"):
        verify_command(str(checkpoint), str(exports), data_dir=str(idx_dir), limit=32)
    data = json.loads((exports / "parity.json").read_text())
    assert data["schema_version"] == 2
    assert data["checkpoint_sha256"] == sha256_file(checkpoint)
    rows = {row["name"]: row for row in data["rows"]}
    expected = {
        "onnx": sha256_file(exports / "onnx" / "manifest.json"),
        "onnx[onnxruntime-iobinding]": sha256_file(exports / "onnx" / "manifest.json"),
        "torchscript": sha256_file(exports / "torchscript" / "manifest.json"),
        "bad-manifest": None,  # unreadable: nothing was verified against it
    }
    assert {name: rows[name]["manifest_sha256"] for name in expected} == expected
    assert expected["onnx"] != expected["torchscript"]
    for row in data["rows"]:
        assert row["kind"] == "artifact" or row["manifest_sha256"] is None, row["name"]


def test_sha256_fields_do_not_change_the_rendering(tiny_report: parity.ParityReport) -> None:
    assert tiny_report.checkpoint_sha256 is not None
    artifact = ParityRow("onnx", "onnx", "onnxruntime", "artifact", "x", manifest_sha256="ab" * 32)
    with_hashes = dataclasses.replace(tiny_report, rows=[*tiny_report.rows, artifact])
    without = dataclasses.replace(
        with_hashes,
        checkpoint_sha256=None,
        rows=[dataclasses.replace(row, manifest_sha256=None) for row in with_hashes.rows],
    )
    assert parity.render_markdown(with_hashes) == parity.render_markdown(without)
    assert "ab" * 32 not in parity.render_markdown(with_hashes)
    outputs = []
    for report in (with_hashes, without):
        out = io.StringIO()
        parity.print_report(report, file=out)
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]


# -- a weights file that does not record its network ------------------------------------------
@pytest.fixture()
def lone_state_dict(trained_run: Path, tmp_path: Path) -> Path:
    """The run's state_dict alone (no run.json): the tutorial's ``torch.save`` file."""
    lone = tmp_path / "lone"
    lone.mkdir()
    return Path(shutil.copy(trained_run / "model.pt", lone / "model.pt"))


def test_cli_verifies_a_lone_state_dict_with_model(
    lone_state_dict: Path, idx_dir: Path, tmp_path: Path
) -> None:
    from toolkit.export import export_command

    exports = tmp_path / "exports" / "lone"
    export_command(str(lone_state_dict), "torchscript", str(exports), model="mlp")
    args = ["verify", "--checkpoint", str(lone_state_dict), "--exports", str(exports)]
    args += ["--data_dir", str(idx_dir), "--limit", "32"]
    result = run_cli(*args)
    assert result.returncode == 2
    assert "does not record its network; pass --model NAME (e.g. mlp)" in result.stderr
    assert not (exports / "parity.json").exists()

    result = run_cli(*args, "--model", "mlp")
    assert result.returncode == 0, result.stderr
    assert "parity: PASS" in result.stdout
    data = json.loads((exports / "parity.json").read_text())
    assert {row["name"]: row["status"] for row in data["rows"]} == {
        "reference": PASS,
        "reload:model.pt": PASS,
        "torchscript": PASS,
    }
    assert data["checkpoint_sha256"] == sha256_file(lone_state_dict)


def test_model_kwargs_reach_the_network(lone_state_dict: Path, tmp_path: Path) -> None:
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    report = verify(lone_state_dict, tmp_path, inputs=x, model="mlp", model_kwargs={})
    assert report.passed and report.reference == "eager PyTorchMLP from model.pt"
    with pytest.raises(CheckpointError, match="does not fit network"):
        verify(lone_state_dict, tmp_path, inputs=x, model="mlp", model_kwargs={"num_classes": 5})


def test_network_with_a_single_output_column_is_refused(tmp_path: Path) -> None:
    # Top-1 labels of one column always agree: fp16/int8 rows once passed with zero outputs.
    from toolkit.models import build_model

    path = tmp_path / "one.pt"
    torch.save(build_model("mlp", num_classes=1).state_dict(), path)
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UsageError, match=r"PyTorchMLP returns a single score per sample"):
        verify(path, tmp_path, inputs=x, model="mlp", model_kwargs={"num_classes": 1})


def test_network_with_other_class_count_than_the_data_is_refused(
    idx_dir: Path, tmp_path: Path
) -> None:
    # Once scored as "reference accuracy 10.40%" with exit 0, while evaluate refused it.
    from toolkit.models import build_model

    path = tmp_path / "two.pt"
    torch.save(build_model("mlp", num_classes=2).state_dict(), path)
    with pytest.raises(UsageError, match=r"gives 2 scores per sample, but .* has 10 classes"):
        verify(path, tmp_path, data_dir=idx_dir, model="mlp", model_kwargs={"num_classes": 2})
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert verify(path, tmp_path, inputs=x, model="mlp", model_kwargs={"num_classes": 2}).passed


def test_model_given_for_a_checkpoint_that_records_it(trained_run: Path, tmp_path: Path) -> None:
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    report = verify(trained_run / "model.ckpt", tmp_path, inputs=x, model="mlp")
    assert {row.name for row in report.rows} == RELOAD_ROWS
    assert report.passed, [row.summary() for row in report.failing_rows()]


# -- the CLI, as a user runs it --------------------------------------------------------------
def _torchscript_export(trained_run: Path, folder: Path) -> Path:
    from toolkit.export import export_command

    export_command(str(trained_run / "model.ckpt"), "torchscript", str(folder))
    return folder


def test_cli_verify_passes_with_exit_0(trained_run: Path, idx_dir: Path, tmp_path: Path) -> None:
    _torchscript_export(trained_run, tmp_path)
    result = run_cli(
        "verify",
        "--checkpoint", str(trained_run / "model.ckpt"),
        "--exports", str(tmp_path),
        "--data_dir", str(idx_dir),
        "--limit", "64",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "parity: PASS" in result.stdout and "reload:model.safetensors" in result.stdout
    assert json.loads((tmp_path / "parity.json").read_text())["samples"] == 64


def test_cli_verify_wrong_inputs_shape_is_one_line(trained_run: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((3, 784), np.float32))
    _torchscript_export(trained_run, tmp_path)
    result = run_cli(
        "verify", "--checkpoint", str(trained_run / "model.ckpt"), "--exports", str(tmp_path),
        "--inputs", str(inputs),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"toolkit: error: inputs {inputs}: expected shape (N, 1, 28, 28), got (3, 784)"
    )


def test_verify_command_refuses_a_folder_without_artifacts(
    trained_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="no artifact folders"):
        verify_command(str(trained_run / "model.ckpt"), str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no parity report written


def test_verify_uses_the_runs_data_folder(trained_run: Path, tmp_path: Path) -> None:
    exports = _torchscript_export(trained_run, tmp_path / "exports")
    report = verify_command(str(trained_run / "model.ckpt"), str(exports), threads=1)
    assert report.samples == 120  # the run's own small test split, not Fashion-MNIST's 10,000


# -- artifacts of other weights ----------------------------------------------------------------
def test_artifacts_record_the_weights_of_every_reload_path(
    trained_run: Path, tmp_path: Path
) -> None:
    from toolkit.export import export_command
    from toolkit.manifest import weights_sha256
    from toolkit.reload import load_network

    (manifest,) = export_command(
        str(trained_run / "model.ckpt"), "torchscript", str(tmp_path)
    ).values()
    for name in ("model.ckpt", "model.pt", "model.safetensors"):
        assert weights_sha256(load_network(trained_run / name)) == manifest.weights_sha256
    # so the run's .pt verifies the artifacts exported from its .ckpt
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert verify(trained_run / "model.pt", tmp_path, inputs=x).passed


def test_artifacts_of_other_weights_are_refused_or_failed(tmp_path: Path) -> None:
    from toolkit.export import export_command
    from toolkit.models import PyTorchMLP

    for seed, name in ((1, "a.pt"), (2, "b.pt")):
        torch.manual_seed(seed)
        torch.save(PyTorchMLP(784, 10).state_dict(), tmp_path / name)
    exports = tmp_path / "exports"
    export_command(str(tmp_path / "a.pt"), "onnx,torchscript", str(exports), model="mlp")
    (exports / "parity.json").write_text('{"old": true}')
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    # every artifact from a.pt: the wrong folder for b.pt, refused before anything runs
    with pytest.raises(UsageError, match=r"exported from other weights \(.*a\.pt\) than .*b\.pt"):
        verify_command(str(tmp_path / "b.pt"), str(exports), model="mlp")
    # the advice works as given: it keeps --model and names a folder of its own
    with pytest.raises(UsageError) as caught:
        verify_command(str(tmp_path / "b.pt"), str(exports), model="mlp", model_kwargs={})
    advice = str(caught.value).split("pass that: ")[1]
    command, own = advice.split(", then --exports ")
    argv = shlex.split(command)
    assert argv[:2] == ["toolkit", "export"] and argv[argv.index("--model") + 1] == "mlp"
    assert argv[argv.index("--output_dir") + 1] == own and not Path(own).exists()
    export_command(str(tmp_path / "b.pt"), "onnx", own, model="mlp")
    assert verify(tmp_path / "b.pt", own, inputs=x, model="mlp").passed
    assert (exports / "parity.json").read_text() == '{"old": true}'
    # a partial re-export: the stale format fails with the reason, the new one passes
    export_command(str(tmp_path / "b.pt"), "onnx", str(exports), overwrite=True, model="mlp")
    report = verify(tmp_path / "b.pt", exports, inputs=x, model="mlp")
    status = {row.name: (row.status, row.error) for row in report.rows}
    assert status["onnx"][0] == PASS
    assert status["torchscript"][0] == "FAIL"
    assert "exported from other weights" in status["torchscript"][1]


def test_brief_row_summary_is_bounded() -> None:
    row = ParityRow("onnx", "onnx", "onnxruntime", "artifact", "x", Tolerances.exact())
    row.fail("max abs diff 9.65e+03 exceeds atol 0.0001 + rtol 0.001·|ref| at 99954 values "
             "(main: 99954, batch-1: 160, batch-7: 140, zeros: 70)")  # fmt: skip
    row.fail("top-1 agreement 87.20% < 100% (1280 labels flipped)")
    brief = row.brief()
    assert brief.startswith("onnx (max abs diff 9.65e+03 exceeds atol") and len(brief) < 150
    assert brief.endswith("at 99954 values …; +1 more)")
    assert ParityRow("x", "f", "r", "artifact", "p").brief() == "x (PASS)"


def test_a_network_without_input_shape_is_verified_on_own_inputs(
    shapeless_weights: Path, tmp_path: Path
) -> None:
    """The inputs give the shape a network does not declare (it used to be refused)."""
    from toolkit.export import export_command

    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.random.default_rng(0).standard_normal((40, 12), dtype=np.float32))
    exports = tmp_path / "exports"
    with pytest.raises(UsageError, match="Shapeless has no input_shape"):
        export_command(str(shapeless_weights), format="onnx", output_dir=str(exports),
                       model="shapeless")  # fmt: skip
    # the Python API exports it from an example input
    from toolkit.export import export_model
    from toolkit.reload import load_network

    net = load_network(shapeless_weights, "shapeless")
    export_model(net, torch.zeros(2, 12), "onnx,torchscript", exports,
                 source_checkpoint=shapeless_weights, network="shapeless")  # fmt: skip
    report = parity.verify(shapeless_weights, exports, inputs=str(inputs), model="shapeless")
    assert report.samples == 40 and report.passed
    assert {r.kind for r in report.rows} == {"reference", "artifact"}
    assert all(r.status == "PASS" for r in report.rows), [r.status for r in report.rows]
    with pytest.raises(UsageError, match=r"expected shape \(N, \.\.\.\), got \(40,\)"):
        parity.verify(shapeless_weights, inputs=np.zeros(40, np.float32), model="shapeless")
