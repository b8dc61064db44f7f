#!/usr/bin/env bash
# GPU check: train 1 epoch on CUDA, export every format, verify parity on CUDA, benchmark
# on CPU and CUDA, and check the CUDA targets. Writes bench.json, bench.md, bench.png,
# parity.json and cuda_targets.json into the folder given as the only argument.
# Installs nothing from the network: wheels carried in .whl/ (e.g. jsonargparse) are
# installed with --no-index, and the project itself with --no-deps --no-index.
# Budget: under 5 minutes on one GPU.
#
# Data: DATA_DIR=folder with the Fashion-MNIST IDX files (.gz or not) trains and verifies on
# the real set; without it the script writes small synthetic IDX files (tests/idx.py), and
# its accuracies and parity labels are about those files (parity.json names the folder).
# A failing install, train, export or bench stops the script; failing verify or CUDA
# targets do not stop it (the later steps still run), and give its exit status at the end.
#
#   [DATA_DIR=/path/to/fashion-mnist] bash benchmarks/gpu_check.sh OUT_DIR
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
OUT="$1"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
step() { echo "== [$((SECONDS - start)) s] $*"; }

step "install (offline)"
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --find-links .whl/ .whl/*.whl
fi
"$PY" -m pip install --quiet --no-deps --no-index --no-build-isolation -e .
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"

if [ -n "${DATA_DIR:-}" ]; then
    step "data: $DATA_DIR"
    DATA="$DATA_DIR"
else
    step "data: small synthetic IDX files written locally (set DATA_DIR for Fashion-MNIST)"
    DATA="$WORK/idx"
    "$PY" - "$DATA" <<'PYEOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from idx import write_idx_dataset
write_idx_dataset(Path(sys.argv[1]))
PYEOF
fi

step "train 1 epoch on CUDA"
"$PY" -m toolkit train --model mlp --data_dir "$DATA" --max_epochs 1 \
    --output_dir "$WORK/runs" --run_name gpu --trainer.accelerator gpu --trainer.devices 1
CKPT="$WORK/runs/gpu/model.ckpt"
EXPORTS="$WORK/exports/gpu"

step "export every format"
"$PY" -m toolkit export --checkpoint "$CKPT" --format all --output_dir "$EXPORTS"

step "verify parity on CUDA"
# onnxruntime here is CPU-only: its rows are skipped on cuda. A failure is reported at the end.
verify=0
"$PY" -m toolkit verify --checkpoint "$CKPT" --exports "$EXPORTS" --device cuda \
    --data_dir "$DATA" || verify=$?
cp "$EXPORTS/parity.json" "$OUT/" 2>/dev/null || true

step "benchmark cpu and cuda"
"$PY" -m toolkit bench --checkpoint "$CKPT" --exports "$EXPORTS" --device cpu,cuda \
    --batch_sizes "[1,8,64,256]" --min_time 0.3 --min_calls 100 --rounds 3 \
    --warmup_time 0.1 --max_time 5 --output_dir "$OUT"

step "CUDA targets (mlp vs hand CUDA graph, resnet18 vs reduce-overhead)"
targets=0
"$PY" benchmarks/cuda_targets.py "$OUT/cuda_targets.json" --rounds 3 --seconds 0.3 || targets=$?

step "done"
ls -l "$OUT"
status=0
if [ "$verify" -ne 0 ]; then
    echo "verify on CUDA failed (exit $verify; see $OUT/parity.json)" >&2
    status=$verify
fi
if [ "$targets" -ne 0 ]; then
    echo "CUDA targets missed (see $OUT/cuda_targets.json)" >&2
    status=$targets
fi
exit "$status"
