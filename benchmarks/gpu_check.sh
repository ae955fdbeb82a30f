#!/usr/bin/env bash
# The GPU check: one call on a GPU machine with no network, within BUDGET seconds (7 min).
#
#   Here:   mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/
#   There:  bash benchmarks/gpu_check.sh          (carry "data"; results land in $OUT)
#
# It uses the machine's own python3 and torch (the package runs from src/, nothing is
# installed) and records the environment. Then, most urgent first: the `hour` recipe at 28
# epochs, plain and with one change each (an accuracy, since the hour itself is a CPU
# timing; docs/results.md#hour); 224 px bf16 training benchmarked against the seed-style baseline;
# the `best` preset with seeds 0, 1 and 2; the `d2l` preset at full scale in its own float32
# (d2l's exact recipe; the CPU ran it in bf16); torch.compile's benchmark if time is left.
# Each run is capped (a capped run keeps its metrics but has no test figure). DEVICE=cpu
# with a small BUDGET dry-runs the script's plumbing on a CPU; EXTRA adds flags to every
# training run (EXTRA="--limit-train 512 --limit-eval 256 --image-size 64 --epochs 2" lets
# a dry run's runs finish). The whole script keeps within BUDGET seconds (default 420,
# which leaves a 15-minute device lease room for a rerun). Every step writes JSON or a log
# under $OUT, and one failing step does not stop the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA=${FMNIST_DATA:-$PWD/data}
BUDGET=${BUDGET:-420}
TRAIN_SECONDS=${TRAIN_SECONDS:-90}
D2L_SECONDS=${D2L_SECONDS:-180}
HOUR_SECONDS=${HOUR_SECONDS:-60}
EXTRA=${EXTRA:-}
DEVICE=${DEVICE:-cuda}
SEEDS=${SEEDS:-0 1 2}
left() { echo $((BUDGET - SECONDS)); }
cli() { "$PY" -m fmnist_alexnet "$@"; }

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))'
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

cli data info --data-dir "$DATA" | tee "$OUT/data.txt" || exit 2

bench() {
  local compile=$1 cap
  cap=$(( $(left) < 150 ? $(left) : 150 ))
  if [ "$cap" -lt 30 ]; then echo "bench $compile: skipped, out of time"; return; fi
  timeout "$cap" "$PY" -m fmnist_alexnet bench --device "$DEVICE" --image-size 224 --batch-size 256 \
    --precision bf16 --"$compile" --steps 20 --windows 5 --warmup 10 --baseline-workers 8 \
    --profile --data-dir "$DATA" --json > "$OUT/bench_224_bf16_$compile.json" \
    2> "$OUT/bench_224_bf16_$compile.log"
  echo "bench $compile: exit $?"; cat "$OUT/bench_224_bf16_$compile.json"
}

# A training run stopped (Ctrl-C, last.pt saved) at the smaller of CAP seconds and the time
# left less a minute; skipped when that is under FLOOR seconds. Checkpoints are too big to
# bring back: the run keeps its metrics, config and log.
capped_train() {
  local name=$1 cap=$2 floor=$3
  shift 3
  cap=$(( $(left) - 60 < cap ? $(left) - 60 : cap ))
  if [ "$cap" -lt "$floor" ]; then echo "$name: skipped, out of time"; return; fi
  # shellcheck disable=SC2086  # EXTRA is a list of flags
  timeout --signal=INT "$cap" "$PY" -m fmnist_alexnet train "$@" --device "$DEVICE" \
    --data-dir "$DATA" --out "$OUT/$name" --no-progress --no-report $EXTRA 2>&1 |
    tee "$OUT/$name.log"
  echo "$name: exit ${PIPESTATUS[0]} (124 = stopped at its time cap by SIGINT, last.pt saved)"
  rm -rf "$OUT/$name/checkpoints"
}

# One line per run of a group: a finished run's test figure, a capped one's last epoch;
# with "seeds", the mean and spread of the finished runs (seeds of one recipe).
summarize() {
  "$PY" - "$OUT" "$1" "${2:-}" <<'PY' | tee "$OUT/$1_summary.txt"
import json, pathlib, statistics, sys
out, group, seeds, accs = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "seeds", []
for run in sorted(p for p in out.glob(f"{group}-*") if p.is_dir()):
    metrics = run / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x] if metrics.exists() else []
    last = rows[-1] if rows else {}
    test = run / "test_metrics.json"
    if test.exists():
        t = json.loads(test.read_text())
        accs.append(t["accuracy"])
        print(f"{run.name}: test {t['accuracy']:.4f}, wall {t['wall_s']:.0f} s, "
              f"best epoch {t['best_epoch']} (val {t['best_val_acc']}), "
              f"{t['train_images_per_sec']:.0f} img/s")
    elif rows:
        print(f"{run.name}: capped after epoch {last['epoch']} "
              f"(val {last['val_acc']}, {last['images_per_sec']:.0f} img/s), no test figure")
    else:
        print(f"{run.name}: capped before its first epoch ended, no figure")
if seeds and len(accs) > 1:
    spread = statistics.stdev(accs)
    print(f"finished: {len(accs)}, test mean {statistics.mean(accs):.4f}, std {spread:.4f}")
PY
}

# `hour` at 28 epochs (seed 0), plain and with one change each.
hour28() {
  local name=$1
  shift
  capped_train "hour28-$name" "$HOUR_SECONDS" 20 --preset hour --epochs 28 --time-budget 0 \
    --seed 0 "$@"
}
hour28 plain
hour28 128px --image-size 128
hour28 light --erase 0.1 --weight-decay 0.01
hour28 ema --ema 0.999
summarize hour28

bench no-compile

# The best preset, one run per seed.
for seed in $SEEDS; do
  capped_train "best-seed$seed" "$TRAIN_SECONDS" 30 --preset best --seed "$seed"
done

summarize best seeds

# d2l's recipe at full scale (10 epochs of 60,000 images at 224 px, float32): the number to
# set beside d2l's printed "loss 0.329, train acc 0.879, test acc 0.879".
capped_train d2l "$D2L_SECONDS" 10 --preset d2l

bench compile
