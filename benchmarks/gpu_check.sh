#!/usr/bin/env bash
# The GPU check: one call on a GPU machine with no network, under 8 minutes.
#
#   Here:   mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/
#   There:  bash benchmarks/gpu_check.sh          (carry "data"; results land in $OUT)
#
# It uses the machine's own python3 and torch (the package runs from src/, nothing is
# installed), records the environment, benchmarks 224 px bf16 training with and without
# torch.compile against the seed-style baseline, then trains the `best` preset for a capped
# time. Every step writes JSON or a log under $OUT, and one failing step does not stop the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA=${FMNIST_DATA:-$PWD/data}
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
cli() { "$PY" -m fmnist_alexnet "$@"; }

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))'
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

cli data info --data-dir "$DATA" | tee "$OUT/data.txt" || exit 2

for compile in no-compile compile; do
  timeout 150 "$PY" -m fmnist_alexnet bench --device cuda --image-size 224 --batch-size 256 \
    --precision bf16 --"$compile" --steps 20 --windows 5 --warmup 10 --baseline-workers 8 \
    --profile --data-dir "$DATA" --json > "$OUT/bench_224_bf16_$compile.json" \
    2> "$OUT/bench_224_bf16_$compile.log"
  echo "bench $compile: exit $?"; cat "$OUT/bench_224_bf16_$compile.json"
done

# The best preset for a capped time: how far it gets and how fast (a full run is longer).
timeout --signal=INT "$TRAIN_SECONDS" "$PY" -m fmnist_alexnet train --preset best \
  --device cuda --data-dir "$DATA" --out "$OUT/best-run" --no-progress \
  2>&1 | tee "$OUT/best_train.log"
echo "train exit ${PIPESTATUS[0]} (130 = stopped by the time cap, last.pt saved)"
# Checkpoints are too big to bring back; keep the metrics and config.
rm -rf "$OUT/best-run/checkpoints"
