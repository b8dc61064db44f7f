"""``toolkit bench``: protocol, statistics, verdicts, compare, outputs, every runtime.

No test asserts a wall-clock speed: fake runners sleep deterministically and the
assertions are about counts, structure and decisions.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import requires_cuda, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit import bench as B
from toolkit.errors import CheckFailedError, DataError, RuntimeUnavailableError, UsageError
from toolkit.models import build_model
from toolkit.runtimes import RUNTIMES, Runner

SHAPE = (1, 28, 28)
FAST = B.TimingProtocol(
    warmup_calls=2, warmup_time=0.0, min_calls=10, min_time=0.0, max_time=5.0, rounds=2
)
#: Artifact runtimes and the format each one runs; module runtimes run the network.
ARTIFACT_FORMATS = {
    "onnxruntime": "onnx",
    "onnxruntime-iobinding": "onnx",
    "torchscript": "torchscript",
    "exported-program": "exported-program",
}


class SleepRunner(Runner):
    """The eager network, slowed by a fixed sleep per call."""

    name = "fake-sleep"
    device_types = ("cpu",)
    delay = 0.0005

    def _load(self) -> None:
        self.module = self.source.eval()

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        with torch.inference_mode():
            return self.module(prepared)


class WrongRunner(SleepRunner):
    """Fast and wrong: returns zeros."""

    name = "fake-wrong"
    delay = 0.0

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        return torch.zeros(prepared.shape[0], 10)


class WrongAtBatchOneRunner(SleepRunner):
    """Right except at batch 1, as a graph specialised to one shape can be."""

    name = "fake-b1"
    delay = 0.0

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        if prepared.shape[0] == 1:
            return torch.zeros(1, 10)
        return super()._infer(prepared)


class CountingRunner(SleepRunner):
    """Counts calls; no sleep."""

    name = "fake-count"
    delay = 0.0

    def _load(self) -> None:
        super()._load()
        self.calls = 0

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return prepared


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp").eval()


@pytest.fixture(scope="module")
def artifacts(mlp: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toolkit.export import export_model

    out = tmp_path_factory.mktemp("bench-exports")
    export_model(mlp, torch.randn(2, *SHAPE), sorted(set(ARTIFACT_FORMATS.values())), out)
    return out


def _specs(mlp: torch.nn.Module, *extra: tuple[str, type[Runner]]) -> list[B.RuntimeSpec]:
    specs = [B.RuntimeSpec("eager", mlp)]
    specs += [B.RuntimeSpec(name, mlp, runner_class=cls) for name, cls in extra]
    return specs


# -- statistics ----------------------------------------------------------------------------
def test_latency_stats_on_known_samples() -> None:
    s = B.latency_stats(np.arange(1, 101, dtype=float))
    assert s["n"] == 100
    assert s["min"] == 1 and s["max"] == 100
    assert s["mean"] == pytest.approx(50.5)
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert s["iqr"] == pytest.approx(75.25 - 25.75)
    assert s["std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    with pytest.raises(ValueError):
        B.latency_stats(np.array([]))


latencies = st.lists(
    st.floats(min_value=1e-7, max_value=10.0, allow_nan=False), min_size=1, max_size=300
)


@settings(max_examples=200, deadline=None)
@given(latencies)
def test_percentiles_are_monotone(samples: list[float]) -> None:
    s = B.latency_stats(np.array(samples))
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert s["iqr"] >= 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(latencies, min_size=1, max_size=3),
    st.lists(latencies, min_size=1, max_size=3),
    st.integers(0, 2**16),
)
def test_bootstrap_ci_contains_the_point_estimate(
    num: list[list[float]], den: list[list[float]], seed: int
) -> None:
    point, lo, hi = B.bootstrap_ratio_ci(
        [np.array(x) for x in num], [np.array(x) for x in den], resamples=300, seed=seed
    )
    assert lo <= point <= hi


def test_bootstrap_ci_of_a_known_ratio() -> None:
    rng = np.random.default_rng(0)
    base = [rng.normal(10, 1, 500), rng.normal(10, 1, 500)]
    point, lo, hi = B.bootstrap_ratio_ci([2 * b for b in base], base)
    assert point == pytest.approx(2.0)
    assert lo < 2.0 < hi and hi - lo < 0.1
    _, lo, hi = B.bootstrap_ratio_ci(base, [rng.normal(10, 1, 1000)])
    assert lo < 1.0 < hi


# -- protocol ------------------------------------------------------------------------------
def test_protocol_respects_minimums_and_bounds(mlp: torch.nn.Module) -> None:
    runner = CountingRunner(mlp)
    x = runner.prepare(torch.randn(1, *SHAPE))
    samples = B.time_calls(runner.infer, x, 37, 0.0, 1000, 10.0)
    assert len(samples) == 37 == runner.calls  # every call recorded on its own
    assert np.all(samples >= 0)
    samples = B.time_calls(runner.infer, x, 5, 0.05, 10**7, 10.0)
    assert len(samples) >= 5 and runner.calls == 37 + len(samples)
    assert len(B.time_calls(runner.infer, x, 100, 0.0, 12, 10.0)) == 12  # max_calls
    slow = SleepRunner(mlp)
    cut = B.time_calls(slow.infer, slow.prepare(torch.randn(1, *SHAPE)), 10**6, 0.0, 10**7, 0.02)
    assert 1 <= len(cut) < 10**6  # max_time ends a run that min_calls would make endless
    assert B.warm_up(runner.infer, x, 7, 0.0) == 7


def test_bench_rows_threads_rounds_and_fake_runner(mlp: torch.nn.Module) -> None:
    before = torch.get_num_threads()
    report = B.bench(
        _specs(mlp, ("fake-sleep", SleepRunner)), SHAPE, "cpu", [1, 4], threads=1, protocol=FAST
    )
    assert report.environment["threads"]["intra_op"] == 1
    assert report.protocol["threads"] == 1
    assert torch.get_num_threads() == before  # the caller's setting, put back
    assert report.protocol["io_boundary"] == B.IO_DEVICE
    assert {(r.runtime, r.batch) for r in report.rows} == {
        (n, b) for n in ("eager", "fake-sleep") for b in (1, 4)
    }
    for row in report.rows:
        assert row.n >= FAST.min_calls and len(row.round_p50s_us) == FAST.rounds
        assert row.min_us <= row.p50_us <= row.p90_us <= row.p99_us <= row.max_us
        assert row.throughput_sps == pytest.approx(row.batch / (row.p50_us * 1e-6))
        assert row.ratio_ci is not None and len(row.round_ratios or []) == FAST.rounds
        assert row.parity == "PASS" and len(row.quantiles_us) == 101
    fake = report.row("fake-sleep", "cpu", 1)
    assert fake.p50_us >= SleepRunner.delay * 1e6  # it slept in every timed call
    assert fake.parity_source == "quick-check"
    assert [v.batch for v in report.verdicts] == [1, 4]
    for verdict in report.verdicts:  # eager beats a 0.5 ms sleep by far: not a tie
        assert (verdict.runtime, verdict.runner_up, verdict.tied) == ("eager", "fake-sleep", False)
        assert verdict.runner_up_ci[0] > 1.0 and "faster than fake-sleep" in verdict.text


def test_include_copies_is_stated(mlp: torch.nn.Module) -> None:
    protocol = B.TimingProtocol(**{**FAST.__dict__, "include_copies": True})
    report = B.bench(_specs(mlp), SHAPE, "cpu", [2], threads=1, protocol=protocol)
    assert report.protocol["io_boundary"] == B.IO_COPIES
    assert report.rows[0].n >= FAST.min_calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_without_gpu_is_reported_as_skipped(mlp: torch.nn.Module) -> None:
    report = B.bench(_specs(mlp), SHAPE, "cpu,cuda", [1], threads=1, protocol=FAST)
    assert any(s.device == "cuda" and "no CUDA" in s.reason for s in report.skipped)
    assert {r.device for r in report.rows} == {"cpu"}
    assert "cuda" in report.devices


@pytest.mark.parametrize(
    "inputs",
    [torch.randn(4, 3, 28, 28), torch.randn(4, *SHAPE, dtype=torch.float64), np.zeros((4, 784))],
)
def test_wrong_inputs_give_one_usage_error(mlp: torch.nn.Module, inputs: Any) -> None:
    with pytest.raises(UsageError) as info:
        B.bench(_specs(mlp), SHAPE, "cpu", [1], threads=1, protocol=FAST, inputs=inputs)
    assert "\n" not in str(info.value) and "bench inputs" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"devices": "tpu"}, "device"),
        ({"batch_sizes": [0]}, "batch_sizes"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_settings_are_usage_errors(mlp: torch.nn.Module, kwargs: dict, match: str) -> None:
    args = {"devices": "cpu", "batch_sizes": [1], "threads": 1, "protocol": FAST, **kwargs}
    with pytest.raises(UsageError, match=match):
        B.bench(_specs(mlp), SHAPE, **args)


# -- verdicts and parity -------------------------------------------------------------------
def _row(runtime: str, p50: float, parity: str = "PASS", batch: int = 1, **kw: Any) -> B.BenchRow:
    rng = np.random.default_rng(abs(hash((runtime, p50))) % 2**32)
    rounds = [rng.normal(p50, p50 * 0.01, 400) for _ in range(3)]
    st_ = B.latency_stats(np.concatenate(rounds))
    return B.BenchRow(
        runtime=runtime, format=kw.get("format"), device="cpu", batch=batch, n=st_["n"],
        mean_us=st_["mean"], std_us=st_["std"], min_us=st_["min"], p50_us=st_["p50"],
        p90_us=st_["p90"], p99_us=st_["p99"], max_us=st_["max"], iqr_us=st_["iqr"],
        throughput_sps=batch / st_["p50"] * 1e6, throughput_mean_sps=0.0, load_s=0.0,
        first_call_us=0.0, clock=B.CLOCK_CPU,
        round_p50s_us=kw.get("round_p50s_us", [float(np.median(r)) for r in rounds]),
        quantiles_us=list(np.percentile(np.concatenate(rounds), B.SKETCH_PERCENTILES)),
        ratio_to_eager=kw.get("ratio"), ratio_ci=kw.get("ci"), parity=parity,
    )  # fmt: skip


def test_rows_that_changed_between_rounds_are_flagged() -> None:
    from toolkit.bench_report import render_markdown, summary_lines

    steady = _row("eager", 100.0, round_p50s_us=[100.0, 101.0, 99.0])
    report = B.BenchReport({}, {}, ["cpu"], [1], [steady], [], [], "")
    assert not [line for line in summary_lines(report) if line.startswith("warning")]
    busy = _row("torchscript", 30.0, batch=8, round_p50s_us=[25.0, 30.0, 24000.0])
    report.rows.append(busy)
    (warning,) = [line for line in summary_lines(report) if line.startswith("warning")]
    assert "1 row(s)" in warning and "torchscript cpu batch 8, 95900%" in warning
    assert warning in render_markdown(report)


@pytest.mark.serial  # other test processes would count as the machine's own load
def test_cpu_used_by_other_processes_is_measured_apart_from_our_own() -> None:
    """A report timed while another process kept a core busy (a test run, a build) had
    figures up to 100x slower and said nothing; the bench now measures that use. Judged
    against what the machine did without us, so a busy test machine cannot fail it."""
    if B._cpu_busy_seconds(B._process_cores()) is None:
        pytest.skip("no /proc/stat on this system")

    def measured(seconds: float, spin: bool) -> float:
        use = B.OtherCpuUse()
        assert use.cores() is None  # nothing measured yet
        with use.measuring():
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                if not spin:
                    time.sleep(0.01)
        with use.measuring():  # blocks add up
            time.sleep(0.1)
        cores = use.cores()
        assert cores is not None
        return cores

    background = measured(0.5, spin=False)
    assert measured(1.0, spin=True) < background + 0.5  # our own busy loop is not counted
    spin = "import time\nprint(flush=True)\nend = time.time() + 30\nwhile time.time() < end: pass"
    with subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE) as child:
        try:
            child.stdout.readline()  # it spins from here on
            assert measured(1.0, spin=False) > background + 0.6
        finally:
            child.kill()


def test_the_cores_of_every_thread_are_watched() -> None:
    """OMP_PROC_BIND pins the main thread to one core and the OpenMP workers to others:
    the main thread's mask alone left the workers' cores out."""
    import threading

    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two usable cores")
    every = os.sched_getaffinity(0)
    first = min(every)
    seen: list[set[int]] = []
    done = threading.Event()

    def worker() -> None:  # pinned to the other cores; 0 means the calling thread
        os.sched_setaffinity(0, every - {first})
        seen.append(B._process_cores())
        done.wait(5)

    os.sched_setaffinity(0, {first})  # the main thread on one core
    thread = threading.Thread(target=worker)
    try:
        thread.start()
        while not seen and thread.is_alive():
            time.sleep(0.01)
        assert seen == [every]  # the union of both threads' cores
    finally:
        done.set()
        thread.join()
        os.sched_setaffinity(0, every)


def test_a_busy_machine_is_named_in_the_report_and_in_comparisons() -> None:
    from toolkit.bench_report import render_markdown, summary_lines

    rows = [_row("eager", 100.0)]
    quiet = B.BenchReport(
        {"usable_cores": 2, "other_cpu_cores": 0.1}, {}, ["cpu"], [1], rows, [], [], ""
    )
    busy = B.BenchReport(
        {"usable_cores": 2, "other_cpu_cores": 0.93}, {}, ["cpu"], [1], rows, [], [], ""
    )
    unknown = B.BenchReport({"other_cpu_cores": None}, {}, ["cpu"], [1], rows, [], [], "")
    for report in (quiet, unknown):
        assert not [line for line in summary_lines(report) if "other processes" in line]
    (warning,) = [line for line in summary_lines(busy) if "other processes" in line]
    assert warning.startswith("warning: other processes used 0.93 of 2 cores on average while ")
    assert warning in render_markdown(busy)
    assert B.comparability_notes(quiet, busy) == [
        "other processes used 0.93 of 2 cores on average while this run was timed"
    ]
    assert B.comparability_notes(busy, quiet) == [
        "other processes used 0.93 of 2 cores on average while the old report was timed"
    ]


def test_load_times_are_shown_in_the_units_of_the_other_columns() -> None:
    """The load column printed "0.0123 s" beside "12.3 ms" latencies."""
    from toolkit.bench_report import render_markdown

    rows = [_row("eager", 100.0), _row("onnxruntime", 20.0, format="onnx")]
    rows[0].load_s, rows[1].load_s = 0.0123, 2.5
    markdown = render_markdown(B.BenchReport({}, {}, ["cpu"], [1], rows, [], [], ""))
    eager, onnx = (
        [cell.strip() for cell in line.split("|")]
        for line in markdown.splitlines()
        if line.startswith(("| eager", "| onnxruntime"))
    )
    header = next(line for line in markdown.splitlines() if "| runtime" in line)
    load = [cell.strip() for cell in header.split("|")].index("load")
    assert (eager[load], onnx[load]) == ("12.3 ms", "2.5 s")


def test_verdict_picks_the_fastest_passing_runtime() -> None:
    rows = [
        _row("eager", 100.0, ratio=1.0, ci=[0.98, 1.02]),
        _row("fast-but-wrong", 5.0, "FAIL"),
        _row("unchecked", 6.0, "UNCHECKED"),
        _row("onnxruntime", 20.0, ratio=0.2, ci=[0.19, 0.21], format="onnx"),
        _row("torchscript", 30.0),
    ]
    (verdict,) = B.choose_verdicts(rows, ["cpu"], [1])
    assert (verdict.runtime, verdict.format) == ("onnxruntime", "onnx")
    assert verdict.speedup_vs_eager == pytest.approx(5.0)
    assert "fastest correct = onnxruntime (onnx)" in verdict.text and "5.00x eager" in verdict.text
    assert verdict.excluded_faster == ["fast-but-wrong (fail)", "unchecked (unchecked)"]
    (none,) = B.choose_verdicts([_row("x", 1.0, "FAIL")], ["cpu"], [1])
    assert none.runtime is None and "no runtime passed" in none.text
    assert "reduced precision" not in verdict.text
    rows.append(_row("onnxruntime", 10.0, ratio=0.1, ci=[0.09, 0.11], format="onnx-fp16"))
    (lossy,) = B.choose_verdicts(rows, ["cpu"], [1])
    assert "fastest correct = onnxruntime (onnx-fp16), " in lossy.text  # p50 ~10 us, noisy
    assert " p50 (reduced precision: passed on label agreement, not value parity)" in lossy.text


def test_verdict_says_whether_the_winner_beats_the_runner_up() -> None:
    rng = np.random.default_rng(0)

    def rounds(p50: float) -> list[np.ndarray]:
        return [rng.normal(p50, p50 * 0.02, 400) for _ in range(3)]

    rows = [_row("eager", 100.0), _row("a", 20.0), _row("b", 20.0), _row("c", 30.0)]
    samples = {r.key: rounds(20.0 if r.runtime in "ab" else r.p50_us) for r in rows}
    (tied,) = B.choose_verdicts(rows, ["cpu"], [1], samples)
    assert {tied.runtime, tied.runner_up} == {"a", "b"} and tied.tied is True
    assert tied.runner_up_ci[0] <= 1.0 <= tied.runner_up_ci[1]
    assert f"tied with {tied.runner_up} within noise" in tied.text
    rows = [r for r in rows if r.runtime != "b"]
    (clear,) = B.choose_verdicts(rows, ["cpu"], [1], samples)
    assert (clear.runtime, clear.runner_up, clear.tied) == ("a", "c", False)
    assert clear.runner_up_ratio == pytest.approx(1.5, rel=0.03)
    assert clear.runner_up_ci[0] > 1.0 and "1.50x faster than c [CI" in clear.text
    # barely but clearly faster: the interval is not printed as [CI 1.00-...], like a tie
    close = [_row("eager", 100.0), _row("a", 20.0), _row("d", 20.06)]
    narrow = {r.key: [np.full(400, r.p50_us)] * 3 for r in close}
    (barely,) = B.choose_verdicts(close, ["cpu"], [1], narrow)
    lo = barely.runner_up_ci[0]
    assert barely.tied is False and 1.0 < lo < 1.005 and "[CI 1.00–" not in barely.text
    assert f"{barely.runner_up_ratio:.3f}x faster than d [CI {lo:.3f}–" in barely.text
    (alone,) = B.choose_verdicts([_row("eager", 100.0, "FAIL"), rows[1]], ["cpu"], [1], samples)
    assert alone.runner_up is None and alone.tied is None and "tied" not in alone.text


def test_printed_verdicts_are_not_wrapped_in_a_log() -> None:
    import io

    from toolkit.bench_report import print_report

    rows = [_row("eager", 100.0, ratio=1.0, ci=[0.99, 1.01]), _row("x" * 40, 20.0, format="y")]
    report = B.BenchReport({}, {}, ["cpu"], [1], rows, [], [], "")
    report.verdicts = B.choose_verdicts(rows, ["cpu"], [1])
    assert len(report.verdicts[0].text) > 80
    out = io.StringIO()
    print_report(report, file=out)
    assert f"verdict {report.verdicts[0].text}" in out.getvalue().splitlines()


def test_faster_failing_runtime_is_not_chosen_end_to_end(mlp: torch.nn.Module) -> None:
    report = B.bench(
        _specs(mlp, ("fake-wrong", WrongRunner)), SHAPE, "cpu", [8], threads=1, protocol=FAST
    )
    wrong = report.row("fake-wrong", "cpu", 8)
    assert wrong.parity == "FAIL" and "quick check" in (wrong.parity_detail or "")
    assert report.verdicts[0].runtime == "eager"


def test_quick_check_runs_at_every_batch_size(mlp: torch.nn.Module) -> None:
    specs = _specs(mlp, ("fake-b1", WrongAtBatchOneRunner))
    report = B.bench(specs, SHAPE, "cpu", [1, 8], threads=1, protocol=FAST)
    assert report.row("fake-b1", "cpu", 1).parity == "FAIL"
    assert report.row("fake-b1", "cpu", 8).parity == "PASS"
    assert report.verdicts[0].runtime == "eager"  # never the runtime wrong at that size


def test_parity_json_is_read(tmp_path: Path) -> None:
    data = {
        "device": "cpu",
        "rows": [
            {"name": "reference", "runtime": "eager", "format": "eager", "kind": "reference",
             "status": "PASS"},
            {"name": "reload:model.pt", "runtime": "eager", "format": "state_dict",
             "kind": "reload", "status": "FAIL"},
            {"name": "onnx", "runtime": "onnxruntime", "format": "onnx", "kind": "artifact",
             "status": "FAIL", "reasons": ["max abs 1e-2 > atol"]},
            {"name": "int8", "runtime": "onnxruntime", "format": "onnx-int8", "kind": "artifact",
             "status": "SKIP"},
        ],
    }  # fmt: skip
    path = tmp_path / "parity.json"
    path.write_text(json.dumps(data))
    statuses = B.read_parity(path)
    assert statuses == {
        ("eager", None, "cpu"): ("PASS", "PASS"),
        ("onnxruntime", "onnx", "cpu"): ("FAIL", "max abs 1e-2 > atol"),
    }
    row = _row("onnxruntime", 10.0, "UNCHECKED", format="onnx")
    B._parity_of(row, statuses, {})
    assert (row.parity, row.parity_source) == ("FAIL", "parity.json")
    path.write_text("{not json")
    assert B.read_parity(path) == {}


def test_parity_json_counts_only_for_the_weights_and_artifacts_it_checked(
    tmp_path: Path,
) -> None:
    from toolkit.manifest import sha256_file

    exports = tmp_path / "exports"
    for fmt in ("onnx", "torchscript"):
        (exports / fmt).mkdir(parents=True)
        (exports / fmt / "manifest.json").write_text(json.dumps({"format": fmt}))
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"weights")

    def row(fmt: str) -> dict[str, Any]:
        manifest = exports / fmt / "manifest.json"
        return {"name": fmt, "runtime": "rt-" + fmt, "format": fmt, "kind": "artifact",
                "status": "PASS", "manifest_sha256": sha256_file(manifest)}  # fmt: skip

    data = {"device": "cpu", "checkpoint_sha256": sha256_file(checkpoint), "schema_version": 2,
            "rows": [row("onnx"), row("torchscript")]}  # fmt: skip
    path = exports / "parity.json"
    path.write_text(json.dumps(data))
    assert set(B.read_parity(path, checkpoint, exports)) == {
        ("rt-onnx", "onnx", "cpu"),
        ("rt-torchscript", "torchscript", "cpu"),
    }
    assert B.parity_notes(path, checkpoint, exports) == []
    # an artifact exported again after verify: its row no longer counts
    (exports / "onnx" / "manifest.json").write_text(json.dumps({"format": "onnx", "v": 2}))
    assert set(B.read_parity(path, checkpoint, exports)) == {
        ("rt-torchscript", "torchscript", "cpu")
    }
    assert B.parity_notes(path, checkpoint, exports) == [f"onnx changed since {path} was written"]
    # other weights, or a report that does not say which weights: nothing counts
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"other weights")
    assert B.read_parity(path, other, exports) == {}
    assert "made for other weights" in B.parity_notes(path, other, exports)[0]
    del data["checkpoint_sha256"]
    path.write_text(json.dumps(data))
    assert B.read_parity(path, checkpoint, exports) == {}
    assert "does not record its checkpoint" in B.parity_notes(path, checkpoint, exports)[0]


def test_discover_runtimes_reports_incomplete_folders_and_takes_one_artifact_folder(
    mlp: torch.nn.Module, artifacts: Path, tmp_path: Path
) -> None:
    import shutil

    exports = tmp_path / "exports"
    shutil.copytree(artifacts, exports)
    (exports / "torchscript" / "manifest.json").unlink()  # damaged
    (exports / "notes").mkdir()  # not an artifact folder: ignored
    specs, skipped = B.discover_runtimes(mlp, exports)
    assert "torchscript" not in {s.runtime for s in specs}
    assert [(s.runtime, s.format) for s in skipped] == [("torchscript", "torchscript")]
    assert "no manifest.json" in skipped[0].reason
    _, skipped = B.discover_runtimes(mlp, exports, ["onnx-fp16"])  # a format not exported
    assert [(s.runtime, s.reason) for s in skipped if s.runtime == "onnx-fp16"] == [
        ("onnx-fp16", f"no onnx-fp16 artifact in {exports}")
    ]
    with pytest.raises(UsageError, match=r"unknown runtime or format 'onx'.*formats: .*onnx"):
        B.discover_runtimes(mlp, exports, ["onx"])
    specs, skipped = B.discover_runtimes(mlp, exports / "onnx")  # one format's folder
    assert {(s.runtime, s.format) for s in specs if s.format} == {
        ("onnxruntime", "onnx"),
        ("onnxruntime-iobinding", "onnx"),
    }
    assert skipped == []


# -- compare -------------------------------------------------------------------------------
def _report(*rows: B.BenchRow) -> B.BenchReport:
    return B.BenchReport({}, {}, ["cpu"], [1], list(rows), [], [], "")


def test_compare_flags_a_regression_beyond_threshold_and_noise() -> None:
    old = _report(_row("eager", 100.0), _row("onnxruntime", 10.0, format="onnx"))
    new = _report(_row("eager", 101.0), _row("onnxruntime", 15.0, format="onnx"))
    changes = {c.runtime: c for c in B.compare_reports(old, new, 0.10)}
    assert changes["onnxruntime"].status == "regressed"
    assert changes["onnxruntime"].ratio_ci[0] > 1.10
    assert changes["eager"].status == "unchanged"
    assert changes["onnxruntime"].label == "onnxruntime (onnx)"


def test_compare_treats_round_noise_and_small_changes_as_unchanged() -> None:
    old = _report(_row("eager", 100.0, round_p50s_us=[100.0, 100.0, 100.0]))
    noisy = _report(_row("eager", 125.0, round_p50s_us=[100.0, 125.0, 170.0]))
    (change,) = B.compare_reports(old, noisy, 0.10)
    assert change.status == "unchanged" and change.ratio == pytest.approx(1.25, rel=0.02)
    (change,) = B.compare_reports(old, _report(_row("eager", 105.0)), 0.10)
    assert change.status == "unchanged"
    (change,) = B.compare_reports(old, _report(_row("eager", 50.0)), 0.10)
    assert change.status == "improved"
    statuses = {c.status for c in B.compare_reports(old, _report(_row("x", 1.0)), 0.10)}
    assert statuses == {"new", "not run"}  # this run did not ask for eager


def test_compare_tells_missing_rows_from_rows_not_asked_for() -> None:
    from toolkit.bench_report import print_changes

    old = _report(_row("eager", 100.0), _row("onnxruntime", 10.0, format="onnx"),
                  _row("torchscript", 50.0), _row("eager", 300.0, batch=8))  # fmt: skip
    new = _report(_row("eager", 100.0))
    new.skipped.append(B.Skipped("onnxruntime", "cpu", "failed to load", format="onnx"))
    statuses = {(c.runtime, c.batch): c.status for c in B.compare_reports(old, new, 0.10)}
    assert statuses == {("eager", 1): "unchanged", ("onnxruntime", 1): "missing",
                        ("torchscript", 1): "not run", ("eager", 8): "not run"}  # fmt: skip
    out = io.StringIO()
    print_changes(B.compare_reports(old, new, 0.10), 0.10, file=out)
    assert "torchscript" not in out.getvalue() and "missing" in out.getvalue()
    assert "2 row(s) of the old report not shown: this run did not ask" in out.getvalue()


def test_compare_by_eager_cancels_a_slower_machine_but_not_a_slower_runtime() -> None:
    old = _report(_row("eager", 100.0), _row("onnxruntime", 10.0, format="onnx"))
    slow_machine = _report(_row("eager", 150.0), _row("onnxruntime", 15.0, format="onnx"))
    by_p50 = {c.runtime: c for c in B.compare_reports(old, slow_machine, 0.10)}
    assert by_p50["onnxruntime"].status == by_p50["eager"].status == "regressed"
    assert by_p50["onnxruntime"].vs_eager == pytest.approx(1.0, abs=0.02)
    lo, hi = by_p50["onnxruntime"].vs_eager_ci
    assert lo <= by_p50["onnxruntime"].vs_eager <= hi
    assert by_p50["eager"].vs_eager is None  # eager is the reference, not compared with itself
    assert "rerun, or judge by --compare_by eager" in B.machine_hint(by_p50.values())
    by_eager = {c.runtime: c for c in B.compare_reports(old, slow_machine, 0.10, by="eager")}
    assert by_eager["onnxruntime"].status == "unchanged"
    assert by_eager["eager"].status == "reference"
    # The runtime itself slowed down while eager did not: a regression either way, no hint.
    slow_runtime = _report(_row("eager", 100.0), _row("onnxruntime", 15.0, format="onnx"))
    for by in B.COMPARE_BY:
        changes = {c.runtime: c for c in B.compare_reports(old, slow_runtime, 0.10, by=by)}
        assert changes["onnxruntime"].status == "regressed"
        assert changes["onnxruntime"].vs_eager == pytest.approx(1.5, rel=0.03)
    assert B.machine_hint(B.compare_reports(old, slow_runtime, 0.10)) is None
    # Only eager slowed down: torch's own regression, not the machine.
    slow_eager = _report(_row("eager", 150.0), _row("onnxruntime", 10.0, format="onnx"))
    assert B.machine_hint(B.compare_reports(old, slow_eager, 0.10)) is None
    with pytest.raises(UsageError, match="--compare_by must be one of p50, eager"):
        B.compare_reports(old, old, 0.10, by="median")


def test_compare_table_shows_the_change_relative_to_eager() -> None:
    from toolkit.bench_report import print_changes

    old = _report(_row("eager", 100.0), _row("onnxruntime", 10.0, format="onnx"))
    new = _report(_row("eager", 150.0), _row("onnxruntime", 15.0, format="onnx"))
    out = io.StringIO()
    print_changes(B.compare_reports(old, new, 0.10, by="eager"), 0.10, file=out, by="eager")
    text = out.getvalue()
    assert "vs eager" in text and "relative to eager's" in text and "reference" in text
    (line,) = [ln for ln in text.splitlines() if "onnxruntime (onnx)" in ln]
    assert re.search(r"\+(49|50)\.\d% .*unchanged", line), line  # 1% noise per row


def test_report_json_round_trip(tmp_path: Path) -> None:
    report = _report(_row("eager", 100.0))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report.to_json()))
    again = B.BenchReport.load(path)
    assert again.rows[0].p50_us == pytest.approx(report.rows[0].p50_us)
    path.write_text("[]")
    with pytest.raises(DataError):  # a bad input file: exit 1, as the README says
        B.BenchReport.load(path)
    with pytest.raises(DataError, match="no benchmark report"):
        B.BenchReport.load(path.with_name("missing.json"))


# -- outputs -------------------------------------------------------------------------------
def test_outputs_are_written_atomically(mlp: torch.nn.Module, tmp_path: Path, monkeypatch) -> None:
    report = B.bench(_specs(mlp), SHAPE, "cpu", [1, 2], threads=1, protocol=FAST)
    paths = B.write_outputs(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["schema_version"] == B.SCHEMA_VERSION
    assert "fastest correct" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*partial"))

    import matplotlib.figure

    def killed(self: Any, fname: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt  # as if the process were killed mid-write

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        B.write_outputs(report, tmp_path / "killed")
    folder = tmp_path / "killed"
    assert list(folder.iterdir()) == []  # the three are published together or not at all


def test_outputs_are_replaced_as_a_set(mlp: torch.nn.Module, tmp_path: Path) -> None:
    from toolkit.errors import OutputError

    report = B.bench(_specs(mlp), SHAPE, "cpu", [1], threads=1, protocol=FAST)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "bench.json").write_text("OLD")
    (folder / "bench.md").write_text("OLD")
    (folder / "bench.png").mkdir()  # cannot be replaced by a file
    with pytest.raises(OutputError, match=r"bench\.png: it is a folder; earlier outputs were left"):
        B.write_outputs(report, folder)
    assert (folder / "bench.json").read_text() == (folder / "bench.md").read_text() == "OLD"
    assert sorted(p.name for p in folder.iterdir()) == ["bench.json", "bench.md", "bench.png"]


def _quick(trained_run: Path, tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "no-exports").mkdir(exist_ok=True)  # an exports folder with no artifacts
    return {
        "checkpoint": str(trained_run / "model.ckpt"),
        "exports": str(tmp_path / "no-exports"),
        "runtimes": "eager",
        "batch_sizes": [1],
        "threads": 1,
        "min_calls": 10,
        "min_time": 0.01,
        "rounds": 1,
        "output_dir": str(tmp_path / "out"),
    }


def test_bench_uses_verify_report_only_while_it_describes_the_artifacts(
    trained_run: Path, idx_dir: Path, tmp_path: Path
) -> None:
    from toolkit.export import export_command
    from toolkit.parity import verify_command

    checkpoint = str(trained_run / "model.ckpt")
    exports = tmp_path / "exports"
    export_command(checkpoint, format="onnx,torchscript", output_dir=str(exports))
    verify_command(checkpoint, str(exports), data_dir=str(idx_dir), limit=32)
    quick = {**_quick(trained_run, tmp_path), "exports": str(exports)}
    quick["runtimes"] = "eager,onnxruntime,torchscript"

    def sources(report: B.BenchReport) -> dict[str, str | None]:
        return {row.label: row.parity_source for row in report.rows}

    first = B.bench_command(**quick)
    assert sources(first) == {
        "eager": "reference",
        "onnxruntime (onnx)": "parity.json",
        "torchscript": "parity.json",
    }
    scope = f"parity.json (fashion-mnist test from {idx_dir.resolve()}, 32 samples) where it"
    assert scope in first.parity_source
    # onnx exported again after verify (same weights, new file): its row is checked afresh
    export_command(checkpoint, format="onnx", output_dir=str(exports), overwrite=True)
    report = B.bench_command(**quick)
    assert sources(report)["onnxruntime (onnx)"] == "quick-check"
    assert sources(report)["torchscript"] == "parity.json"
    assert report.row("onnxruntime", "cpu", 1, "onnx").parity == "PASS"
    # onnx exported from other weights: not benchmarked at all, and said why; --runtimes
    # asked for onnxruntime, which nothing measured, so the command fails after its reports
    torch.manual_seed(1)
    other = tmp_path / "other" / "model.pt"
    other.parent.mkdir()
    torch.save(build_model("mlp").state_dict(), other)
    export_command(str(other), format="onnx", output_dir=str(exports), overwrite=True, model="mlp")
    with pytest.raises(CheckFailedError, match="asked for what was not measured: onnxruntime: "
                       "exported from other weights"):  # fmt: skip
        B.bench_command(**quick)
    report = B.BenchReport.load(Path(quick["output_dir"]) / "bench.json")
    assert "onnxruntime (onnx)" not in sources(report)
    assert sources(report)["torchscript"] == "parity.json"
    assert any(s.format == "onnx" and "other weights" in s.reason for s in report.skipped)


def test_bench_fails_when_an_artifact_or_a_named_runtime_cannot_run(
    trained_run: Path, tmp_path: Path
) -> None:
    from toolkit.export import export_command

    checkpoint = str(trained_run / "model.ckpt")
    exports = tmp_path / "exports"
    export_command(checkpoint, format="torchscript", output_dir=str(exports))
    quick = {**_quick(trained_run, tmp_path), "exports": str(exports), "runtimes": "all"}
    (exports / "torchscript" / "manifest.json").unlink()  # once: exit 0, eager "fastest"
    broken = r"1 runtime\(s\) could not be measured: torchscript"
    with pytest.raises(CheckFailedError, match=broken):
        B.bench_command(**quick)
    assert (tmp_path / "out" / "bench.json").is_file()  # the reports are still written
    # Named in --runtimes, but nothing to run it with: a failure, not a quiet skip.
    quick = {**_quick(trained_run, tmp_path), "runtimes": "eager,torchscript"}
    with pytest.raises(CheckFailedError, match="asked for what was not measured: torchscript: "
                       "no torchscript artifact"):  # fmt: skip
        B.bench_command(**quick)
    # Not named (--runtimes all) and not exported: skipped, and the command succeeds.
    B.bench_command(**{**quick, "runtimes": "all"})


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["rows"][0].update(p50_us="fast"), "has a p50_us, n or batch that is not"),
        (lambda d: d["rows"][0].update(quantiles_us=None), "quantiles_us or round_p50s_us"),
        (lambda d: d.update(protocol="x"), "protocol is not an object"),
        (lambda d: d.update(rows=[1]), "is not a bench.json report"),
        (lambda d: d["rows"][0].update(p50_us=0), "has a p50_us of 0, not above 0"),
        (lambda d: d["rows"][0].update(p50_us=d["rows"][0]["p50_us"] * 2), "was it edited?"),
        (lambda d: d["rows"][0].update(quantiles_us=[1.0, 2.0]), "has 2 quantiles_us, expected"),
        (lambda d: d["rows"][0]["quantiles_us"].reverse(), "not increasing times"),
        (lambda d: d.update(schema_version=999), "schema 999, from a newer toolkit"),
        (lambda d: d.update(schema_version="1"), "schema_version '1' is not an integer"),
    ],
)
def test_a_malformed_compare_report_is_refused_before_timing(
    trained_run: Path, tmp_path: Path, change: Any, problem: str, monkeypatch
) -> None:
    def no_timing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("timed although the --compare report is malformed")

    quick = _quick(trained_run, tmp_path)
    data = B.bench_command(**quick).to_json()
    change(data)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    before = (tmp_path / "out" / "bench.json").read_bytes()
    monkeypatch.setattr(B, "bench", no_timing)
    with pytest.raises(B.DataError, match=re.escape(problem)):  # once a TypeError traceback
        B.bench_command(**quick, compare=str(old))
    assert (tmp_path / "out" / "bench.json").read_bytes() == before  # nothing was replaced
    old.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(B.DataError, match=r"is not a bench\.json report"):
        B.BenchReport.load(old)


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe not utf-8", b'{"rows": 5}', b'{"device": "tpu9", "rows": []}', b"[1]"],
)
def test_a_malformed_parity_json_only_costs_its_verdicts(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "parity.json").write_bytes(content)
    statuses, notes = B._read_parity(tmp_path / "parity.json", None, None)
    assert statuses == {} and len(notes) == 1  # the rows then get a quick check


class UnavailableRunner(SleepRunner):
    """Cannot load on this machine, as onnxruntime without its CUDA provider."""

    name = "fake-unavailable"

    def _load(self) -> None:
        raise RuntimeUnavailableError("no CUDAExecutionProvider; pip install onnxruntime-gpu")


class CrashingRunner(SleepRunner):
    """Loads, then fails on its first call, as a damaged artifact can."""

    name = "fake-crash"

    def _infer(self, prepared: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("bad graph")


def test_a_skip_on_every_device_says_so() -> None:
    text = B.Skipped("onnx-fp16", "*", "no onnx-fp16 artifact", "onnx-fp16").text()
    assert text == "onnx-fp16 on every device: skipped (no onnx-fp16 artifact)"
    assert B.Skipped("eager", "cpu", "x", batch=8).text() == "eager on cpu batch 8: skipped (x)"


def test_only_a_failure_of_the_runtime_itself_counts_as_broken(mlp: torch.nn.Module) -> None:
    specs = _specs(mlp, ("fake-unavailable", UnavailableRunner), ("fake-crash", CrashingRunner))
    report = B.bench(specs, SHAPE, "cpu", [1], threads=1, protocol=FAST)
    broken = {s.runtime: s.broken for s in report.skipped}
    assert broken == {"fake-unavailable": False, "fake-crash": True}
    with pytest.raises(CheckFailedError, match=r"1 runtime\(s\) could not be measured: fake-crash"):
        B._fail_on_tampered(report)


def test_bench_command_compare_fails_on_regression(trained_run: Path, tmp_path: Path) -> None:
    common = {**_quick(trained_run, tmp_path), "min_calls": 30, "min_time": 0.02, "rounds": 2}
    first = B.bench_command(**{**common, "output_dir": str(tmp_path / "a")})
    old = first.to_json()
    for row in old["rows"]:  # pretend the old run was ten times faster
        for key in ("p50_us", "quantiles_us", "round_p50s_us"):
            row[key] = np.divide(row[key], 10).tolist()
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    with pytest.raises(CheckFailedError, match="regressed"):
        B.bench_command(**{**common, "output_dir": str(tmp_path / "b")}, compare=str(old_path))
    assert (tmp_path / "b" / "bench.json").is_file()  # written before failing
    same = B.BenchReport.load(tmp_path / "a" / "bench.json")
    assert {c.status for c in B.compare_reports(same, same)} == {"unchanged"}


def test_bench_command_checks_its_options_before_timing(
    trained_run: Path, tmp_path: Path, monkeypatch
) -> None:
    def no_timing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("timed although an option was wrong")

    quick = _quick(trained_run, tmp_path)
    report = B.bench_command(**quick)
    old = report.to_json()
    old["network"] = "PyTorchCNN"
    other = tmp_path / "cnn-bench.json"
    other.write_text(json.dumps(old))
    monkeypatch.setattr(B, "bench", no_timing)
    with pytest.raises(UsageError, match="regression_threshold must be above 0"):
        B.bench_command(**quick, compare=str(tmp_path / "out" / "bench.json"),
                        regression_threshold=-1)  # fmt: skip
    with pytest.raises(UsageError, match="benchmarks a PyTorchCNN, this checkpoint holds a "):
        B.bench_command(**quick, compare=str(other))
    with pytest.raises(UsageError, match="is the report this run would replace"):
        B.bench_command(**quick, compare=quick["output_dir"] + "/bench.json")  # the baseline
    with pytest.raises(UsageError, match="--compare_by must be one of p50, eager; got 'mean'"):
        B.bench_command(**quick, compare=str(tmp_path / "out" / "bench.json"), compare_by="mean")


def test_bench_command_takes_batch_sizes_with_commas(trained_run: Path, tmp_path: Path) -> None:
    quick = {**_quick(trained_run, tmp_path), "batch_sizes": "1, 2"}
    assert {row.batch for row in B.bench_command(**quick).rows} == {1, 2}
    with pytest.raises(UsageError, match="whole numbers"):
        B.bench_command(**{**quick, "batch_sizes": "1,x"})


def test_bench_command_says_when_batch_sizes_repeat(
    trained_run: Path, tmp_path: Path, capsys
) -> None:
    quick = {**_quick(trained_run, tmp_path), "batch_sizes": "2,1,2", "runtimes": "eager"}
    assert [row.batch for row in B.bench_command(**quick).rows] == [2, 1]
    assert "bench: --batch_sizes repeats 2; each batch size is measured once" in (
        capsys.readouterr().err
    )


def test_bench_command_takes_model_for_a_lone_state_dict(trained_run: Path, tmp_path: Path) -> None:
    import shutil

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(trained_run / "model.pt", lone / "model.pt")  # no run.json beside it
    quick = {**_quick(trained_run, tmp_path), "checkpoint": str(lone / "model.pt")}
    with pytest.raises(UsageError, match="pass --model NAME"):
        B.bench_command(**quick)
    report = B.bench_command(**quick, model="mlp")
    assert report.network == "PyTorchMLP" and report.rows


def test_bench_command_out_of_memory_is_one_error(
    trained_run: Path, tmp_path: Path, monkeypatch
) -> None:
    def oom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3e11")

    monkeypatch.setattr(B, "bench", oom)
    with pytest.raises(B.BenchOutOfMemoryError, match=r"out of memory .*\[1\].*smaller"):
        B.bench_command(**_quick(trained_run, tmp_path))
    assert not (tmp_path / "out" / "bench.json").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"threads": 0}, "--threads must be 1 to"),
        ({"threads": 100_000}, "(this machine's cores), got 100000"),
        ({"device": "tpu"}, "tpu"),
        ({"batch_sizes": "0"}, "--batch_sizes must be positive"),
    ],
)
def test_bench_options_are_checked_before_the_checkpoint_is_read(
    tmp_path: Path, option: dict, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        B.bench_command(str(tmp_path / "missing.ckpt"), **option)
    assert capsys.readouterr().err == ""  # nothing said before the one error


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_on_cuda_alone_without_a_gpu_keeps_earlier_reports(
    trained_run: Path, tmp_path: Path
) -> None:
    quick = _quick(trained_run, tmp_path)
    B.bench_command(**quick)
    before = (tmp_path / "out" / "bench.json").read_bytes()
    nothing = r"nothing was measured \(cuda: no CUDA device\); reports in "
    with pytest.raises(CheckFailedError, match=nothing):
        B.bench_command(**quick, device="cuda")
    assert (tmp_path / "out" / "bench.json").read_bytes() == before
    # Nothing measured: a new output folder is not even created.
    with pytest.raises(CheckFailedError, match="nothing was measured"):
        B.bench_command(**{**quick, "output_dir": str(tmp_path / "new" / "out")}, device="cuda")
    assert not (tmp_path / "new").exists()
    # A damaged artifact as well: still "nothing was measured" with the real cause first.
    (tmp_path / "no-exports" / "torchscript").mkdir()  # a format folder with no manifest
    both = nothing[: -len(r"\); reports in ")] + "; 1 runtime.s. could not be measured: torchscript"
    with pytest.raises(CheckFailedError, match=both):
        B.bench_command(**{**quick, "runtimes": "all"}, device="cuda")
    assert (tmp_path / "out" / "bench.json").read_bytes() == before


def test_bench_finishes_an_export_killed_while_publishing(
    trained_run: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from toolkit.export import export_command

    exports = tmp_path / "exports"
    export_command(str(trained_run / "model.ckpt"), "torchscript", str(exports))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    # The state a killed two-format publish leaves: torchscript staged, not yet placed.
    (exports / "torchscript").rename(exports / f".torchscript.{dead}.partial")
    (exports / f".publish.{dead}.journal").write_text('["torchscript", "onnx"]')
    quick = {**_quick(trained_run, tmp_path), "exports": str(exports), "runtimes": "torchscript"}
    report = B.bench_command(**quick)
    assert "torchscript" in [r.runtime for r in report.rows]
    assert sorted(p.name for p in exports.iterdir()) == ["torchscript"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"exports": "/no/such/exports"}, "no exports folder /no/such/exports"),
        ({"runtimes": "all,foo"}, "unknown runtime or format 'foo'"),
        ({"runtimes": " , "}, "no runtime given"),
    ],
)
def test_bench_refuses_a_missing_exports_folder_and_unknown_runtimes(
    trained_run: Path, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        B.bench_command(**{**_quick(trained_run, tmp_path), **change})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_time": -5}, "--max_time must be 0 to 3600"),
        ({"max_time": 0}, "--max_time must be above 0"),
        ({"max_time": float("inf")}, "--max_time must be 0 to 3600"),
        ({"min_time": 1e308}, "--min_time must be 0 to 3600"),  # once "nothing was measured ()"
        ({"warmup_calls": -1}, "--warmup_calls must be 0 or more"),
        ({"warmup_calls": 10**12}, "--warmup_calls must be at most 1,000,000"),
        ({"min_calls": 2_000_000}, "--min_calls must be at most 1,000,000"),
        ({"rounds": 1_000_000}, "--rounds must be at most 100"),  # once killed at 24 GB
    ],
)
def test_bench_timing_options_are_checked_by_their_own_names(
    trained_run: Path, tmp_path: Path, change: dict[str, float], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        B.bench_command(**{**_quick(trained_run, tmp_path), **change})


def _exports_with_a_damaged_torchscript(
    trained_run: Path, tmp_path: Path, formats: str = "torchscript"
) -> tuple[Path, dict[str, Any]]:
    """``formats`` exported, with a byte appended to torchscript's model.pt; bench options."""
    from toolkit.export import export_command

    exports = tmp_path / "exports"
    export_command(str(trained_run / "model.ckpt"), formats, str(exports))
    with open(exports / "torchscript" / "model.pt", "ab") as f:
        f.write(b"x")
    return exports, {**_quick(trained_run, tmp_path), "exports": str(exports), "runtimes": "all"}


def test_bench_with_a_tampered_artifact_measures_the_rest_and_fails(
    trained_run: Path, tmp_path: Path
) -> None:
    _, quick = _exports_with_a_damaged_torchscript(trained_run, tmp_path)
    with pytest.raises(CheckFailedError, match=r"1 artifact.*failed their checksum.*model\.pt"):
        B.bench_command(**quick)
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert "eager" in {r["runtime"] for r in report["rows"]}  # the rest was measured


def _rehash(folder: Path, **change: Any) -> None:
    """Edit ``folder``'s manifest and make its file hashes match again (a careful tamperer)."""
    from toolkit.manifest import MANIFEST_NAME, sha256_file

    data = json.loads((folder / MANIFEST_NAME).read_text())
    for entry in data["files"]:
        entry["sha256"] = sha256_file(folder / entry["name"])
        entry["size"] = (folder / entry["name"]).stat().st_size
    (folder / MANIFEST_NAME).write_text(json.dumps({**data, **change}))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"format": "bogus"}, "unknown format 'bogus'"),
        ({"format": None}, "'format' must be a string, got null"),
        ({"input_shape": ["batch", 1, 14, 56]}, r"input shape \(batch, 1, 14, 56\) differs"),
    ],
)
def test_bench_counts_an_artifact_with_a_contradicting_manifest_as_broken(
    trained_run: Path, tmp_path: Path, change: dict, reason: str
) -> None:
    # Once measured as "onnxruntime (bogus) ... PASS" and named fastest with exit 0, or
    # skipped with exit 0 while verify failed the same folder.
    from toolkit.export import export_command

    exports = tmp_path / "exports"
    export_command(str(trained_run / "model.ckpt"), "torchscript", str(exports))
    _rehash(exports / "torchscript", **change)
    quick = {**_quick(trained_run, tmp_path), "exports": str(exports), "runtimes": "all"}
    with pytest.raises(CheckFailedError, match=f"1 runtime.s. could not be measured: .*{reason}"):
        B.bench_command(**quick)
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert {r["runtime"] for r in report["rows"]}.isdisjoint({"torchscript"})


def test_bench_error_names_checksum_failures_and_counts_the_other_broken_rows(
    trained_run: Path, tmp_path: Path
) -> None:
    exports, quick = _exports_with_a_damaged_torchscript(
        trained_run, tmp_path, "torchscript,exported-program"
    )
    _rehash(exports / "exported-program", input_shape=None)
    with pytest.raises(CheckFailedError) as caught:
        B.bench_command(**quick)
    message = str(caught.value)
    assert message.startswith("1 artifact(s) failed their checksum: ")
    assert "model.pt" in message
    assert "; also 1 runtime(s) could not be measured: exported-program" in message
    assert "'input_shape' must be a list" in message


# -- CLI -----------------------------------------------------------------------------------
def test_cli_bench_on_a_trained_run(trained_run: Path, tmp_path: Path) -> None:
    result = run_cli(
        "bench", "--checkpoint", str(trained_run / "model.ckpt"), "--device", "cpu,cuda",
        "--batch_sizes", "[1,8]", "--min_time", "0.05", "--min_calls", "20", "--rounds", "1",
        "--runtimes", "[eager,torch-compile]", "--threads", "1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "exports" / trained_run.name
    for name in ("bench.json", "bench.md", "bench.png"):
        assert (folder / name).is_file()
    data = json.loads((folder / "bench.json").read_text())
    assert {(r["runtime"], r["batch"]) for r in data["rows"]} == {
        (n, b) for n in ("eager", "torch-compile") for b in (1, 8)
    }
    assert data["environment"]["threads"]["intra_op"] == 1
    assert "verdict cpu batch 1: fastest correct" in result.stdout
    assert "No CUDA runtime is found" not in result.stderr  # torch's import-time warning
    if not torch.cuda.is_available():
        assert "on cuda: skipped (no CUDA device)" in result.stdout
        assert any(s["device"] == "cuda" for s in data["skipped"])
        environment = data["environment"]  # the schema's keys, null without a GPU
        assert environment["gpu"] is environment["gpu_capability"] is environment["driver"] is None


def test_wrong_input_file_gives_one_usage_error(trained_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 3, 28, 28), dtype=np.float32))
    args = {"checkpoint": str(trained_run / "model.ckpt"), "output_dir": str(tmp_path / "out")}
    with pytest.raises(UsageError) as info:
        B.bench_command(**args, inputs=str(bad))
    assert "\n" not in str(info.value) and "shape (N, 1, 28, 28)" in str(info.value)
    np.save(bad, np.zeros((4, 1, 28, 28), dtype=np.float64))
    with pytest.raises(UsageError, match="float32"):
        B.bench_command(**args, inputs=str(bad))
    assert not (tmp_path / "out").exists()  # nothing written


# -- every registered runtime --------------------------------------------------------------
def _runtime_param(name: str) -> Any:
    if "cuda" in RUNTIMES.get(name).device_types and "cpu" not in RUNTIMES.get(name).device_types:
        return pytest.param(name, "cuda", marks=requires_cuda, id=f"{name}-cuda")
    return pytest.param(name, "cpu", id=f"{name}-cpu")


def test_every_registered_runtime_has_a_source() -> None:
    for name in RUNTIMES.names():
        assert name in B.MODULE_RUNTIMES or name in ARTIFACT_FORMATS, f"{name} has no bench test"


@pytest.mark.parametrize(("runtime", "device"), [_runtime_param(n) for n in RUNTIMES.names()])
def test_every_runtime_benchmarks(
    runtime: str, device: str, mlp: torch.nn.Module, artifacts: Path
) -> None:
    fmt = ARTIFACT_FORMATS.get(runtime)
    source = mlp if fmt is None else artifacts / fmt
    specs = [B.RuntimeSpec("eager", mlp)]
    if runtime != "eager":
        specs.append(B.RuntimeSpec(runtime, source, fmt))
    report = B.bench(specs, SHAPE, device, [1, 3], threads=1, protocol=FAST)
    assert not [s for s in report.skipped if s.runtime == runtime], report.skipped
    for batch in (1, 3):
        row = report.row(runtime, device, batch, fmt)
        assert row.n >= FAST.min_calls and math.isfinite(row.p50_us)
        assert row.parity == "PASS", row.parity_detail
        assert row.load_s >= 0 and row.first_call_us > 0


def test_torch_compile_recompile_during_measurement_is_an_error(mlp: torch.nn.Module) -> None:
    from toolkit.runtimes.compile import RecompileError

    torch._dynamo.reset()  # forget shapes earlier tests compiled at
    runner = RUNTIMES.get("torch-compile")(mlp, input_shape=SHAPE, threads=1, dynamic=False)
    runner.infer(runner.prepare(torch.randn(2, *SHAPE)))
    with pytest.raises(RecompileError, match="recompiled"):
        runner.infer(torch.randn(5, *SHAPE))  # a shape it never warmed up at


@requires_cuda
def test_cuda_graph_replays_match_eager(mlp: torch.nn.Module) -> None:
    runner = RUNTIMES.get("cuda-graph")(mlp, device="cuda", input_shape=SHAPE)
    x = torch.randn(4, *SHAPE)
    expected = mlp.cuda()(x.cuda()).detach().cpu().numpy()
    np.testing.assert_allclose(runner(x), expected, atol=1e-5)


def test_artifacts_of_other_weights_are_not_benchmarked(trained_run: Path, tmp_path: Path) -> None:
    from toolkit.export import export_command
    from toolkit.manifest import weights_sha256
    from toolkit.models import PyTorchMLP

    torch.manual_seed(5)
    other = tmp_path / "other.pt"
    torch.save(PyTorchMLP(784, 10).state_dict(), other)
    exports = tmp_path / "exports"
    export_command(str(other), "torchscript", str(exports), model="mlp")
    quick = {**_quick(trained_run, tmp_path), "exports": str(exports), "runtimes": "all"}
    with pytest.raises(UsageError, match=r"exported from other weights \(.*other\.pt\)"):
        B.bench_command(**quick)
    assert not (tmp_path / "out").exists()
    # none of those artifacts asked for: nothing to refuse, nothing said of them
    report = B.bench_command(**{**quick, "runtimes": "eager"})
    assert [r.runtime for r in report.rows] == ["eager"]
    assert not [s for s in report.skipped if "other weights" in s.reason]
    network = PyTorchMLP(784, 10)
    specs, skipped = B.discover_runtimes(network, exports, None, weights_sha256(network))
    assert [s.runtime for s in specs if s.format] == []
    (skip,) = [s for s in skipped if s.format == "torchscript"]
    assert skip.reason.startswith("exported from other weights")


def test_cuda_timing_loop_runs_with_the_garbage_collector_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the CPU loop: a collection inside the timed calls would land in p99 (no GPU needed)."""
    import gc

    class FakeEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            self.t = 0.0

        def record(self) -> None:
            self.t = time.perf_counter()

        def synchronize(self) -> None:
            pass

        def elapsed_time(self, end: FakeEvent) -> float:
            return (end.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    seen: list[bool] = []
    assert gc.isenabled()
    events, wall = B.time_calls_cuda(lambda _: seen.append(gc.isenabled()), None, 5, 0.0, 5, 1.0)
    assert len(events) == len(wall) == 5 and seen == [False] * 5
    assert gc.isenabled()  # restored


def test_round_ratio_ci_is_as_wide_as_the_rounds_disagree() -> None:
    rng = np.random.default_rng(0)
    eager = [rng.normal(100, 1, 500) for _ in range(3)]
    # each round's ratio differs (the machine changed speed between rounds): 0.69, 0.66, 0.65
    drifting = [e * f for e, f in zip(eager, (0.689, 0.659, 0.647), strict=True)]
    point, lo, hi = B.round_ratio_ci(drifting, eager)
    assert point == pytest.approx(0.659, abs=0.003)
    assert lo < 0.652 and hi > 0.685  # the per-call bootstrap gave about [0.661, 0.663]
    _, pooled_lo, pooled_hi = B.bootstrap_ratio_ci(drifting, eager)
    assert pooled_hi - pooled_lo < (hi - lo) / 3
    # straddling 1 round by round: a tie, not "1.01x faster"
    mixed = [e * f for e, f in zip(eager, (0.997, 1.014, 1.015), strict=True)]
    _, lo, hi = B.round_ratio_ci(mixed, eager)
    assert lo <= 1.0 <= hi
    # a steady effect stays tight and excludes 1
    _, lo, hi = B.round_ratio_ci([e * 0.5 for e in eager], eager)
    assert 0.49 < lo <= hi < 0.51
    # one round: the per-call bootstrap of that round
    one = B.round_ratio_ci([drifting[0]], [eager[0]])
    assert one[1] < one[0] < one[2] and one[2] - one[1] < 0.01


def test_compare_names_what_differs_between_the_reports() -> None:
    protocol = {"threads": 2, "io_boundary": "device", "rounds": 5}
    environment = {"cpu_model": "A", "gpu": None, "torch": "2.14.1", "onnxruntime": "1.32.0"}
    old = B.BenchReport(environment, protocol, ["cpu"], [1], [], [], [], "")
    same = B.BenchReport(dict(environment), dict(protocol), ["cpu"], [1], [], [], [], "")
    assert B.comparability_notes(old, same) == []
    other = B.BenchReport(
        {**environment, "cpu_model": "B"}, {**protocol, "threads": 1}, ["cpu"], [1], [], [], [], ""
    )
    assert B.comparability_notes(old, other) == [
        "threads was 2 in the old report, 1 now",
        "CPU was A in the old report, B now",
    ]
    # The same row from an artifact exported again (another exporter, say): said so.
    old.rows = [_row("onnxruntime", 10.0, format="onnx"), _row("eager", 50.0)]
    same.rows = [_row("onnxruntime", 10.0, format="onnx"), _row("eager", 50.0)]
    old.rows[0].artifact_sha256 = same.rows[0].artifact_sha256 = "a" * 64
    assert B.comparability_notes(old, same) == []
    same.rows[0].artifact_sha256 = "b" * 64
    assert B.comparability_notes(old, same) == [
        "the onnx artifact(s) were exported again since the old report"
    ]


def test_bench_rows_record_their_artifacts_manifest(trained_run: Path, tmp_path: Path) -> None:
    from toolkit.export import export_command
    from toolkit.manifest import sha256_file

    exports = tmp_path / "exports"
    export_command(str(trained_run / "model.ckpt"), format="torchscript", output_dir=str(exports))
    quick = {**_quick(trained_run, tmp_path), "exports": str(exports), "runtimes": "torchscript"}
    report = B.bench_command(**quick)
    row = report.row("torchscript", "cpu", 1, "torchscript")
    assert row.artifact_sha256 == sha256_file(exports / "torchscript" / "manifest.json")
    assert report.row("eager", "cpu", 1).artifact_sha256 is None


def test_mixed_clocks_on_one_device_are_flagged() -> None:
    from toolkit.bench_report import summary_lines

    rows = [_row("eager", 100.0), _row("onnxruntime", 50.0, format="onnx")]
    report = B.BenchReport({}, {}, ["cpu"], [1], rows, [], [], "")
    assert not [ln for ln in summary_lines(report) if "different clocks" in ln]
    rows[1].clock = B.CLOCK_CUDA_WALL
    (line,) = [ln for ln in summary_lines(report) if "different clocks" in ln]
    assert line.startswith("warning: rows on cpu were timed on different clocks")


def test_verdict_says_when_the_runner_up_was_faster_round_by_round() -> None:
    """Pooled p50s and per-round ratios can disagree when rounds differ in calls and speed."""
    speeds, b_calls, r_calls = [1, 1, 2, 2, 2], [400, 400, 20, 20, 20], [20, 20, 400, 400, 400]
    rng = np.random.default_rng(0)
    b = [rng.normal(s, s * 0.001, n) for s, n in zip(speeds, b_calls, strict=True)]
    r = [rng.normal(0.99 * s, s * 0.001, n) for s, n in zip(speeds, r_calls, strict=True)]
    rows = [_row("eager", 100.0), _row("b", float(np.median(np.concatenate(b)))),
            _row("r", float(np.median(np.concatenate(r))))]  # fmt: skip
    samples = {rows[0].key: [rng.normal(100 * s, 1, 50) for s in speeds]}
    samples[rows[1].key], samples[rows[2].key] = b, r
    (verdict,) = B.choose_verdicts(rows, ["cpu"], [1], samples)
    assert (verdict.runtime, verdict.runner_up, verdict.tied) == ("b", "r", False)
    assert verdict.runner_up_ci[1] < 1.0 and "but r was faster round by round" in verdict.text


def test_bench_puts_back_the_callers_thread_count(trained_run: Path, tmp_path: Path) -> None:
    # bench left torch at its --threads (every core by default); verify, after it in the
    # same process, then ran with that instead of the caller's setting.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        B.bench_command(**{**_quick(trained_run, tmp_path), "threads": 2})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _live(runtime: str, fn: Any) -> Any:
    spec = B.RuntimeSpec(runtime, None, "onnx-int8" if runtime != "eager" else None)
    return B._Live(spec, fn, 0.0)


def test_quick_check_refuses_a_single_output_column() -> None:
    # Label agreement of one column is always 1.0: all-zero outputs once passed.
    lives = [_live("eager", lambda x: np.ones((len(x), 1))), _live("onnxruntime", np.zeros)]
    with pytest.raises(UsageError, match=r"single score per sample \(shape \(4, 1\)\)"):
        B.quick_parity(lives, (3,), 4)


def test_quick_check_is_skipped_when_eager_cannot_run() -> None:
    # Once a RuntimeError traceback (float64 network); eager's own row says why it failed.
    def broken(x: torch.Tensor) -> np.ndarray:
        raise RuntimeError("mat1 and mat2 must have the same dtype")

    lives = [_live("eager", broken), _live("onnxruntime", lambda x: np.zeros((len(x), 3)))]
    assert B.quick_parity(lives, (3,), 4) == {}


def test_a_network_without_input_shape_is_benchmarked_on_own_inputs(
    shapeless_weights: Path, tmp_path: Path
) -> None:
    """``--inputs`` gives the shape a network does not declare; without them, one clear line."""
    quick = {
        "checkpoint": str(shapeless_weights),
        "model": "shapeless",
        "runtimes": "eager",
        "exports": None,
        "batch_sizes": [2],
        "threads": 1,
        "min_calls": 10,
        "min_time": 0.01,
        "rounds": 1,
        "output_dir": str(tmp_path / "out"),
    }
    with pytest.raises(UsageError, match="Shapeless declares no input_shape; pass --inputs"):
        B.bench_command(**quick)
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.ones((8, 12), np.float32))
    report = B.bench_command(**quick, inputs=str(inputs))
    assert report.row("eager", "cpu", 2).parity == "PASS"


def test_a_single_column_network_is_refused_before_any_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The quick check after the sweep refused it, after minutes of timing.
    weights = tmp_path / "one.pt"
    torch.save(build_model("mlp", num_classes=1).state_dict(), weights)

    def timed(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("timed before refusing")

    monkeypatch.setattr(B, "measure", timed)
    with pytest.raises(UsageError, match=r"single score per sample \(shape \(2, 1\)\)"):
        B.bench_command(
            str(weights),
            runtimes="eager,torch-compile",
            model="mlp",
            model_kwargs={"num_classes": 1},
            output_dir=str(tmp_path / "out"),
        )
    assert not (tmp_path / "out").exists()


def test_parity_scope_names_overridden_tolerances(tmp_path: Path) -> None:
    # "fastest correct" resting on `verify --atol 1e9 ...` said nothing of the override.
    path = tmp_path / "parity.json"
    data = {"dataset": "fashion-mnist", "split": "test", "samples": 500, "overrides": {}}
    path.write_text(json.dumps(data))
    assert B._parity_scope(path) == "fashion-mnist test, 500 samples"
    data["overrides"] = {"rtol": 1e9, "atol": 1e9, "min_agreement": 0.0}
    path.write_text(json.dumps(data))
    assert B._parity_scope(path) == (
        "fashion-mnist test, 500 samples, tolerances overridden: atol 1e+09, min_agreement 0, "
        "rtol 1e+09"
    )


def test_two_rounds_one_disturbed_do_not_double_the_speed_up() -> None:
    # Eager's first round ran while the machine was busy (8 ms instead of 35 µs): the mean
    # of the two per-round ratios claimed 10.7x where each clean comparison gives 5.5x.
    rng = np.random.default_rng(0)

    def calls(us: float) -> np.ndarray:
        return us * (1 + 0.01 * rng.standard_normal(60))

    runtime, eager = [calls(6.39), calls(6.39)], [calls(7996.0), calls(34.9)]
    point, lo, hi = B.round_ratio_ci(runtime, eager)
    assert point == pytest.approx(6.39 / 34.9, rel=0.02)
    assert lo <= point <= hi
    # an odd count keeps the plain median; an even one takes the middle value nearer 1
    assert B.median_of_rounds(np.array([0.1, 0.2, 0.4])) == 0.2
    np.testing.assert_array_equal(
        B.median_of_rounds(np.array([[0.1, 0.2, 0.4, 0.8], [1.5, 3.0, 0.9, 0.1]])), [0.4, 0.9]
    )
