"""Export wall time per format, for the mlp and resnet18 (1x28x28, random weights).

Each (model, format, exporter) runs in a fresh process: the first export there is the
cold figure (it pays the exporter's imports and first-use set-up), then ``--repeats`` more
exports in the same process give the warm figure (their minimum). ``export`` is the
format's own export (``manifest.export_seconds``); ``total`` adds the pre-export checks,
hashing and the manifest (``export_model`` wall time).

    python benchmarks/export_times.py [--models mlp resnet18] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

CASES = [
    ("torchscript", "dynamo"),
    ("exported-program", "dynamo"),
    ("onnx", "dynamo"),
    ("onnx", "legacy"),
    ("onnx-fp16", "dynamo"),
    ("onnx-int8", "dynamo"),
]


def measure(model_name: str, fmt: str, exporter: str, repeats: int, threads: int) -> dict:
    """Run in a child process: cold and warm export times of one case."""
    import torch

    from toolkit.export import export_model
    from toolkit.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name)
    runs = []
    for _ in range(1 + repeats):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            manifest = export_model(model, None, fmt, out, exporter=exporter)[fmt]
            total = time.perf_counter() - start
        size = sum(f.size for f in manifest.files)
        runs.append((manifest.export_seconds, total))
    warm = min(runs[1:]) if repeats else (float("nan"), float("nan"))
    return {
        "model": model_name,
        "format": fmt,
        "exporter": exporter if fmt.startswith("onnx") else "-",
        "cold_export_s": runs[0][0],
        "cold_total_s": runs[0][1],
        "warm_export_s": warm[0],
        "warm_total_s": warm[1],
        "size_mib": size / 2**20,
    }


def main() -> None:
    """Print the table (and the rows as JSON lines with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "resnet18"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        row = measure(*args.child, repeats=args.repeats, threads=args.threads)
        print(json.dumps(row))
        return
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, cold = first export in a process")
    header = f"{'model':<9} {'format':<17} {'exporter':<8} {'cold s':>7} {'warm s':>7}"
    print(header + f" {'warm total s':>12} {'MiB':>7}")
    for model_name in args.models:
        for fmt, exporter in CASES:
            command = [sys.executable, __file__, "--child", model_name, fmt, exporter]
            command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
            proc = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{row['model']:<9} {row['format']:<17} {row['exporter']:<8} "
                f"{row['cold_export_s']:7.2f} {row['warm_export_s']:7.2f} "
                f"{row['warm_total_s']:12.2f} {row['size_mib']:7.2f}",
                flush=True,
            )
            if args.json:
                print(json.dumps(row))


if __name__ == "__main__":
    main()
