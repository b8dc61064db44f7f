"""pytest-benchmark suite: every registered runtime x device x batch size.

Run from the repository root: ``pytest --benchmark-only`` (add ``--benchmark-json
out.json`` for the figures). ``make test`` does not run it; ``tox -e bench`` does.

Timing avoids the usual traps: ``benchmark.pedantic`` with one call per round
(``iterations=1``), explicit warm-up rounds, inputs already on the device, and on CUDA a
``torch.cuda.synchronize()`` inside the timed function, so asynchronous work is counted.
pytest-benchmark reports no percentiles; ``toolkit bench`` does. Each runtime is timed in
its own block, so the session warns at the end when other processes kept cores busy, and
each benchmark's ``extra_info`` records ``other_cpu_cores``.

Settings (environment): ``BENCH_ROUNDS`` (timed calls, default 100),
``BENCH_WARMUP_ROUNDS`` (default 20), ``BENCH_THREADS`` (intra-op threads, default every
usable core).
"""

from __future__ import annotations

import os

import pytest
import torch

from toolkit.bench import OtherCpuUse
from toolkit.runtimes import RUNTIMES

BATCH_SIZES = (1, 8, 64, 256)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "100"))
WARMUP_ROUNDS = int(os.environ.get("BENCH_WARMUP_ROUNDS", "20"))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("runtime", RUNTIMES.names())
def test_latency(
    benchmark, get_runner, network, cpu_load, runtime: str, device: str, batch: int
) -> None:
    """Latency of one inference call (inputs on the device, outputs left there).

    Parametrized over the whole registry: a runtime without a benchmark source fails in
    ``get_runner`` instead of going missing.
    """
    runner = get_runner(runtime, device)
    generator = torch.Generator().manual_seed(batch)
    prepared = runner.prepare(torch.randn((batch, *network.input_shape), generator=generator))
    infer = runner.infer
    if torch.device(device).type == "cuda":

        def call() -> None:
            infer(prepared)
            torch.cuda.synchronize()

    else:

        def call() -> None:
            infer(prepared)

    benchmark.group = f"{device} batch {batch:>4}"  # padded: groups sort as numbers
    benchmark.extra_info.update(
        {"runtime": runtime, "device": device, "batch": batch, "threads": runner.threads}
    )
    own = OtherCpuUse()
    with cpu_load.measuring(), own.measuring():
        benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)
    other = own.cores()
    benchmark.extra_info["other_cpu_cores"] = None if other is None else round(other, 2)
