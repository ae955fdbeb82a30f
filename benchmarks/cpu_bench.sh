#!/usr/bin/env bash
# The CPU figures in BENCHMARKS.md: our pipeline, a bare step loop and the seed-style
# DataLoader+PIL baseline, side by side in each run, at 224 px and 64 px, bf16 and fp32.
# Usage: bash benchmarks/cpu_bench.sh [OUT_DIR]   (about 8 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-out}
mkdir -p "$OUT"
CLI=${CLI:-.venv/bin/fmnist-alexnet}
for precision in bf16 fp32; do
  "$CLI" bench --device cpu --image-size 224 --batch-size 64 --precision "$precision" \
    --steps 4 --windows 5 --warmup 2 --json > "$OUT/cpu_224_$precision.json"
  "$CLI" bench --device cpu --image-size 64 --batch-size 128 --precision "$precision" \
    --steps 5 --windows 5 --warmup 2 --json > "$OUT/cpu_64_$precision.json"
done
"$CLI" bench --device cpu --image-size 224 --batch-size 64 --precision bf16 --steps 3 \
  --windows 1 --warmup 1 --no-baseline --profile --json > "$OUT/cpu_224_bf16_profile.json"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("cpu_*.json")):
    r = json.loads(path.read_text())
    base = r["baseline_train_images_per_sec"]
    print(f"{path.stem:24} ours {r['train_images_per_sec']:7.1f}  bare {r['bare_train_images_per_sec']:7.1f}"
          f"  cost {100 * r['pipeline_cost']:5.1f}%  seed-style {base or 0:7.1f}"
          f"  x{r['speedup_vs_baseline'] or 0:4.2f}  eval {r['eval_images_per_sec']:7.1f}"
          f"  peak {r['peak_memory_mb']:6.0f} MB  {r.get('profile_ms_per_step', '')}")
PY
