"""A preset's test accuracy over several seeds, each the whole `train` command, timed.

    python -m benchmarks.preset_seeds quick --seeds 0 1 2 --out seeds-quick [-- TRAIN FLAGS]

Runs `fmnist-alexnet train --preset P --seed S --out OUT/seed-S [FLAGS]` once per seed, one
after the other, and times each command from start to exit (data loading, training,
validation, the final test and the report: what a user waits for). Prints a line per seed
and writes OUT/summary.json: each run's test and best validation accuracy and wall time, the
mean, standard deviation (n-1) and range of the test accuracy, the slowest wall time, the
machine and torch version. A failed run stops the script with its exit status.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fmnist_alexnet.runtime import device_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", required=True, help="one run folder per seed goes here")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.train_flags = argv[cut + 1 :]  # after --: more flags for every run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_seed(args.preset, seed, out, args.train_flags) for seed in args.seeds]
    tests = [run["test_acc"] for run in runs]
    summary = {
        "preset": args.preset,
        "flags": args.train_flags,
        "machine": f"{device_name(torch.device('cpu'))}, torch {torch.__version__}",
        "runs": runs,
        "test_acc_mean": statistics.fmean(tests),
        "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        "test_acc_range": [min(tests), max(tests)],
        "wall_s_max": max(run["wall_s"] for run in runs),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"{args.preset}: test accuracy mean {summary['test_acc_mean']:.4f} "
        f"(std {summary['test_acc_std']:.4f}, {min(tests):.4f}-{max(tests):.4f}) over "
        f"{len(tests)} seeds; slowest command {summary['wall_s_max']:.1f} s; {summary['machine']}"
    )


def run_seed(preset: str, seed: int, out: Path, flags: list[str]) -> dict:
    folder = out / f"seed-{seed}"
    command = [sys.executable, "-m", "fmnist_alexnet", "train", "--preset", preset]
    command += ["--seed", str(seed), "--out", str(folder), "--no-progress", *flags]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: train exited with {done.returncode} ({folder})")
    test = json.loads((folder / "test_metrics.json").read_text())
    epochs = len((folder / "metrics.jsonl").read_text().splitlines())
    run = {
        "seed": seed,
        "test_acc": test["accuracy"],
        "test_n": test["n"],
        "best_val_acc": test["best_val_acc"],  # what chose best.pt; None without validation
        "epochs": epochs,
        "wall_s": round(wall, 1),
        "run": str(folder),
    }
    print(
        f"seed {seed}: test {run['test_acc']:.4f} on {run['test_n']} images, best val "
        f"{run['best_val_acc']}, {run['epochs']} epochs, {run['wall_s']} s",
        flush=True,
    )
    return run


if __name__ == "__main__":
    main()
