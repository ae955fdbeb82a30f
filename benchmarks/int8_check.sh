#!/usr/bin/env bash
# The int8 figures of docs/export.md and docs/serving.md for one trained run: float32 and
# int8 (static, dynamic) ONNX exports, each checked on the full test set; `evaluate` of each;
# `bench --inference` of the checkpoint and the three files side by side at 2 and 1 threads;
# ONNX Runtime's per-operator profile of each file at batch 1 and 32; and the loopback load
# test of the float32 checkpoint (max-batch 64 and 1) against the int8 export.
# Usage: bash benchmarks/int8_check.sh RUN_DIR [OUT_DIR]   (about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$1
OUT=${2:-int8-out}
mkdir -p "$OUT"
CLI=${CLI:-.venv/bin/fmnist-alexnet}
PY=${PY:-.venv/bin/python}
BEST="$RUN/checkpoints/best.pt"
"$CLI" export "$RUN" --format onnx --out "$OUT/fp32.onnx" --check-images 10000 | tee "$OUT/export_fp32.txt"
"$CLI" export "$RUN" --format onnx --quantize int8 --out "$OUT/int8.onnx" \
  --check-images 10000 | tee "$OUT/export_int8.txt"
"$CLI" export "$RUN" --format onnx --quantize int8 --quantize-method dynamic \
  --out "$OUT/int8-dynamic.onnx" --check-images 10000 | tee "$OUT/export_int8_dynamic.txt"
"$CLI" evaluate "$RUN" --precision fp32 --json > "$OUT/eval_torch_fp32.json"
for name in fp32 int8 int8-dynamic; do
  "$CLI" evaluate "$OUT/$name.onnx" --json > "$OUT/eval_$name.json"
done
for threads in 2 1; do
  "$CLI" bench --inference "$BEST" "$OUT/fp32.onnx" "$OUT/int8.onnx" "$OUT/int8-dynamic.onnx" \
    --threads "$threads" --windows 5 | tee "$OUT/inference_${threads}t.txt"
done
"$PY" -m benchmarks.onnx_profile "$OUT/fp32.onnx" "$OUT/int8.onnx" "$OUT/int8-dynamic.onnx" \
  | tee "$OUT/onnx_profile.txt"
"$PY" -m benchmarks.serve_load "$BEST" --also "$OUT/int8.onnx" --seconds 10 --clients 1 8 32 \
  --out "$OUT/serve_load.json" | tee "$OUT/serve_load.txt"
