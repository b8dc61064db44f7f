"""Harness overhead: toolkit's timing protocol against a bare ``timeit`` loop, same process.

Target: for ONNX Runtime on the mlp at batch 1 on CPU, toolkit's p50 is within 10% of a
bare ``timeit`` loop of the same session call (plain ``sess.run`` and
``run_with_iobinding``). Both time the same session on the same input, in interleaved
rounds (bare, toolkit, bare, toolkit, ...; the order flips every round) because the
machine's speed drifts between modes over seconds. The bare figure per round is the
median over ``timeit`` repeats of (repeat time / number); toolkit's is the p50 of its
per-call samples (:func:`toolkit.bench.time_calls`). The ratio is taken round by round.

Run: ``python benchmarks/harness_overhead.py [--rounds 9] [--seconds 0.3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.bench import time_calls, warm_up
from toolkit.export import export_model
from toolkit.models import build_model
from toolkit.runtimes import RUNTIMES

TARGET = 1.10


def bare_p50(stmt: str, env: dict[str, Any], seconds: float, number: int = 25) -> float:
    """Median per-call time (s) of ``timeit`` repeats of ``number`` calls over ``seconds``."""
    timer = timeit.Timer(stmt, globals=env)
    one = timer.timeit(number) / number
    repeats = max(5, int(seconds / max(one * number, 1e-9)))
    return statistics.median(t / number for t in timer.repeat(repeat=repeats, number=number))


def toolkit_p50(runner: Any, prepared: Any, seconds: float) -> float:
    """p50 (s) of toolkit's per-call samples of ``runner.infer(prepared)``."""
    samples = time_calls(runner.infer, prepared, 200, seconds, 10_000_000, 10 * seconds)
    return float(np.median(samples))


def main(argv: list[str] | None = None) -> int:
    """Measure and print the overhead for plain run and I/O binding; exit 1 over target."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.3, help="per round and side")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = build_model("mlp").eval()
    x = torch.randn(1, 1, 28, 28)
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, torch.randn(2, 1, 28, 28), ["onnx"], tmp)
        results = {}
        for runtime in ("onnxruntime", "onnxruntime-iobinding"):
            runner = RUNTIMES.get(runtime)(Path(tmp) / "onnx", threads=args.threads)
            runner.load()
            prepared = runner.prepare(x)
            session = runner.session
            if runtime == "onnxruntime":
                stmt = "run(outs, feed)"
                env = {"run": session.run, "outs": [runner.output_name]}
                env["feed"] = {runner.input_name: prepared}
            else:
                stmt = "run(binding)"
                env = {"run": session.run_with_iobinding, "binding": prepared[0]}
            warm_up(runner.infer, prepared, 200, 0.3)
            bare, ours = [], []
            for r in range(args.rounds):
                first_bare = r % 2 == 0
                if first_bare:
                    bare.append(bare_p50(stmt, env, args.seconds))
                ours.append(toolkit_p50(runner, prepared, args.seconds))
                if not first_bare:
                    bare.append(bare_p50(stmt, env, args.seconds))
            ratios = [o / b for o, b in zip(ours, bare, strict=True)]
            results[runtime] = {
                "bare_p50_us": statistics.median(bare) * 1e6,
                "toolkit_p50_us": statistics.median(ours) * 1e6,
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "round_bare_us": [b * 1e6 for b in bare],
                "round_toolkit_us": [o * 1e6 for o in ours],
                "threads": args.threads,
            }
            runner.close()
    failed = False
    for runtime, res in results.items():
        ok = res["ratio_median"] <= TARGET
        failed |= not ok
        print(
            f"{runtime:22s} bare timeit p50 {res['bare_p50_us']:6.2f} us   toolkit p50 "
            f"{res['toolkit_p50_us']:6.2f} us   ratio {res['ratio_median']:.3f} (rounds "
            f"{res['ratio_min']:.3f}-{res['ratio_max']:.3f})   "
            f"{'OK' if ok else 'OVER'} target {TARGET:.2f}"
        )
    if args.json:
        from toolkit.atomic import write_json

        write_json(args.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
