"""Fixtures of the pytest-benchmark suite: a tiny mlp, its exports, cached runners.

The network is the registered ``mlp`` with seeded random weights (latency does not depend
on training). Its artifacts are exported once per session into a temporary folder with
``toolkit.export.export_model``. Runners are loaded once per (runtime, device) and shared
across batch sizes, as ``toolkit bench`` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from toolkit.bench import BUSY_CORES, OtherCpuUse

#: Module runtimes run the network itself; artifact runtimes run an export of this format.
ARTIFACT_FORMATS: dict[str, str] = {
    "onnxruntime": "onnx",
    "onnxruntime-iobinding": "onnx",
    "torchscript": "torchscript",
    "exported-program": "exported-program",
}
MODULE_RUNTIMES = ("eager", "torch-compile", "cuda-graph")
#: Intra-op threads of every runner (default: every usable core, as ``toolkit bench``).
THREADS = int(os.environ.get("BENCH_THREADS", "0")) or len(os.sched_getaffinity(0))


#: Other processes' CPU use over every timed benchmark of the session.
SESSION_LOAD = OtherCpuUse()


@pytest.fixture(scope="session")
def cpu_load() -> OtherCpuUse:
    """The session's meter of other processes' CPU use; wrap each timed block in it."""
    return SESSION_LOAD


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Warn when other processes kept cores busy while the benchmarks ran.

    Each runtime is timed in its own block of rounds, so a load that comes and goes
    shows up as one runtime being slower than another; ``toolkit bench`` interleaves
    runtimes round by round and reports percentiles instead.
    """
    other = SESSION_LOAD.cores()
    if other is not None and other >= BUSY_CORES:
        terminalreporter.write_line(
            f"warning: other processes used {other:.2g} of {len(os.sched_getaffinity(0))} "
            "cores on average while the benchmarks ran; each runtime is timed in its own "
            "block, so these figures compare the machine's state as much as the runtimes "
            "(toolkit bench interleaves them)",
            yellow=True,
        )


@pytest.fixture(scope="session")
def network() -> torch.nn.Module:
    """The mlp, eval mode, seeded weights."""
    from toolkit.models import build_model

    torch.manual_seed(0)
    return build_model("mlp").eval()


@pytest.fixture(scope="session")
def exports(network: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one artifact folder per format the artifact runtimes need."""
    from toolkit.export import export_model

    out = tmp_path_factory.mktemp("bench-exports")
    formats = sorted(set(ARTIFACT_FORMATS.values()))
    export_model(network, torch.randn(2, *network.input_shape), formats, out)
    return out


@pytest.fixture(scope="session")
def runners(network: torch.nn.Module, exports: Path) -> Iterator[dict[tuple[str, str], Any]]:
    """A cache of loaded runners keyed by (runtime, device)."""
    torch.set_num_threads(THREADS)
    cache: dict[tuple[str, str], Any] = {}
    yield cache
    for runner in cache.values():
        runner.close()


@pytest.fixture(scope="session")
def artifact_formats() -> dict[str, str]:
    """Runtime name → format of the artifact it runs; module runtimes are not listed."""
    return dict(ARTIFACT_FORMATS)


@pytest.fixture(scope="session")
def module_runtimes() -> tuple[str, ...]:
    """Runtimes that run the network itself."""
    return MODULE_RUNTIMES


@pytest.fixture(scope="session")
def get_runner(
    runners: dict[tuple[str, str], Any], network: torch.nn.Module, exports: Path
) -> Callable[[str, str], Any]:
    """``get_runner(runtime, device)``: the loaded runner (skips where it cannot run here,
    fails where it is broken)."""
    from toolkit.errors import RuntimeUnavailableError
    from toolkit.runtimes import RUNTIMES

    def get(runtime: str, device: str) -> Any:
        cls = RUNTIMES.get(runtime)
        if torch.device(device).type not in cls.device_types:
            pytest.skip(f"runtime {runtime} runs on {', '.join(cls.device_types)} only")
        if (runtime, device) not in runners:
            if runtime in MODULE_RUNTIMES:
                source: Any = network
            elif runtime in ARTIFACT_FORMATS:
                source = exports / ARTIFACT_FORMATS[runtime]
            else:
                pytest.fail(f"no benchmark source for runtime {runtime}; add it to conftest.py")
            runner = cls(source, device=device, input_shape=network.input_shape, threads=THREADS)
            try:
                runner.load()
            except RuntimeUnavailableError as exc:  # onnxruntime without its CUDA provider
                pytest.skip(f"runtime {runtime} cannot load on {device}: {exc}")
            # Any other failure is a broken runtime and fails the run, as `toolkit bench`
            # exits 1 for it: a skip would drop it from the figures without a word.
            runners[(runtime, device)] = runner
        return runners[(runtime, device)]

    return get
