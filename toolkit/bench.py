"""``toolkit bench``: latency and throughput of every runtime, side by side, same protocol.

Protocol (:func:`measure`), the same for every runtime, device and batch size:

1. Cold start: the runner's ``load()`` time, then the wall time of the first
   ``prepare + infer + synchronize`` at each batch size (for ``torch-compile`` this holds
   the compile, for ``cuda-graph`` the capture).
2. Warm-up (:func:`warm_up`): at least ``warmup_calls`` calls and ``warmup_time`` seconds.
3. Rounds: the runtimes are interleaved (A B C, B C A, C A B, ...) in ``rounds`` rounds in
   one process, because this class of machine switches speed modes over seconds; each
   round times every runtime for at least ``min_calls / rounds`` calls and
   ``min_time / rounds`` seconds, stopping early only at ``max_calls`` or ``max_time``.
   Every call is timed on its own and kept.
4. Clocks: on CPU ``time.perf_counter_ns`` around each call. On CUDA, runtimes on torch's
   stream get a pair of ``torch.cuda.Event`` around each call, followed by a wait on the
   end event, so queued asynchronous work is counted (the p50 of the wall time with that
   wait is kept as ``wall_p50_us``); other runtimes (ONNX Runtime's CUDA provider) and
   ``include_copies`` use the wall clock with a device synchronize. The report warns when
   one device's rows use different clocks.
5. I/O boundary: by default inputs are already on the device (``prepare`` runs outside the
   timed region) and outputs stay there; with ``include_copies`` each timed call is
   ``prepare`` (host to device) + ``infer`` + ``to_numpy`` (device to host), timed on the
   wall clock. The report states which one was used.
6. Threads: ``torch.set_num_threads(threads)`` and ``threads=`` to every runner (ONNX
   Runtime's intra-op pool); the default is every core this process may use.

Statistics per (runtime, device, batch): mean, std, min, p50, p90, p99, max, IQR and the
number of calls; throughput (batch / p50, and batch * calls / total time); the p50 of each
round; the ratio to eager's p50, taken round by round (the median of the per-round
ratios), with a two-level bootstrap confidence interval (calls within rounds, then
rounds), and the ratio of each round.

The verdict for each (device, batch) names the fastest runtime whose parity passed
(``parity.json`` of ``toolkit verify`` when it covers the row's runtime, format and
device; otherwise a quick check against eager on random inputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit.errors import (
    CheckFailedError,
    DataError,
    IntegrityError,
    RuntimeUnavailableError,
    ToolkitError,
    UsageError,
    first_line,
)
from toolkit.manifest import default_exports_dir, manifest_sha256
from toolkit.runtimes import RUNTIMES, Runner

SCHEMA_VERSION = 1
DEFAULT_BATCH_SIZES = (1, 8, 64, 256)
BENCH_JSON, BENCH_MD, BENCH_PNG = "bench.json", "bench.md", "bench.png"
PARITY_JSON = "parity.json"
#: Runtimes built from the network itself rather than from an exported artifact.
MODULE_RUNTIMES = ("eager", "torch-compile", "cuda-graph")
#: Extra runtimes run on artifacts of a format besides the manifest's (as ``toolkit verify``).
EXTRA_RUNTIMES: dict[str, tuple[str, ...]] = {"onnx": ("onnxruntime-iobinding",)}
#: Runtimes that run on torch's current CUDA stream, so CUDA events time them exactly.
TORCH_STREAM_RUNTIMES = frozenset(
    {"eager", "torch-compile", "cuda-graph", "torchscript", "exported-program"}
)
CLOCK_CPU = "perf_counter_ns per call"
CLOCK_CUDA_EVENTS = "cuda events per call (then wait on the end event)"
CLOCK_CUDA_WALL = "perf_counter_ns per call with device synchronize"
IO_DEVICE = "inputs already on the device; prepare() untimed, outputs left on the device"
IO_COPIES = "host->device copy + infer + device->host copy timed per call (--include_copies)"
#: Bootstrap settings (fixed seed, so a report reproduces from its samples).
BOOTSTRAP_RESAMPLES, BOOTSTRAP_CONFIDENCE, BOOTSTRAP_SEED = 1000, 0.95, 0
#: Draws per side in a bootstrap resample (caps memory and time; widens the interval a bit).
BOOTSTRAP_MAX_DRAWS = 3000
#: Random batches per benchmarked batch size in the quick parity check.
QUICK_CHECK_BATCHES = 4
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3
PASS, FAIL, UNCHECKED = "PASS", "FAIL", "UNCHECKED"
#: Percentiles stored per row (0..100) so ``--compare`` can bootstrap an old report.
SKETCH_PERCENTILES = np.arange(101)


# -- protocol ------------------------------------------------------------------------------
#: Upper bounds of the timing options: beyond them a run would not end in a working day, or
#: would hold more samples than memory (``--rounds 1000000`` was killed at 24 GB).
MAX_ROUNDS, MAX_SECONDS = 100, 3600.0


@dataclasses.dataclass
class TimingProtocol:
    """How every (runtime, device, batch) is timed; see the module docstring."""

    warmup_calls: int = 20
    warmup_time: float = 0.2
    min_calls: int = 200
    min_time: float = 1.0
    max_calls: int = 1_000_000
    max_time: float = 30.0
    rounds: int = 5
    include_copies: bool = False

    def validate(self) -> None:
        """Raise :class:`UsageError` for settings that cannot be honoured."""
        for name in ("warmup_calls", "min_calls", "max_calls", "rounds"):
            least = 0 if name == "warmup_calls" else 1
            if int(getattr(self, name)) < least:
                raise UsageError(f"--{name} must be {least} or more, got {getattr(self, name)}")
        if self.rounds > MAX_ROUNDS:  # each round keeps its own samples per row
            raise UsageError(f"--rounds must be at most {MAX_ROUNDS}, got {self.rounds}")
        if self.warmup_calls > self.max_calls:
            raise UsageError(
                f"--warmup_calls must be at most {self.max_calls:,}, got {self.warmup_calls:,}"
            )
        for name in ("warmup_time", "min_time", "max_time"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
                raise UsageError(f"--{name} must be 0 to {MAX_SECONDS} seconds, got {value}")
        if self.max_time <= 0:
            raise UsageError(f"--max_time must be above 0, got {self.max_time}")
        if self.max_calls < self.min_calls:  # max_calls is a safety cap, not an option
            raise UsageError(
                f"--min_calls must be at most {self.max_calls:,}, got {self.min_calls:,}"
            )

    @property
    def io_boundary(self) -> str:
        """The I/O boundary in words."""
        return IO_COPIES if self.include_copies else IO_DEVICE


def warm_up(call: Callable[[Any], Any], arg: Any, calls: int, seconds: float) -> int:
    """Call ``call(arg)`` at least ``calls`` times and for at least ``seconds``; returns calls."""
    clock = time.perf_counter
    deadline = clock() + seconds
    n = 0
    while n < calls or clock() < deadline:
        call(arg)
        n += 1
    return n


def time_calls(
    call: Callable[[Any], Any],
    arg: Any,
    min_calls: int,
    min_time: float,
    max_calls: int,
    max_time: float,
) -> np.ndarray:
    """Time ``call(arg)`` call by call on ``perf_counter_ns`` until both minimums are met.

    Stops after ``min_calls`` calls and ``min_time`` seconds, or at ``max_calls`` calls, or
    after ``max_time`` seconds (then possibly below ``min_calls``). The loop does nothing
    but the two clock reads and one list store per call, with the garbage collector off
    (as ``timeit``), so that it adds as little as possible to what it measures.

    Returns:
        The latency of every call in seconds (float64).
    """
    clock = time.perf_counter_ns
    samples = [0] * max_calls
    n = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        begin = clock()
        enough = begin + int(min_time * 1e9)
        give_up = begin + int(max_time * 1e9)
        while n < max_calls:
            t0 = clock()
            call(arg)
            t1 = clock()
            samples[n] = t1 - t0
            n += 1
            if (n >= min_calls and t1 >= enough) or t1 >= give_up:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(samples[:n], dtype=np.float64) * 1e-9


def time_calls_cuda(
    call: Callable[[Any], Any],
    arg: Any,
    min_calls: int,
    min_time: float,
    max_calls: int,
    max_time: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Time ``call(arg)`` on CUDA with an event pair per call, waiting on the end event.

    The wait after each call keeps calls from overlapping, so each sample is one call's
    latency including its launch overhead; it is not inside the event pair. The garbage
    collector is off, as in :func:`time_calls`, so its pauses land in no row's tail.

    Returns:
        (event latencies, wall-clock latencies including the wait), in seconds.
    """
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    clock = time.perf_counter_ns
    events_ms: list[float] = []
    wall_ns: list[int] = []
    torch.cuda.synchronize()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        begin = clock()
        enough = begin + int(min_time * 1e9)
        give_up = begin + int(max_time * 1e9)
        while len(events_ms) < max_calls:
            t0 = clock()
            start.record()
            call(arg)
            end.record()
            end.synchronize()
            t1 = clock()
            events_ms.append(start.elapsed_time(end))
            wall_ns.append(t1 - t0)
            if (len(events_ms) >= min_calls and t1 >= enough) or t1 >= give_up:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(events_ms) * 1e-3, np.asarray(wall_ns, dtype=np.float64) * 1e-9


# -- statistics ----------------------------------------------------------------------------
def latency_stats(samples: np.ndarray) -> dict[str, float]:
    """Summary statistics of per-call latencies (seconds in, seconds out).

    Percentiles use numpy's linear interpolation and are made monotone, so
    ``min <= p25 <= p50 <= p75 <= p90 <= p99 <= max`` always holds.

    Raises:
        ValueError: no samples.
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no samples")
    q = np.maximum.accumulate(np.percentile(s, [0, 25, 50, 75, 90, 99, 100]))
    return {
        "n": int(s.size),
        "mean": float(s.mean()),
        "std": float(s.std(ddof=1)) if s.size > 1 else 0.0,
        "min": float(q[0]),
        "p25": float(q[1]),
        "p50": float(q[2]),
        "p75": float(q[3]),
        "p90": float(q[4]),
        "p99": float(q[5]),
        "max": float(q[6]),
        "iqr": float(q[3] - q[1]),
        "total": float(s.sum()),
    }


def _resampled_medians(
    strata: Sequence[np.ndarray], resamples: int, rng: np.random.Generator, cap: int
) -> np.ndarray:
    # Scale every stratum by the same factor, so the strata keep their weights in the
    # pooled median (rounds with more calls count more, as in the point estimate).
    total = sum(s.size for s in strata)
    scale = min(1.0, cap / total)
    parts = []
    for values in strata:
        size = max(1, round(values.size * scale))
        parts.append(values[rng.integers(0, values.size, size=(resamples, size))])
    return np.median(np.concatenate(parts, axis=1), axis=1)


def bootstrap_ratio_ci(
    numerator: Sequence[np.ndarray],
    denominator: Sequence[np.ndarray],
    confidence: float = BOOTSTRAP_CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    max_draws: int = BOOTSTRAP_MAX_DRAWS,
) -> tuple[float, float, float]:
    """Median ratio ``median(numerator) / median(denominator)`` with a bootstrap CI.

    A percentile bootstrap, stratified: each resample draws with replacement within each
    stratum (round) of each side, in proportion to the stratum's size and at most
    ``max_draws`` values per side (so the width does not shrink without end as calls
    grow), then takes the ratio of the pooled medians. It ignores how much the rounds
    disagree; :func:`round_ratio_ci` does not, and is what the reports use.

    Args:
        numerator: Samples of the numerator, one array per stratum.
        denominator: Samples of the denominator, one array per stratum.
        confidence: Two-sided confidence level.
        resamples: Bootstrap resamples.
        seed: Seed of the resampling (results are reproducible).
        max_draws: Cap on the draws per side and resample.

    Returns:
        (point estimate, lower bound, upper bound).
    """
    num = [np.asarray(s, dtype=np.float64) for s in numerator if len(s)]
    den = [np.asarray(s, dtype=np.float64) for s in denominator if len(s)]
    if not num or not den:
        raise ValueError("bootstrap needs samples on both sides")
    point = float(np.median(np.concatenate(num)) / np.median(np.concatenate(den)))
    rng = np.random.default_rng(seed)
    ratios = _resampled_medians(num, resamples, rng, max_draws) / _resampled_medians(
        den, resamples, rng, max_draws
    )
    lo, hi = _percentile_interval(ratios, confidence)
    return point, lo, hi


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap ``values`` at ``confidence``."""
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def round_ratio_ci(
    numerator: Sequence[np.ndarray],
    denominator: Sequence[np.ndarray],
    confidence: float = BOOTSTRAP_CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    max_draws: int = BOOTSTRAP_MAX_DRAWS,
) -> tuple[float, float, float]:
    """The ratio of two runtimes timed in the same interleaved rounds, round by round.

    Round ``i`` of each side was measured in the same short window, so
    ``median(numerator[i]) / median(denominator[i])`` cancels the machine's speed in that
    window; the estimate is the median of these per-round ratios (for an even number of
    rounds, of the two middle ratios the one nearer 1, see :func:`median_of_rounds`). The
    interval is a
    two-level bootstrap: each resample redraws the calls within every round (at most
    ``max_draws`` per side in all, as :func:`bootstrap_ratio_ci`) and then redraws the rounds
    themselves, so it is as wide as the rounds disagree, not only as the calls scatter.
    With one round it is the per-call bootstrap of that round. Rounds must be paired
    (same count on both sides); otherwise this falls back to :func:`bootstrap_ratio_ci`.

    Returns:
        (point estimate, lower bound, upper bound).
    """
    num = [np.asarray(s, dtype=np.float64) for s in numerator]
    den = [np.asarray(s, dtype=np.float64) for s in denominator]
    if len(num) != len(den) or not num or any(not len(s) for s in (*num, *den)):
        return bootstrap_ratio_ci(numerator, denominator, confidence, resamples, seed, max_draws)
    rounds = len(num)
    point = float(
        median_of_rounds(
            np.array([np.median(a) / np.median(b) for a, b in zip(num, den, strict=True)])
        )
    )
    rng = np.random.default_rng(seed)
    per_round = np.column_stack(
        [
            _resampled_medians([a], resamples, rng, max(1, max_draws // rounds))
            / _resampled_medians([b], resamples, rng, max(1, max_draws // rounds))
            for a, b in zip(num, den, strict=True)
        ]
    )  # (resamples, rounds): each round's ratio, its calls redrawn
    picks = rng.integers(0, rounds, size=(resamples, rounds))
    ratios = median_of_rounds(np.take_along_axis(per_round, picks, axis=1))
    lo, hi = _percentile_interval(ratios, confidence)
    return point, min(lo, point), max(hi, point)


def median_of_rounds(ratios: np.ndarray) -> np.ndarray:
    """The median of per-round ratios along the last axis; for an even count, of the two
    middle ratios the one nearer 1 (in log terms), not their mean.

    With 2 rounds the mean of the middle pair is the mean of both: one round taken while
    the machine was busy (eager at 8 ms instead of 35 µs) turned a 5.4x speed-up into a
    claimed 10.7x. The nearer-to-1 ratio claims the smaller difference of the two, which a
    disturbed round can inflate only when both rounds were disturbed.
    """
    values = np.sort(np.asarray(ratios, dtype=np.float64), axis=-1)
    count = values.shape[-1]
    if count % 2:
        return values[..., count // 2]
    low, high = values[..., count // 2 - 1], values[..., count // 2]
    return np.where(np.abs(np.log(low)) <= np.abs(np.log(high)), low, high)


def sample_from_sketch(quantiles: Sequence[float], n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` values from the distribution given by its percentiles 0..100."""
    q = np.asarray(quantiles, dtype=np.float64)
    grid = np.linspace(0.0, 100.0, q.size)
    return np.interp(rng.uniform(0.0, 100.0, size=n), grid, q)


# -- environment ---------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: Other processes using at least this many cores on average while timing get a warning.
BUSY_CORES = 0.25


def _process_cores() -> set[int]:
    """The cores any thread of this process may run on: the union of every thread's
    affinity (``OMP_PROC_BIND`` pins the main thread to one core and the OpenMP workers
    to others), else the main thread's, else none."""
    cores: set[int] = set()
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except (OSError, ValueError):
        threads = [0]
    for tid in threads:
        try:
            cores |= os.sched_getaffinity(tid)
        except (OSError, AttributeError):  # a thread that ended, or not Linux
            continue
    return cores


def _cpu_busy_seconds(cores: set[int]) -> float | None:
    """Busy CPU seconds so far of ``cores``, from ``/proc/stat`` (user, nice, system, irq,
    softirq and steal: time a hypervisor gave to other machines is lost to this one too);
    None where there is no ``/proc/stat``."""
    names = {f"cpu{c}" for c in cores}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):  # not Linux
        return None
    busy = 0
    for line in lines:
        fields = line.split()
        if len(fields) >= 9 and fields[0] in names:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
            busy += user + nice + system + irq + softirq + steal
    return busy / ticks if busy else None


class OtherCpuUse:
    """How many cores other processes kept busy during the measured blocks, on average.

    Over the blocks run inside :meth:`measuring` (the timed rounds: not loading, compiling
    or warming up, whose helper processes are the bench's own): the busy time of the cores
    this process's threads may use (``/proc/stat``) minus this process's own CPU time, over
    the wall time. Timings taken while other work shares the cores are slower and noisier
    (OpenMP and ORT thread pools wait on preempted threads), which no number of rounds can
    remove: a report should say so.
    """

    def __init__(self) -> None:
        self.busy = self.own = self.wall = 0.0
        self.known = True

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """Count the block's busy, own and wall time."""
        cores = _process_cores()
        busy, own, wall = _cpu_busy_seconds(cores), time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            cores |= _process_cores()  # threads started in the block
            busy_end = _cpu_busy_seconds(cores)
            if busy is None or busy_end is None:
                self.known = False
            else:
                self.busy += busy_end - busy
                self.own += time.process_time() - own
                self.wall += time.perf_counter() - wall

    def cores(self) -> float | None:
        """Average cores used by other processes in the measured blocks; None if unknown:
        no ``/proc/stat``, nothing measured, or this process used more CPU time than its
        cores were busy (cores outside the ones seen, so the figure cannot be trusted)."""
        if not self.known or self.wall <= 0:
            return None
        other = self.busy - self.own
        if other < -0.1 * self.wall:  # beyond /proc/stat's tick rounding
            return None
        return max(0.0, other / self.wall)


def busy_phrase(report: BenchReport) -> str | None:
    """``other processes used 0.9 of 2 cores``, when they used at least :data:`BUSY_CORES`
    while ``report`` was timed; None otherwise or when it was not measured."""
    other = report.environment.get("other_cpu_cores")
    if not isinstance(other, int | float) or isinstance(other, bool) or other < BUSY_CORES:
        return None
    cores = report.environment.get("usable_cores")
    of = f" of {cores}" if isinstance(cores, int) else ""
    return f"other processes used {other:.2g}{of} cores on average"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _gpu_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def collect_environment(threads: int, devices: Sequence[str]) -> dict[str, Any]:
    """CPU, GPU, versions and thread settings behind the numbers."""
    env: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "threads": {
            "intra_op": threads,
            "torch_num_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "onnxruntime_intra_op": threads,
            **{
                var: os.environ.get(var)
                for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
                if os.environ.get(var)
            },
        },
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "cuda_runtime": torch.version.cuda,
        "gpu": None,
        "gpu_capability": None,
        "driver": None,
    }
    if any(d.startswith("cuda") for d in devices) and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["driver"] = _gpu_driver()
    return env


# -- report data ---------------------------------------------------------------------------
def _label(runtime: str, fmt: str | None) -> str:
    return runtime if fmt in (None, runtime) else f"{runtime} ({fmt})"


@dataclasses.dataclass
class BenchRow:
    """Latency statistics of one (runtime, format, device, batch); times in microseconds."""

    runtime: str
    format: str | None
    device: str
    batch: int
    n: int
    mean_us: float
    std_us: float
    min_us: float
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    iqr_us: float
    throughput_sps: float
    throughput_mean_sps: float
    load_s: float
    first_call_us: float
    clock: str
    round_p50s_us: list[float]
    quantiles_us: list[float]
    ratio_to_eager: float | None = None
    ratio_ci: list[float] | None = None
    round_ratios: list[float] | None = None
    wall_p50_us: float | None = None
    below_min_calls: bool = False
    parity: str = UNCHECKED
    parity_source: str | None = None
    parity_detail: str | None = None
    #: sha256 of the artifact's ``manifest.json`` (which holds every file's sha256): tells
    #: ``--compare`` when a row's artifact was exported again. None for module runtimes.
    artifact_sha256: str | None = None

    @property
    def label(self) -> str:
        """``runtime`` or ``runtime (format)``."""
        return _label(self.runtime, self.format)

    @property
    def key(self) -> tuple[str, str | None, str, int]:
        """Identity of the row across reports."""
        return (self.runtime, self.format, self.device, self.batch)


@dataclasses.dataclass
class Skipped:
    """Something that was asked for and not measured, with the reason."""

    runtime: str
    device: str
    reason: str
    format: str | None = None
    batch: int | None = None
    #: An artifact or runtime that should have run and failed (damaged, failed to load or
    #: to run), as opposed to one that does not apply here (no CUDA, not exported).
    broken: bool = False

    def text(self) -> str:
        """One line for the terminal and the Markdown report."""
        what = _label(self.runtime, self.format)
        device = "every device" if self.device == "*" else self.device
        where = device if self.batch is None else f"{device} batch {self.batch}"
        return f"{what} on {where}: skipped ({self.reason})"


@dataclasses.dataclass
class Verdict:
    """The fastest runtime that passed parity at one (device, batch)."""

    device: str
    batch: int
    runtime: str | None
    format: str | None
    p50_us: float | None
    speedup_vs_eager: float | None
    speedup_ci: list[float] | None
    excluded_faster: list[str]
    text: str
    #: The next-fastest runtime that passed parity, and how many times slower it is than
    #: this one (median ratio, bootstrap CI). ``tied`` when the CI includes 1: the two
    #: cannot be told apart on this machine, so the choice between them is noise.
    runner_up: str | None = None
    runner_up_ratio: float | None = None
    runner_up_ci: list[float] | None = None
    tied: bool | None = None


@dataclasses.dataclass
class BenchReport:
    """Schema of ``bench.json``, documented in ``docs/bench-schema.md``."""

    environment: dict[str, Any]
    protocol: dict[str, Any]
    devices: list[str]
    batch_sizes: list[int]
    rows: list[BenchRow]
    skipped: list[Skipped]
    verdicts: list[Verdict]
    parity_source: str
    network: str | None = None
    checkpoint: str | None = None
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """Plain-data form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchReport:
        """Inverse of :meth:`to_json`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in fields}
        data["rows"] = [_from_dict(BenchRow, r) for r in data.get("rows", [])]
        data["skipped"] = [_from_dict(Skipped, s) for s in data.get("skipped", [])]
        data["verdicts"] = [_from_dict(Verdict, v) for v in data.get("verdicts", [])]
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> BenchReport:
        """Read a ``bench.json``; raise :class:`DataError` for a missing or invalid file."""
        path = Path(path)
        try:
            report = cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DataError(f"no benchmark report at {path}") from None
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # ValueError: not UTF-8
            raise DataError(f"{path} is not a bench.json report ({first_line(exc)})") from None
        problem = report._type_problem()
        if problem:
            raise DataError(f"{path} is not a bench.json report ({problem})")
        return report

    def _type_problem(self) -> str | None:
        """What in a loaded report does not have the type ``--compare`` reads, if anything."""
        version = self.schema_version
        if isinstance(version, bool) or not isinstance(version, int):
            return f"schema_version {version!r} is not an integer"
        if version > SCHEMA_VERSION:
            return f"schema {version}, from a newer toolkit; this one reads up to {SCHEMA_VERSION}"
        for name in ("environment", "protocol"):
            if not isinstance(getattr(self, name), dict):
                return f"{name} is not an object"
        if not isinstance(self.devices, list) or not isinstance(self.batch_sizes, list):
            return "devices or batch_sizes is not a list"

        def numbers(value: Any) -> bool:
            return isinstance(value, list) and all(_is_number(v) for v in value)

        for row in self.rows:
            names_ok = isinstance(row.runtime, str) and isinstance(row.device, str)
            if not names_ok or not isinstance(row.format, str | None):
                return "a row's runtime, device or format is not text"
            scalars = (row.p50_us, row.n)
            if not all(_is_number(v) for v in scalars) or not isinstance(row.batch, int):
                return f"row {row.runtime!r} has a p50_us, n or batch that is not a number"
            if not row.p50_us > 0:  # a time; compared as a ratio
                return f"row {row.runtime!r} has a p50_us of {row.p50_us}, not above 0"
            if not numbers(row.quantiles_us) or not numbers(row.round_p50s_us):
                return f"row {row.runtime!r} has quantiles_us or round_p50s_us not numbers"
            problem = _sketch_problem(row)
            if problem:
                return f"row {row.runtime!r} {problem}"
        return None

    def row(self, runtime: str, device: str, batch: int, format: str | None = None) -> BenchRow:
        """The row of ``runtime`` (and ``format``) at (device, batch); KeyError if absent."""
        for row in self.rows:
            if row.key == (runtime, format, device, batch):
                return row
        raise KeyError((runtime, format, device, batch))


def _sketch_problem(row: BenchRow) -> str | None:
    """What makes a row's ``quantiles_us`` unusable with its ``p50_us``, if anything.

    ``--compare`` takes the point estimate from ``p50_us`` and the interval from the
    percentiles: a hand-edited p50 that is not their median was judged by the percentiles
    alone, without a word.
    """
    q = np.asarray(row.quantiles_us, dtype=np.float64)
    if q.size != SKETCH_PERCENTILES.size:
        return f"has {q.size} quantiles_us, expected {SKETCH_PERCENTILES.size} (percentiles 0-100)"
    if not np.isfinite(q).all() or q[0] < 0 or (np.diff(q) < -1e-3).any():
        return "has quantiles_us that are not increasing times"
    median = float(q[SKETCH_PERCENTILES.size // 2])
    if abs(median - row.p50_us) > 1e-3 + 1e-6 * abs(row.p50_us):  # quantiles keep 4 decimals
        return (
            f"has a p50_us of {row.p50_us:g} but its quantiles_us put the median at "
            f"{median:g}; was it edited?"
        )
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in fields})


# -- what to run ---------------------------------------------------------------------------
@dataclasses.dataclass
class RuntimeSpec:
    """One runtime to benchmark: its name, what it runs, and the artifact format if any.

    ``runner_class`` overrides the registry lookup (tests use it for fake runners).
    """

    runtime: str
    source: Any
    format: str | None = None
    runner_class: type[Runner] | None = None
    #: sha256 of the artifact's ``manifest.json``, recorded in its rows; None for a network.
    artifact_sha256: str | None = None

    @property
    def label(self) -> str:
        """``runtime`` or ``runtime (format)``."""
        return _label(self.runtime, self.format)

    def runner_type(self) -> type[Runner]:
        """The runner class (registry lookup unless given)."""
        return self.runner_class or RUNTIMES.get(self.runtime)


def _wanted(runtime: str, fmt: str | None, wanted: set[str] | None) -> bool:
    if wanted is None:
        return True
    return runtime in wanted or (
        fmt is not None and (fmt in wanted or f"{runtime}:{fmt}" in wanted)
    )


def discover_runtimes(
    model: nn.Module,
    exports: Path | None,
    runtimes: Sequence[str] | None = None,
    weights: str | None = None,
) -> tuple[list[RuntimeSpec], list[Skipped]]:
    """The runtimes to benchmark: the network's own ones plus every artifact in ``exports``.

    Args:
        model: The eager network (eager, torch-compile and cuda-graph run it).
        exports: Folder of artifact folders (``<format>/manifest.json``), or None.
        runtimes: Runtime or format names to keep (None: all). Eager is always kept: it is
            the reference of every ratio.
        weights: ``weights_sha256`` of ``model``: an artifact whose manifest records other
            weights is skipped (its speed would be another network's).

    Returns:
        (specs, skipped): what to run, and what was found but cannot be run, with reasons.
    """
    from toolkit.manifest import MANIFEST_NAME, Manifest, from_other_weights

    wanted = None if runtimes is None else set(runtimes) | {"eager"}
    specs = [
        RuntimeSpec(name, model)
        for name in MODULE_RUNTIMES
        if name in RUNTIMES and _wanted(name, None, wanted)
    ]
    skipped: list[Skipped] = []
    if exports is None or not exports.is_dir():
        where = "no exports folder given" if exports is None else f"no folder {exports}"
        skipped.append(
            Skipped("artifacts", "*", f"{where}; run `toolkit export` to benchmark artifacts")
        )
        return specs, skipped
    from toolkit.formats import FORMATS

    if (exports / MANIFEST_NAME).is_file():  # one artifact folder, as verify accepts
        folders = [exports]
    else:
        folders = sorted(p for p in exports.iterdir() if (p / MANIFEST_NAME).is_file())
        for p in sorted(exports.iterdir()):
            if p.is_dir() and p.name in FORMATS.names() and p not in folders:
                reason = f"{p} has no {MANIFEST_NAME}: an incomplete or damaged export"
                skipped.append(Skipped(p.name, "*", reason, p.name, broken=True))
    if not folders and not skipped:
        skipped.append(Skipped("artifacts", "*", f"no artifact folders in {exports}"))
    for folder in folders:
        try:
            manifest = Manifest.load(folder)
        except ToolkitError as exc:
            skipped.append(Skipped(folder.name, "*", str(exc), folder.name, broken=True))
            continue
        other = from_other_weights(manifest, weights)
        if other is not None:
            runtimes = (manifest.runtime, *EXTRA_RUNTIMES.get(manifest.format, ()))
            if any(_wanted(rt, manifest.format, wanted) for rt in runtimes):
                skipped.append(Skipped(manifest.runtime, "*", other, manifest.format))
            continue
        network_shape = tuple(getattr(model, "input_shape", ()) or ())
        artifact_shape = tuple(manifest.input_shape[1:])
        if network_shape and artifact_shape != network_shape:
            reason = (
                f"artifact input shape (batch, {', '.join(map(str, artifact_shape))}) "
                f"differs from the network's (batch, {', '.join(map(str, network_shape))})"
            )
            # With the same weights recorded, the manifest contradicts them: damaged. An old
            # manifest without the fingerprint is more likely another network's export.
            damaged = manifest.weights_sha256 is not None
            skipped.append(Skipped(manifest.runtime, "*", reason, manifest.format, broken=damaged))
            continue
        for runtime in (manifest.runtime, *EXTRA_RUNTIMES.get(manifest.format, ())):
            if not _wanted(runtime, manifest.format, wanted):
                continue
            if runtime not in RUNTIMES:
                reason = f"runtime '{runtime}' is not registered"
                skipped.append(Skipped(runtime, "*", reason, manifest.format))
                continue
            specs.append(RuntimeSpec(runtime, folder, manifest.format,
                                     artifact_sha256=manifest_sha256(folder)))  # fmt: skip
    if wanted is not None:
        known = {s.runtime for s in specs} | {s.format for s in specs} | {"eager"}
        known |= {s.runtime for s in skipped}
        for name in sorted(wanted - known):
            if name in FORMATS.names():  # a format that was not exported (or not found)
                skipped.append(Skipped(name, "*", f"no {name} artifact in {exports}", name))
                continue
            if name not in RUNTIMES:
                raise _unknown_runtime(name)
            skipped.append(Skipped(name, "*", f"no artifact in {exports} runs on '{name}'"))
    return specs, skipped


# -- inputs --------------------------------------------------------------------------------
def check_inputs(inputs: Any, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """User inputs as a float32 tensor (N, *input_shape), or one clear :class:`UsageError`.

    ``input_shape`` None (a network that declares none) takes any shape (N, ...).
    """
    expected = f"(N, {', '.join(map(str, input_shape or ['...']))})"
    if isinstance(inputs, np.ndarray):
        if inputs.dtype != np.float32:
            raise UsageError(f"bench inputs must be float32 {expected}, got dtype {inputs.dtype}")
        inputs = torch.from_numpy(np.ascontiguousarray(inputs))
    if not isinstance(inputs, torch.Tensor):
        raise UsageError(f"bench inputs must be a float32 array, got {type(inputs).__name__}")
    if inputs.dtype != torch.float32:
        raise UsageError(f"bench inputs must be float32 {expected}, got dtype {inputs.dtype}")
    from toolkit.parity import fits_input_shape

    if not fits_input_shape(inputs.shape, input_shape):
        raise UsageError(
            f"bench inputs must have shape {expected} for this model, got {tuple(inputs.shape)}"
        )
    if len(inputs) == 0:
        raise UsageError("bench inputs hold no samples")
    return inputs.contiguous()


def read_input_file(path: str | Path, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """Read a ``.npy`` file of float32 samples (N, *input_shape) for ``--inputs``."""
    path = Path(path)
    if path.suffix != ".npy":
        raise UsageError(f"--inputs {path}: expected a .npy file")
    if path.is_dir():
        raise DataError(f"--inputs {path}: a folder, not a file")
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"--inputs {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"--inputs {path}: not a readable .npy array ({exc})") from None
    return check_inputs(array, input_shape)


def _batch_of(inputs: torch.Tensor, batch: int) -> torch.Tensor:
    index = torch.arange(batch) % len(inputs)
    return inputs[index].contiguous()


# -- the sweep -----------------------------------------------------------------------------
@dataclasses.dataclass
class _Live:
    """A loaded runner and what was measured on it at the current batch size."""

    spec: RuntimeSpec
    runner: Runner
    load_s: float
    call: Callable[[Any], Any] | None = None
    arg: Any = None
    first_call_s: float = 0.0
    clock: str = CLOCK_CPU
    rounds: list[np.ndarray] = dataclasses.field(default_factory=list)
    wall_rounds: list[np.ndarray] = dataclasses.field(default_factory=list)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_runners(
    device: str, specs: Sequence[RuntimeSpec], shape: tuple[int, ...], threads: int
) -> tuple[list[_Live], list[Skipped]]:
    live: list[_Live] = []
    skipped: list[Skipped] = []
    kind = torch.device(device).type
    for spec in specs:
        cls = spec.runner_type()
        if kind not in cls.device_types:
            reason = f"runs on {', '.join(cls.device_types)} only"
            skipped.append(Skipped(spec.runtime, device, reason, spec.format))
            continue
        try:
            runner = cls(spec.source, device=device, input_shape=shape, threads=threads)
            load_s = runner.load()
        except Exception as exc:  # one runtime failing must not hide the others
            reason = f"load failed: {_one_line(exc)}"
            # A runtime unavailable on this machine (no CUDA provider in a CPU-only
            # onnxruntime) is not applicable, not a damaged artifact.
            broken = not isinstance(exc, RuntimeUnavailableError)
            skipped.append(Skipped(spec.runtime, device, reason, spec.format, broken=broken))
            continue
        live.append(_Live(spec, runner, load_s))
    return live, skipped


def _timed_call(live: _Live, x: torch.Tensor, include_copies: bool) -> None:
    """Choose what one timed call is, and on which clock."""
    runner = live.runner
    on_cuda = runner.device.type == "cuda"
    if include_copies:
        prepare, infer, to_numpy, sync = (
            runner.prepare,
            runner.infer,
            runner.to_numpy,
            runner.synchronize,
        )

        def with_copies(host: torch.Tensor) -> Any:
            out = to_numpy(infer(prepare(host)))
            sync()
            return out

        live.call, live.arg = with_copies, x
        live.clock = CLOCK_CUDA_WALL if on_cuda else CLOCK_CPU
        return
    live.arg = runner.prepare(x)
    if not on_cuda:
        live.call, live.clock = runner.infer, CLOCK_CPU
    elif live.spec.runtime in TORCH_STREAM_RUNTIMES:
        live.call, live.clock = runner.infer, CLOCK_CUDA_EVENTS
    else:  # another stream (e.g. ONNX Runtime's CUDA provider): wall clock with a sync
        infer, sync = runner.infer, runner.synchronize

        def infer_and_sync(prepared: Any) -> Any:
            out = infer(prepared)
            sync()
            return out

        live.call, live.clock = infer_and_sync, CLOCK_CUDA_WALL


def _first_call(live: _Live, x: torch.Tensor) -> float:
    runner = live.runner
    start = time.perf_counter()
    runner.infer(runner.prepare(x))
    runner.synchronize()
    return time.perf_counter() - start


def _measure_block(live: _Live, protocol: TimingProtocol, rounds: int) -> None:
    assert live.call is not None
    args = (
        live.call,
        live.arg,
        max(1, math.ceil(protocol.min_calls / rounds)),
        protocol.min_time / rounds,
        max(1, protocol.max_calls // rounds),
        protocol.max_time / rounds,
    )
    if live.clock == CLOCK_CUDA_EVENTS:
        events, wall = time_calls_cuda(*args)
        live.rounds.append(events)
        live.wall_rounds.append(wall)
    else:
        live.rounds.append(time_calls(*args))


def measure(
    lives: Sequence[_Live],
    x: torch.Tensor,
    protocol: TimingProtocol,
    skipped: list[Skipped],
    device: str,
    batch: int,
    others: OtherCpuUse | None = None,
) -> list[_Live]:
    """Cold start, warm-up and interleaved rounds at one (device, batch); see the module doc.

    Runners that fail are recorded in ``skipped`` and left out of the result. ``others``
    measures other processes' CPU use over the rounds.
    """
    ready: list[_Live] = []
    for live in lives:
        live.rounds, live.wall_rounds = [], []
        try:
            live.first_call_s = _first_call(live, x)
            _timed_call(live, x, protocol.include_copies)
            assert live.call is not None
            warm_up(live.call, live.arg, protocol.warmup_calls, protocol.warmup_time)
        except UsageError:
            raise
        except Exception as exc:
            reason = f"failed: {_one_line(exc)}"
            spec = live.spec
            skipped.append(Skipped(spec.runtime, device, reason, spec.format, batch, True))
            continue
        ready.append(live)
    with others.measuring() if others is not None else contextlib.nullcontext():
        for r in range(protocol.rounds):
            order = ready[r % len(ready) :] + ready[: r % len(ready)] if ready else []
            for live in order:
                if live not in ready:
                    continue
                try:
                    _measure_block(live, protocol, protocol.rounds)
                except Exception as exc:  # e.g. a recompile during measurement
                    reason = f"failed during measurement: {_one_line(exc)}"
                    spec = live.spec
                    skipped.append(Skipped(spec.runtime, device, reason, spec.format, batch, True))
                    ready.remove(live)
    for live in ready:
        live.call = live.arg = None  # free device buffers before the next batch size
    return ready


def _row(live: _Live, device: str, batch: int, protocol: TimingProtocol) -> BenchRow:
    samples = np.concatenate(live.rounds)
    st = latency_stats(samples)
    us = 1e6
    wall_p50 = float(np.median(np.concatenate(live.wall_rounds))) * us if live.wall_rounds else None
    return BenchRow(
        runtime=live.spec.runtime,
        format=live.spec.format,
        device=device,
        batch=batch,
        n=st["n"],
        mean_us=st["mean"] * us,
        std_us=st["std"] * us,
        min_us=st["min"] * us,
        p50_us=st["p50"] * us,
        p90_us=st["p90"] * us,
        p99_us=st["p99"] * us,
        max_us=st["max"] * us,
        iqr_us=st["iqr"] * us,
        throughput_sps=batch / st["p50"] if st["p50"] > 0 else math.inf,
        throughput_mean_sps=batch * st["n"] / st["total"] if st["total"] > 0 else math.inf,
        load_s=live.load_s,
        first_call_us=live.first_call_s * us,
        clock=live.clock,
        round_p50s_us=[float(np.median(r)) * us for r in live.rounds],
        quantiles_us=[round(float(v) * us, 4) for v in np.percentile(samples, SKETCH_PERCENTILES)],
        wall_p50_us=wall_p50,
        below_min_calls=st["n"] < protocol.min_calls,
        artifact_sha256=live.spec.artifact_sha256,
    )


def _add_ratios(rows: list[BenchRow], lives: dict[str, _Live]) -> None:
    eager = next((lives[k] for k, v in lives.items() if v.spec.runtime == "eager"), None)
    if eager is None:
        return
    for row in rows:
        live = lives[row.label]
        point, lo, hi = round_ratio_ci(live.rounds, eager.rounds)
        row.ratio_to_eager, row.ratio_ci = point, [lo, hi]
        row.round_ratios = [
            float(np.median(a) / np.median(b))
            for a, b in zip(live.rounds, eager.rounds, strict=False)
        ]


# -- parity --------------------------------------------------------------------------------
def read_parity(
    path: str | Path, checkpoint: str | Path | None = None, exports: str | Path | None = None
) -> dict[tuple[str, str | None, str], tuple[str, str]]:
    """Statuses from a ``toolkit verify`` report: {(runtime, format, device): (status, why)}.

    Rows of kind ``reload`` (other ways of loading the same eager network) are left out;
    the reference row stands for ``eager``. An unreadable file gives an empty mapping.

    With ``checkpoint``, the report counts only if it was made for these exact weights
    (its ``checkpoint_sha256``); with ``exports``, an artifact row counts only while the
    artifact's ``manifest.json`` is the one that was verified (its ``manifest_sha256``).
    A report too old to say (schema 1) counts for nothing then. Use :func:`parity_notes`
    for why rows were left out.
    """
    return _read_parity(path, checkpoint, exports)[0]


def parity_notes(
    path: str | Path, checkpoint: str | Path | None = None, exports: str | Path | None = None
) -> list[str]:
    """Why :func:`read_parity` left rows of ``path`` out (empty when it kept them all)."""
    return _read_parity(path, checkpoint, exports)[1]


def _read_parity(
    path: str | Path, checkpoint: str | Path | None, exports: str | Path | None
) -> tuple[dict[tuple[str, str | None, str], tuple[str, str]], list[str]]:
    from toolkit.manifest import sha256_file

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # also not UTF-8
        return {}, [f"{path} is unreadable"]
    if not isinstance(data, dict) or not isinstance(data.get("rows", []), list):
        return {}, [f"{path} is not a parity report"]
    if checkpoint is not None:
        recorded = data.get("checkpoint_sha256")
        if recorded is None:
            return {}, [f"{path} does not record its checkpoint; rerun `toolkit verify`"]
        if recorded != sha256_file(checkpoint):
            return {}, [f"{path} was made for other weights than {checkpoint}"]
    try:
        device = torch.device(str(data.get("device", "cpu"))).type
    except RuntimeError:
        return {}, [f"{path} names an unknown device {data.get('device')!r}"]
    statuses: dict[tuple[str, str | None, str], tuple[str, str]] = {}
    notes = []
    for row in data.get("rows", []):
        if not isinstance(row, dict) or row.get("kind") == "reload":
            continue
        status = str(row.get("status", "")).upper()
        if status not in (PASS, FAIL):
            continue
        runtime = row.get("runtime") or row.get("name")
        fmt = None if row.get("kind") == "reference" else row.get("format")
        if not isinstance(runtime, str) or not isinstance(fmt, str | None):
            continue  # not a row this version wrote
        if exports is not None and row.get("kind") == "artifact":
            recorded = row.get("manifest_sha256")
            if recorded is None or manifest_sha256(Path(exports) / str(fmt)) != recorded:
                notes.append(f"{fmt} changed since {path} was written")
                continue
        reasons = row.get("reasons")
        why = "; ".join(map(str, reasons)) if isinstance(reasons, list) and reasons else status
        statuses[(str(runtime), fmt, device)] = (status, why)
    return statuses, notes


def _judged_by_labels(fmt: str | None) -> bool:
    """Whether a format passes parity on label agreement (reduced precision: fp16, int8)."""
    from toolkit.formats import FORMATS

    return fmt is not None and fmt in FORMATS.names() and FORMATS.get(fmt).judged_by_labels


def _parity_scope(path: Path) -> str:
    """What a ``parity.json`` checked, e.g. ``fashion-mnist test, 500 samples``: a PASS from
    ``verify --limit 500`` is not one from the whole split, nor one under tolerances that
    ``verify --atol ...`` overrode (named: "correct" then means correct by those)."""
    from toolkit.reload import read_json_object

    data = read_json_object(path)
    samples, dataset = data.get("samples"), data.get("dataset")
    what = " ".join(str(v) for v in (dataset, data.get("split")) if isinstance(v, str))
    if what and isinstance(data.get("data_dir"), str):
        what += f" from {data['data_dir']}"
    count = f"{samples:,} samples" if isinstance(samples, int) else "samples not recorded"
    scope = f"{what}, {count}" if what else count
    overrides = data.get("overrides")
    if isinstance(overrides, dict) and overrides:
        given = ", ".join(
            f"{name} {value:g}" if isinstance(value, int | float) else f"{name} {value}"
            for name, value in sorted(overrides.items())
        )
        scope += f", tolerances overridden: {given}"
    return scope


def _format_tolerance(fmt: str | None) -> tuple[float, float, bool, float]:
    from toolkit.formats import FORMATS

    if fmt is not None and fmt in FORMATS:
        f = FORMATS.get(fmt)
        return f.atol, f.rtol, f.judged_by_labels, f.min_agreement
    return DEFAULT_ATOL, DEFAULT_RTOL, False, 1.0


def _refuse_unjudgeable(network: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
    """Refuse a network whose outputs are not (batch, classes >= 2) before any timing:
    :func:`quick_parity` could not judge the other runtimes' labels. A network that
    cannot run on such a batch is left to its eager row to report."""
    from toolkit.parity import class_scores_problem

    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(1234))
    try:
        with torch.no_grad():
            shape = tuple(network(x).shape)
    except Exception:  # eager's row says why it failed
        return
    problem = class_scores_problem(shape, 2)
    if problem is not None:
        raise UsageError(f"the network {problem} (bench checks the other runtimes' labels)")


def quick_parity(
    lives: Sequence[_Live], input_shape: tuple[int, ...], batch: int
) -> dict[str, tuple[str, str]]:
    """Compare each runner with eager on a few random batches: {label: (status, detail)}.

    Values must pass ``|cand - ref| <= atol + rtol*|ref|`` with the format's tolerances
    (1e-4/1e-3 for runtimes without a format); formats judged by labels need top-1
    agreement of at least the format's ``min_agreement``. Random inputs are a weaker test
    than ``toolkit verify`` on real data.
    """
    from toolkit.parity import class_scores_problem

    eager = next((live for live in lives if live.spec.runtime == "eager"), None)
    if eager is None or len(lives) == 1:  # nothing to compare with
        return {}
    generator = torch.Generator().manual_seed(1234)
    xs = [
        torch.randn((batch, *input_shape), generator=generator) for _ in range(QUICK_CHECK_BATCHES)
    ]
    try:
        refs = [eager.runner(x) for x in xs]
    except UsageError:
        raise
    except Exception:  # eager's own row already says why it failed
        return {}
    problem = class_scores_problem(refs[0].shape, batch)
    if problem is not None:
        raise UsageError(f"the network {problem} (bench checks the other runtimes' labels)")
    results: dict[str, tuple[str, str]] = {}
    for live in lives:
        if live is eager:
            continue
        atol, rtol, by_labels, min_agreement = _format_tolerance(live.spec.format)
        try:
            outs = [live.runner(x) for x in xs]
        except UsageError:
            raise
        except Exception as exc:
            results[live.spec.label] = (FAIL, f"quick check failed: {_one_line(exc)}")
            continue
        ref, out = np.concatenate(refs), np.concatenate(outs)
        if out.shape != ref.shape or not np.isfinite(out).all():
            results[live.spec.label] = (FAIL, f"output shape {out.shape} or non-finite values")
            continue
        max_abs = float(np.abs(out - ref).max())
        agreement = float((out.argmax(1) == ref.argmax(1)).mean())
        ok = (
            agreement >= min_agreement
            if by_labels
            else bool(np.all(np.abs(out - ref) <= atol + rtol * np.abs(ref)))
        )
        detail = f"quick check: max abs {max_abs:.2e}, top-1 agreement {agreement:.3f}"
        results[live.spec.label] = (PASS if ok else FAIL, detail)
    return results


def _parity_of(
    row: BenchRow,
    verified: dict[tuple[str, str | None, str], tuple[str, str]],
    quick: dict[tuple[str, int], tuple[str, str]],
) -> None:
    device = torch.device(row.device).type
    if row.runtime == "eager" and row.format is None:
        row.parity, row.parity_source, row.parity_detail = PASS, "reference", "the reference"
        return
    found = verified.get((row.runtime, row.format, device))
    if found is not None:
        row.parity, row.parity_detail = found
        row.parity_source = PARITY_JSON
    elif (row.label, row.batch) in quick:
        row.parity, row.parity_detail = quick[(row.label, row.batch)]
        row.parity_source = "quick-check"


# -- verdicts ------------------------------------------------------------------------------
def _fmt_us(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.3g} s"
    if value >= 1e3:
        return f"{value / 1e3:.3g} ms"
    return f"{value:.3g} us"


def choose_verdicts(
    rows: Sequence[BenchRow],
    devices: Sequence[str],
    batch_sizes: Sequence[int],
    samples: Mapping[tuple[str, str | None, str, int], Sequence[np.ndarray]] | None = None,
) -> list[Verdict]:
    """For each (device, batch): the fastest (lowest p50) row whose parity is PASS.

    A faster row whose parity failed or was not checked is never chosen; it is named in
    ``excluded_faster``. With the per-round ``samples`` of the rows (by ``row.key``), the
    winner is also compared with the next-fastest passing row by a bootstrap CI of their
    p50 ratio, and the verdict says when the two are tied within noise.
    """
    verdicts = []
    for device in devices:
        for batch in batch_sizes:
            here = sorted(
                (r for r in rows if r.device == device and r.batch == batch),
                key=lambda r: r.p50_us,
            )
            if not here:
                continue
            best = next((r for r in here if r.parity == PASS), None)
            excluded = []
            for r in here:
                if r is best:
                    break
                excluded.append(f"{r.label} ({r.parity.lower()})")
            head = f"{device} batch {batch}: "
            if best is None:
                text = head + "no runtime passed parity"
                verdicts.append(
                    Verdict(device, batch, None, None, None, None, None, excluded, text)
                )
                continue
            speedup = ci = None
            text = f"{head}fastest correct = {best.label}, {_fmt_us(best.p50_us)} p50"
            if _judged_by_labels(best.format):  # fp16/int8: correct means within its tolerance
                text += " (reduced precision: passed on label agreement, not value parity)"
            if best.ratio_to_eager and best.ratio_ci:
                speedup = 1.0 / best.ratio_to_eager
                ci = [1.0 / best.ratio_ci[1], 1.0 / best.ratio_ci[0]]
                text += f", {speedup:.2f}x eager [CI {ci[0]:.2f}–{ci[1]:.2f}]"
            runner = next((r for r in here if r.parity == PASS and r is not best), None)
            versus: dict[str, Any] = {}
            if runner is not None and samples and best.key in samples and runner.key in samples:
                ratio, lo, hi = round_ratio_ci(samples[runner.key], samples[best.key])
                tied = lo <= 1.0 <= hi
                versus = {
                    "runner_up": runner.label,
                    "runner_up_ratio": ratio,
                    "runner_up_ci": [lo, hi],
                    "tied": tied,
                }
                # digits enough that a bound just off 1 does not print as 1.00, like a tie
                d = next(
                    (d for d in (2, 3, 4) if tied or 1.0 not in (round(lo, d), round(hi, d))), 4
                )
                ci_text = f"{ratio:.{d}f}x [CI {lo:.{d}f}–{hi:.{d}f}]"
                if tied:
                    text += f"; tied with {runner.label} within noise ({ci_text})"
                elif hi < 1.0:  # lower pooled p50, yet slower round by round: say so
                    text += f"; but {runner.label} was faster round by round ({ci_text})"
                else:
                    text += (
                        f"; {ratio:.{d}f}x faster than {runner.label} [CI {lo:.{d}f}–{hi:.{d}f}]"
                    )
            if excluded:
                text += f"; faster but not passing: {', '.join(excluded)}"
            verdicts.append(
                Verdict(
                    device,
                    batch,
                    best.runtime,
                    best.format,
                    best.p50_us,
                    speedup,
                    ci,
                    excluded,
                    text,
                    **versus,
                )
            )
    return verdicts


# -- the library function ------------------------------------------------------------------
def _parse_devices(devices: Sequence[str] | str) -> list[str]:
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    out = []
    for item in (str(d).strip() for d in items):
        if not item:
            continue
        try:
            kind = torch.device(item).type
        except RuntimeError:
            raise UsageError(f"unknown device '{item}'; use cpu, cuda or cpu,cuda") from None
        if kind not in ("cpu", "cuda"):
            raise UsageError(f"unsupported device '{item}'; use cpu, cuda or cpu,cuda")
        if item not in out:
            out.append(item)
    if not out:
        raise UsageError("no device given; use --device cpu, cuda or cpu,cuda")
    return out


def _check_batch_sizes(batch_sizes: Sequence[int]) -> list[int]:
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise UsageError(f"--batch_sizes must be positive integers, got {list(batch_sizes)}")
    return list(dict.fromkeys(sizes))


def resolve_threads(threads: int | None) -> int:
    """The intra-op thread count: ``threads`` or every usable core."""
    from toolkit.parity import check_threads

    if threads is None:
        return usable_cores()
    check_threads(int(threads))
    return int(threads)


def bench(
    specs: Sequence[RuntimeSpec],
    input_shape: Sequence[int],
    devices: Sequence[str] | str = "cpu",
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: int | None = None,
    protocol: TimingProtocol | None = None,
    inputs: Any = None,
    parity: dict[tuple[str, str | None, str], tuple[str, str]] | None = None,
    skipped: Sequence[Skipped] = (),
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Benchmark ``specs`` on every device and batch size with one protocol.

    Args:
        specs: Runtimes to run (see :func:`discover_runtimes`); include ``eager`` for the
            ratios and the quick parity check.
        input_shape: Per-sample input shape of the network.
        devices: ``cpu``, ``cuda`` or both (list or comma-separated). CUDA without a
            device is reported as skipped, never dropped.
        batch_sizes: Batch sizes to sweep.
        threads: Intra-op threads for every runtime (default: every usable core).
        protocol: Timing settings (default :class:`TimingProtocol`).
        inputs: Float32 samples (N, *input_shape) to build batches from (cycled); default
            random normal values (seed 0).
        parity: Statuses from :func:`read_parity`; rows not covered get a quick check.
        skipped: Skips found earlier (e.g. by :func:`discover_runtimes`), carried over.
        progress: Called with a line of progress text.

    Returns:
        The :class:`BenchReport`.

    Raises:
        UsageError: bad inputs (shape, dtype), devices, batch sizes or settings.
    """
    protocol = protocol or TimingProtocol()
    protocol.validate()
    shape = tuple(int(s) for s in input_shape)
    device_list = _parse_devices(devices)
    sizes = _check_batch_sizes(batch_sizes)
    n_threads = resolve_threads(threads)
    user_inputs = inputs is not None
    if inputs is None:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn((max(sizes), *shape), generator=generator)
    inputs = check_inputs(inputs, shape)
    old_threads = torch.get_num_threads()  # put back after: a library call, not a process
    torch.set_num_threads(n_threads)
    try:
        say = progress or (lambda _line: None)
        all_skipped = list(skipped)
        rows: list[BenchRow] = []
        samples: dict[tuple[str, str | None, str, int], list[np.ndarray]] = {}
        clocks: dict[str, str] = {}
        others = OtherCpuUse()  # measured over the timed rounds
        for device in device_list:
            if device.startswith("cuda") and not torch.cuda.is_available():
                all_skipped.append(Skipped("*", device, "no CUDA device"))
                say(f"{device}: skipped (no CUDA device)")
                continue
            with torch.cuda.device(device) if device.startswith("cuda") else _no_context():
                device_rows = _bench_device(
                    device,
                    specs,
                    shape,
                    sizes,
                    inputs,
                    n_threads,
                    protocol,
                    parity or {},
                    all_skipped,
                    say,
                    samples,
                    others,
                )
            for row in device_rows:
                clocks.setdefault(f"{device}:{row.runtime}", row.clock)
            rows += device_rows
        protocol_json = {
            **dataclasses.asdict(protocol),
            "io_boundary": protocol.io_boundary,
            "clocks": clocks,
            "interleaving": "runtimes interleaved in rounds, order rotated each round",
            "per_round": "min_calls/rounds calls and min_time/rounds s per runtime and round",
            "bootstrap": {
                "resamples": BOOTSTRAP_RESAMPLES,
                "confidence": BOOTSTRAP_CONFIDENCE,
                "seed": BOOTSTRAP_SEED,
                "max_draws_per_side": BOOTSTRAP_MAX_DRAWS,
                "statistic": "median over rounds (even count: of the middle two, the one "
                "nearer 1) of median(runtime) / median(eager) in the "
                "round; calls resampled within rounds, then rounds resampled",
            },
            "threads": n_threads,
            "inputs": "user inputs, cycled" if user_inputs else "random normal (seed 0)",
        }
        other_cores = others.cores()
        environment = collect_environment(n_threads, device_list)
        environment["other_cpu_cores"] = None if other_cores is None else round(other_cores, 2)
        return BenchReport(
            environment=environment,
            protocol=protocol_json,
            devices=device_list,
            batch_sizes=sizes,
            rows=rows,
            skipped=all_skipped,
            verdicts=choose_verdicts(rows, device_list, sizes, samples),
            parity_source="",
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
    finally:
        torch.set_num_threads(old_threads)


def _bench_device(
    device: str,
    specs: Sequence[RuntimeSpec],
    shape: tuple[int, ...],
    sizes: Sequence[int],
    inputs: torch.Tensor,
    threads: int,
    protocol: TimingProtocol,
    parity: dict[tuple[str, str | None, str], tuple[str, str]],
    skipped: list[Skipped],
    say: Callable[[str], None],
    samples: dict[tuple[str, str | None, str, int], list[np.ndarray]],
    others: OtherCpuUse | None = None,
) -> list[BenchRow]:
    lives, load_skips = _load_runners(device, specs, shape, threads)
    skipped += load_skips
    rows: list[BenchRow] = []
    try:
        for batch in sizes:
            say(f"{device} batch {batch}: {len(lives)} runtimes x {protocol.rounds} rounds")
            x = _batch_of(inputs, batch)
            ready = measure(lives, x, protocol, skipped, device, batch, others)
            batch_rows = [_row(live, device, batch, protocol) for live in ready]
            _add_ratios(batch_rows, {live.spec.label: live for live in ready})
            rows += batch_rows
            for live, row in zip(ready, batch_rows, strict=True):
                samples[row.key] = live.rounds  # for the verdict's runner-up comparison
                live.rounds, live.wall_rounds = [], []
        # After the sweep, so that first calls were really cold (compile, capture). At every
        # batch size: torch.compile specialises batch 1 and a CUDA graph is per shape, so a
        # check at one size says nothing of the graphs the other sizes ran.
        unchecked = [lv for lv in lives if not _covered(lv, parity, device)]
        quick = {
            (label, batch): result
            for batch in sizes
            for label, result in quick_parity(unchecked, shape, batch).items()
        }
    finally:
        for live in lives:
            live.runner.close()
    for row in rows:
        _parity_of(row, parity, quick)
    return rows


def _no_context() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _covered(live: _Live, parity: dict, device: str) -> bool:
    if live.spec.runtime == "eager":
        return False  # the reference of the quick check itself
    return (live.spec.runtime, live.spec.format, torch.device(device).type) in parity


# -- compare -------------------------------------------------------------------------------
@dataclasses.dataclass
class RowChange:
    """The change of one row's p50 between an old and a new report."""

    runtime: str
    format: str | None
    device: str
    batch: int
    old_p50_us: float | None
    new_p50_us: float | None
    ratio: float | None
    ratio_ci: list[float] | None
    status: str  # regressed, improved, unchanged, new, missing, not run (, reference)
    #: The row's change divided by eager's change on the same device and batch, and its
    #: interval: a machine that got slower as a whole moves both and cancels here.
    vs_eager: float | None = None
    vs_eager_ci: list[float] | None = None

    @property
    def label(self) -> str:
        """``runtime`` or ``runtime (format)``."""
        return _label(self.runtime, self.format)


def change_ci(
    old: BenchRow,
    new: BenchRow,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    max_draws: int = 2000,
) -> tuple[float, float, float]:
    """new p50 / old p50 with a confidence interval that allows for between-round noise.

    Each report keeps its per-call distribution as percentiles 0..100. The interval is the
    hull of (a) a percentile bootstrap of the median ratio, drawing ``min(n, max_draws)``
    calls per side from those distributions, and (b) the extreme ratios of the round p50s
    (slowest new round over fastest old round and vice versa), because this class of
    machine changes speed between rounds in a way no per-call resampling captures.

    Returns:
        (point estimate, lower bound, upper bound).
    """
    point = new.p50_us / old.p50_us
    rng = np.random.default_rng(seed)
    n_old, n_new = min(old.n, max_draws), min(new.n, max_draws)
    old_draws = sample_from_sketch(old.quantiles_us, resamples * n_old, rng).reshape(resamples, -1)
    new_draws = sample_from_sketch(new.quantiles_us, resamples * n_new, rng).reshape(resamples, -1)
    ratios = np.median(new_draws, axis=1) / np.median(old_draws, axis=1)
    lo, hi = _percentile_interval(ratios, BOOTSTRAP_CONFIDENCE)
    lo, hi = min(lo, point), max(hi, point)
    if len(old.round_p50s_us) > 1 and len(new.round_p50s_us) > 1:
        lo = min(lo, min(new.round_p50s_us) / max(old.round_p50s_us))
        hi = max(hi, max(new.round_p50s_us) / min(old.round_p50s_us))
    return point, lo, hi


def comparability_notes(old: BenchReport, new: BenchReport) -> list[str]:
    """Settings and machine facts that differ between two reports, one phrase each: a row's
    change may come from these rather than from the code."""
    facts = [
        ("threads", "protocol", "threads"),
        ("I/O boundary", "protocol", "io_boundary"),
        ("rounds", "protocol", "rounds"),
        ("CPU", "environment", "cpu_model"),
        ("GPU", "environment", "gpu"),
        ("torch", "environment", "torch"),
        ("onnxruntime", "environment", "onnxruntime"),
    ]
    notes = []
    for name, part, key in facts:
        before, now = getattr(old, part).get(key), getattr(new, part).get(key)
        if before is not None and now is not None and before != now:
            notes.append(f"{name} was {before} in the old report, {now} now")
    artifacts = {(r.runtime, r.format): r.artifact_sha256 for r in old.rows}
    changed = sorted(
        {
            r.format or r.runtime
            for r in new.rows
            if r.artifact_sha256
            and artifacts.get((r.runtime, r.format)) not in (None, r.artifact_sha256)
        }
    )
    if changed:
        notes.append(
            f"the {', '.join(changed)} artifact(s) were exported again since the old report"
        )
    for which, report in (("the old report", old), ("this run", new)):
        phrase = busy_phrase(report)
        if phrase is not None:
            notes.append(f"{phrase} while {which} was timed")
    return notes


#: What ``--compare_by`` may judge a row's change by.
COMPARE_BY = ("p50", "eager")


def _change_status(lo: float, hi: float, threshold: float) -> str:
    if lo > 1 + threshold:
        return "regressed"
    if hi < 1 / (1 + threshold):
        return "improved"
    return "unchanged"


def compare_reports(
    old: BenchReport, new: BenchReport, threshold: float = 0.10, by: str = "p50"
) -> list[RowChange]:
    """Per-row change of p50 from ``old`` to ``new``.

    A row **regressed** when the lower bound of the confidence interval of new/old p50
    (:func:`change_ci`) exceeds ``1 + threshold``: the slowdown is beyond the threshold
    and beyond the noise. It **improved** when the upper bound is below
    ``1 / (1 + threshold)``. Otherwise it is **unchanged** (within threshold or noise).
    Rows in only one report are **new** or **missing**; an old row whose runtime, device
    or batch size this run did not ask for is **not run**.

    Every row that eager ran beside in both reports (same device and batch) also gets its
    change relative to eager's: row change / eager change, with the interval
    ``[lo / eager hi, hi / eager lo]``. With ``by="eager"`` the status is judged on that
    instead, so a machine that was slower as a whole for one of the runs does not read as a
    regression; eager's own rows are then the **reference**, and a row eager did not run
    beside is judged on its p50.
    """
    if threshold < 0:
        raise UsageError(f"--regression_threshold must be >= 0, got {threshold}")
    if by not in COMPARE_BY:
        raise UsageError(f"--compare_by must be one of {', '.join(COMPARE_BY)}; got {by!r}")
    old_rows = {row.key: row for row in old.rows}
    changes = []
    for row in new.rows:
        before = old_rows.pop(row.key, None)
        if before is None or before.p50_us <= 0:
            changes.append(
                RowChange(*row.key, None, row.p50_us, None, None, "new")  # type: ignore[misc]
            )
            continue
        point, lo, hi = change_ci(before, row)
        changes.append(
            RowChange(*row.key, before.p50_us, row.p50_us, point, [lo, hi],  # type: ignore[misc]
                      _change_status(lo, hi, threshold))
        )  # fmt: skip
    eager = {(c.device, c.batch): c for c in changes if c.runtime == "eager" and c.ratio_ci}
    for change in changes:
        reference = eager.get((change.device, change.batch))
        if change.ratio_ci is None or reference is None or change is reference:
            continue
        (lo, hi), (ref_lo, ref_hi) = change.ratio_ci, reference.ratio_ci
        change.vs_eager = change.ratio / reference.ratio  # type: ignore[operator]
        change.vs_eager_ci = [lo / ref_hi, hi / ref_lo]  # type: ignore[index]
        if by == "eager":
            change.status = _change_status(*change.vs_eager_ci, threshold)
    if by == "eager":
        for reference in eager.values():
            reference.status = "reference"
    # What this run considered: rows it measured, and what it skipped (a damaged artifact
    # folder is skipped under its format's name, so all of that format's rows count).
    considered = {(r.runtime, r.format) for r in new.rows}
    considered |= {(skip.runtime, skip.format) for skip in new.skipped}
    formats = {skip.format or skip.runtime for skip in new.skipped}
    for key, before in old_rows.items():
        asked = (before.runtime, before.format) in considered or before.format in formats
        asked = asked and before.device in new.devices and before.batch in new.batch_sizes
        status = "missing" if asked else "not run"
        changes.append(RowChange(*key, before.p50_us, None, None, None, status))  # type: ignore[misc]
    return changes


def machine_hint(changes: Sequence[RowChange]) -> str | None:
    """A line for when every p50 regression moved with eager's: the machine, not the code.

    Returns None unless some row other than eager regressed, and no such row is slower
    than eager beyond noise (the lower bound of its ``vs_eager_ci`` is at most 1). When only
    eager regressed, eager itself got slower: that is no machine effect.
    """
    regressed = [c for c in changes if c.status == "regressed" and c.runtime != "eager"]
    if not regressed or any(c.vs_eager_ci is None or c.vs_eager_ci[0] > 1 for c in regressed):
        return None
    return (
        "note: eager slowed down as much as every regressed row (vs eager within noise); "
        "the whole run may have been slower (machine load, clock): rerun, or judge by "
        "--compare_by eager"
    )


# -- the CLI verb --------------------------------------------------------------------------
def _split_ints(values: Sequence[int] | str, option: str) -> list[int]:
    """``[1, 8]`` or ``"1,8"`` as a list of ints; a :class:`UsageError` otherwise."""
    items = values.split(",") if isinstance(values, str) else list(values)
    try:
        return [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        raise UsageError(f"--{option} takes whole numbers, e.g. 1,8,64; got {values!r}") from None


def _split_names(runtimes: Sequence[str] | str) -> list[str] | None:
    """``--runtimes`` as a list of names; None for ``all``. Every name is checked."""
    from toolkit.formats import FORMATS

    items = runtimes.split(",") if isinstance(runtimes, str) else list(runtimes)
    names = [str(n).strip() for n in items if str(n).strip()]
    if not names:
        raise UsageError("no runtime given; pass --runtimes all or names such as eager,onnx")
    for name in names:
        if name != "all" and name not in RUNTIMES and name not in FORMATS.names():
            raise _unknown_runtime(name)
    return None if "all" in names else names


def _unknown_runtime(name: str) -> UsageError:
    from toolkit.formats import FORMATS

    return UsageError(
        f"unknown runtime or format '{name}'; runtimes: "
        f"{', '.join(RUNTIMES.names())}; formats: {', '.join(FORMATS.names())}"
    )


def write_outputs(report: BenchReport, folder: str | Path) -> dict[str, Path]:
    """Atomically write ``bench.json``, ``bench.md`` and ``bench.png`` into ``folder``, as a
    set: if any of them cannot be written, none is replaced."""
    from toolkit.atomic import atomic_paths, clean_stale_partials, ensure_writable_dir, write_plain
    from toolkit.bench_report import render_markdown, save_plot

    folder = ensure_writable_dir(folder)
    clean_stale_partials(folder)  # what a killed earlier bench left half-written
    paths = {"json": folder / BENCH_JSON, "md": folder / BENCH_MD, "png": folder / BENCH_PNG}
    with atomic_paths(list(paths.values())) as (json_tmp, md_tmp, png_tmp):
        write_plain(json_tmp, json.dumps(report.to_json(), indent=2) + "\n")
        write_plain(md_tmp, render_markdown(report))
        save_plot(report, png_tmp)
    return paths


class BenchOutOfMemoryError(ToolkitError):
    """A batch did not fit in memory."""

    exit_code = 1

    def __init__(self, batch_sizes: Sequence[int], exc: BaseException) -> None:
        super().__init__(
            f"out of memory while benchmarking batch sizes {list(batch_sizes)} "
            f"({first_line(exc)}); try smaller --batch_sizes"
        )


def bench_command(
    checkpoint: str,
    exports: str | None = None,
    runtimes: list[str] | str = "all",
    device: str = "cpu",
    batch_sizes: list[int] | str = list(DEFAULT_BATCH_SIZES),  # noqa: B006  (jsonargparse default)
    threads: int | None = None,
    min_calls: int = 200,
    min_time: float = 1.0,
    max_time: float = 30.0,
    warmup_calls: int = 20,
    warmup_time: float = 0.2,
    rounds: int = 5,
    include_copies: bool = False,
    inputs: str | None = None,
    output_dir: str | None = None,
    compare: str | None = None,
    regression_threshold: float = 0.10,
    compare_by: str = "p50",
    trust_pickled_file: bool = False,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> BenchReport:
    """Benchmark latency and throughput of every runtime; name the fastest correct one.

    Writes ``bench.json`` (schema: docs/bench-schema.md), ``bench.md`` and ``bench.png``
    into ``output_dir`` and prints a table, the skipped runtimes and one verdict per
    device and batch size.

    Args:
        checkpoint: Weights of the run (``runs/<run>/model.ckpt``); eager, torch-compile
            and cuda-graph run this network.
        exports: Folder of exported artifacts (default: as ``export`` writes them,
            ``exports/<run>``, or ``exports/<folder>-<file stem>`` outside a run folder).
        runtimes: Runtime or format names to run (default all); eager always runs.
        device: ``cpu``, ``cuda`` or ``cpu,cuda``.
        batch_sizes: Batch sizes to sweep: ``[1,8]`` or ``1,8``.
        threads: Intra-op threads for every runtime (default: every usable core).
        min_calls: Timed calls per (runtime, device, batch), at least.
        min_time: Timed seconds per (runtime, device, batch), at least.
        max_time: Timed seconds per (runtime, device, batch), at most (may cut min_calls;
            raised to min_time if lower).
        warmup_calls: Untimed calls before timing, at least.
        warmup_time: Untimed seconds before timing, at least.
        rounds: Interleaved rounds the timed calls are split into.
        include_copies: Time host->device and device->host copies with every call.
        inputs: A ``.npy`` file of float32 samples (N, *input_shape); default random. A
            network that declares no ``input_shape`` needs them: their shape is its.
        output_dir: Where to write the reports (default: the exports folder).
        compare: An earlier ``bench.json``: print each row's change; fail on regressions.
        regression_threshold: Relative slowdown of p50 that counts as a regression, when
            the confidence interval also rules out noise.
        compare_by: ``p50`` judges each row's own change; ``eager`` judges its change
            relative to eager's on the same device and batch, which cancels a machine that
            was slower as a whole, but cannot see a change of eager itself.
        trust_pickled_file: Allow unpickling a checkpoint you trust.
        model: Network registry name, for a weights file that does not record it.
        model_kwargs: Constructor kwargs of ``model``.

    Returns:
        The :class:`BenchReport`.

    Raises:
        CheckFailedError: ``compare`` found a regression (after the reports are written),
            or nothing could be measured (every device skipped; no files are written).
    """
    from toolkit.atomic import check_writable_dir, clean_stale_partials
    from toolkit.bench_report import print_changes, print_report
    from toolkit.manifest import weights_sha256
    from toolkit.models import declared_input_shape
    from toolkit.parity import artifact_folders, refuse_other_weights
    from toolkit.reload import load_network

    ckpt = Path(checkpoint)
    given = _split_ints(batch_sizes, "batch_sizes")
    batch_sizes = _check_batch_sizes(given)
    if len(batch_sizes) < len(given):
        repeated = sorted({b for b in given if given.count(b) > 1})
        print(
            f"bench: --batch_sizes repeats {', '.join(map(str, repeated))}; each batch size "
            "is measured once",
            file=sys.stderr,
        )
    _parse_devices(device)  # every option is checked before anything is loaded or said
    resolve_threads(threads)
    TimingProtocol(max_time=max_time).validate()  # as given, before min_time raises it
    protocol = TimingProtocol(
        warmup_calls=warmup_calls,
        warmup_time=warmup_time,
        min_calls=min_calls,
        min_time=min_time,
        max_time=max(max_time, min_time),
        rounds=rounds,
        include_copies=include_copies,
    )
    protocol.validate()
    if not (math.isfinite(regression_threshold) and regression_threshold > 0):
        raise UsageError(f"--regression_threshold must be above 0, got {regression_threshold}")
    if compare_by not in COMPARE_BY:
        raise UsageError(f"--compare_by must be one of {', '.join(COMPARE_BY)}; got {compare_by!r}")
    old = BenchReport.load(compare) if compare else None
    network = load_network(ckpt, model, model_kwargs, trust_pickled_file)
    shape = declared_input_shape(network)  # None: the shape of --inputs
    if shape is None and not inputs:
        raise UsageError(
            f"{type(network).__name__} declares no input_shape; pass --inputs with samples "
            "of the shape it takes (a .npy file, float32 (N, ...))"
        )
    if old is not None and old.network not in (None, type(network).__name__):
        raise UsageError(
            f"{compare} benchmarks a {old.network}, this checkpoint holds a "
            f"{type(network).__name__}: nothing to compare"
        )
    if exports and Path(exports).is_file():
        raise UsageError(f"--exports {exports} is a file; give the folder of format folders")
    if exports and not Path(exports).is_dir():  # the default folder may not exist yet
        raise UsageError(f"no exports folder {exports}; run `toolkit export` or fix --exports")
    names = _split_names(runtimes)
    exports_dir = Path(exports) if exports else default_exports_dir(ckpt)
    out_dir = Path(output_dir) if output_dir else exports_dir
    if compare and (out_dir / BENCH_JSON).resolve() == Path(compare).resolve():
        # The comparison would work, but the baseline would be gone and the error name a
        # file that then holds the new figures.
        raise UsageError(
            f"--compare {compare} is the report this run would replace; copy it elsewhere "
            "first (e.g. cp it to old-bench.json) or write this run with --output_dir"
        )
    user_inputs = read_input_file(inputs, shape) if inputs else None
    if shape is None and user_inputs is not None:
        shape = tuple(user_inputs.shape[1:])
    check_writable_dir(out_dir)  # fail before minutes of timing; create it only to write
    clean_stale_partials(exports_dir)  # finish or undo what a killed export left
    weights = weights_sha256(network)
    if exports_dir.is_dir():  # every artifact to run from other weights: the wrong folder
        wanted = [f for f in artifact_folders(exports_dir) if _folder_wanted(f, names)]
        refuse_other_weights(wanted, weights, ckpt, model, model_kwargs)
    specs, skipped = discover_runtimes(network, exports_dir, names, weights)
    if len(specs) > 1:  # the quick check after timing would refuse it: say so before
        _refuse_unjudgeable(network, shape)
    parity_path = exports_dir / PARITY_JSON

    def progress(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr, flush=True)

    verified: dict[tuple[str, str | None, str], tuple[str, str]] = {}
    if parity_path.is_file():
        verified, notes = _read_parity(parity_path, ckpt, exports_dir)
        for note in notes:
            progress(f"parity: {note}; those rows get a quick check")
    try:
        report = bench(
            specs,
            shape,
            device,
            batch_sizes,
            threads,
            protocol,
            user_inputs,
            verified,
            skipped,
            progress,
        )
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise BenchOutOfMemoryError(batch_sizes, exc) from None
    except RuntimeError as exc:
        if "allocate" not in str(exc) and "out of memory" not in str(exc):
            raise
        raise BenchOutOfMemoryError(batch_sizes, exc) from None
    report.network = type(network).__name__
    report.checkpoint = str(ckpt)
    report.parity_source = (
        f"{parity_path} ({_parity_scope(parity_path)}) where it covers a row, else a quick "
        "check on random inputs"
        if verified
        else "quick check against eager on random inputs (run `toolkit verify` for real data)"
    )
    if not report.rows:  # every device was skipped: no table, no report, not a success
        checksums = _checksum_text(report)
        if checksums:
            raise CheckFailedError(checksums)
        reasons = "; ".join(
            f"{skip.device}: {skip.reason}" for skip in report.skipped if skip.runtime == "*"
        ) or "; ".join(dict.fromkeys(skip.text() for skip in report.skipped[:3]))
        broken = _broken_text(report)
        if broken and broken not in reasons:
            reasons += f"; {broken}"
        raise CheckFailedError(
            f"nothing was measured ({reasons}); reports in {out_dir} left as they were"
        )
    print_report(report)
    write_outputs(report, out_dir)
    print(f"wrote {out_dir / BENCH_JSON}, {BENCH_MD}, {BENCH_PNG}")
    if old is not None:
        changes = compare_reports(old, report, regression_threshold, compare_by)
        print_changes(changes, regression_threshold, by=compare_by)
        for note in comparability_notes(old, report):
            print(f"warning: {note}; a change may come from that, not from the code")
        hint = machine_hint(changes) if compare_by == "p50" else None
        if hint:
            print(hint)
        regressed = [c for c in changes if c.status == "regressed"]
        if regressed:
            names = ", ".join(f"{c.label} {c.device} batch {c.batch}" for c in regressed)
            what = "" if compare_by == "p50" else " relative to eager"
            raise CheckFailedError(
                f"{len(regressed)} row(s) regressed{what} by more than "
                f"{regression_threshold:.0%} beyond noise against {compare}: {names}"
            )
    _fail_on_tampered(report, names)
    return report


def _folder_wanted(folder: Path, names: list[str] | None) -> bool:
    """Whether ``--runtimes`` asks for any runtime of the artifact in ``folder``."""
    from toolkit.manifest import Manifest

    if names is None:
        return True
    try:
        manifest = Manifest.load(folder)
    except ToolkitError:
        return True  # a damaged artifact is reported, wanted or not
    wanted = set(names) | {"eager"}
    runtimes = (manifest.runtime, *EXTRA_RUNTIMES.get(manifest.format, ()))
    return any(_wanted(runtime, manifest.format, wanted) for runtime in runtimes)


_CHECKSUM_PREFIX = f"load failed: {IntegrityError.__name__}: "


def _checksum_text(report: BenchReport) -> str | None:
    """The artifacts that did not match their manifest's sha256, in one phrase, or None."""
    prefix = _CHECKSUM_PREFIX
    tampered = sorted(
        {s.reason[len(prefix) :] for s in report.skipped if s.reason.startswith(prefix)}
    )
    if not tampered:
        return None
    return f"{len(tampered)} artifact(s) failed their checksum: {'; '.join(tampered)}"


def _broken_text(report: BenchReport, checksums: bool = True) -> str | None:
    """The broken skipped rows in one phrase (the first few), or None.

    With ``checksums`` False, rows that failed their checksum are left out (they are
    named by :func:`_checksum_text`).
    """
    broken = list(
        dict.fromkeys(
            s.text()
            for s in report.skipped
            if s.broken and (checksums or not s.reason.startswith(_CHECKSUM_PREFIX))
        )
    )
    if not broken:
        return None
    extra = len(broken) - MAX_BROKEN_IN_ERROR
    more = f" (and {extra} more)" if extra > 0 else ""
    shown = "; ".join(broken[:MAX_BROKEN_IN_ERROR])
    return f"{len(broken)} runtime(s) could not be measured: {shown}{more}"


def _fail_on_tampered(report: BenchReport, names: list[str] | None = None) -> None:
    """Exit 1 (after the reports) when an artifact or runtime that should run did not.

    A tampered, damaged or failing artifact is listed as skipped so the other runtimes are
    still measured, but the command must not succeed as if nothing were wrong: checksum
    failures first (with a count of the other broken rows), then any other broken row,
    then a runtime or format named in ``--runtimes`` (``names``) that nothing measured.
    """
    checksums = _checksum_text(report)
    others = _broken_text(report, checksums=checksums is None)
    if checksums and others:
        raise CheckFailedError(f"{checksums}; also {others}")
    if checksums or others:
        raise CheckFailedError(checksums or others)
    measured = {r.runtime for r in report.rows} | {r.format for r in report.rows}
    unmeasured = [n for n in names or () if n not in measured]
    if unmeasured:
        reasons = {s.runtime: s.reason for s in report.skipped} | {
            s.format: s.reason for s in report.skipped if s.format
        }
        why = "; ".join(f"{n}: {reasons.get(n, 'nothing ran it')}" for n in unmeasured)
        raise CheckFailedError(f"--runtimes asked for what was not measured: {why}")


#: Broken rows whose reasons the one-line error of :func:`_fail_on_tampered` gives.
MAX_BROKEN_IN_ERROR = 3
