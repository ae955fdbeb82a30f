#!/usr/bin/env bash
# The CPU figures of docs/benchmarks.md (`make bench`): our pipeline, a bare step loop and the
# seed-style DataLoader+PIL baseline side by side in each run, at quick's three resolutions
# and the seed's 224 px, in the precision training would use here (PRECISION=fp32 to force
# float32), then where a 65 px step's time goes.
# Usage: bash benchmarks/cpu_bench.sh [OUT_DIR]   (about 11 minutes on 2 cores in float32)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-out}
PRECISION=${PRECISION:-auto}
mkdir -p "$OUT"
CLI=${CLI:-.venv/bin/fmnist-alexnet}
for size in 65 96 128 224; do
  "$CLI" bench --device cpu --image-size "$size" --batch-size 128 --precision "$PRECISION" \
    --steps 3 --windows 5 --warmup 2 --json > "$OUT/cpu_${size}.json"
done
"$CLI" bench --device cpu --image-size 65 --batch-size 128 --precision "$PRECISION" \
  --steps 3 --windows 1 --warmup 2 --no-baseline --profile --json > "$OUT/profile_65.json"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = sorted(out.glob("cpu_*.json"), key=lambda p: int(p.stem.split("_")[1]))
first = json.loads(runs[0].read_text())
print(f"{first['device_name']}, torch {first['torch']}, {first['precision']}, batch 128,"
      f" median of {first['windows']} windows of {first['steps_per_window']} steps, alternated")
print("| input | ours (img/s) | bare step loop | seed-style DataLoader + PIL | ours / seed-style | eval (img/s) | peak memory |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for path in runs:
    r = json.loads(path.read_text())
    print(f"| {r['image_size']} px | {r['train_images_per_sec']:.1f} | {r['bare_train_images_per_sec']:.1f}"
          f" | {r['baseline_train_images_per_sec']:.1f} | {r['speedup_vs_baseline']:.2f}x"
          f" | {r['eval_images_per_sec']:.0f} | {r['peak_memory_mb']:.0f} MB |")
p = json.loads((out / "profile_65.json").read_text())
print(f"\n65 px step by phase (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in p["profile_ms_per_step"].items()))
print(f"a {p['gemm_size']} GEMM: {p['gemm_gflops']:.0f} GFLOP/s")
print("| part | ms/step | share | GFLOP/s |")
print("| --- | --- | --- | --- |")
for row in p["profile_parts"]:
    rate = f"{row['gflops']:.0f}" if row["gflops"] else ""
    print(f"| {row['part']} | {row['ms_per_step']:.1f} | {100 * row['share']:.1f} % | {rate} |")
PY
