"""Trials per hour of one study with one worker and with two, on any storage `tune` takes.

Runs `fmnist-alexnet tune --study-trials N` as one process on a new study, then as two
processes at once on another, and reports each study's trials per hour: from its first
trial's start to its last trial's end, and with the processes' starts. Every trial is a
short real AlexNet run (63 px, 1 epoch of --limit-train images).

Usage: python -m benchmarks.tune_workers --storage URL|journal:PATH [--trials 6]
           [--limit-train 512] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from fmnist_alexnet.tune.quota import counted
from fmnist_alexnet.tune.storage import open_storage


def workers(storage: str, study: str, out: Path, count: int, args: argparse.Namespace) -> float:
    command = [
        *(sys.executable, "-m", "fmnist_alexnet", "tune", "--storage", storage),
        *("--study", study, "--study-trials", str(args.trials), "--arch", "alexnet"),
        *("--image-size", "63", "--epochs", "1", "--limit-train", str(args.limit_train)),
        *("--limit-eval", "500", "--no-progress", "--no-tensorboard"),
    ]
    started = time.perf_counter()
    procs = [
        subprocess.Popen([*command, "--out", str(out / f"{study}-{i}")], stdout=subprocess.DEVNULL)
        for i in range(count)
    ]
    for proc in procs:
        if proc.wait() != 0:
            sys.exit(f"a worker of {study} exited {proc.returncode}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--limit-train", type=int, default=512)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tune-workers-"))
    stamp = time.strftime("%H%M%S")
    for count in (1, 2):
        study = f"workers-{count}-{stamp}"
        took = workers(args.storage, study, out, count, args)
        loaded = optuna.load_study(study_name=study, storage=open_storage(optuna, args.storage, 10))
        trials = counted(loaded.trials)
        span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        print(
            f"{count} worker(s): {len(trials)} trials, {span.total_seconds():.1f} s from the "
            f"first start to the last end ({3600 * len(trials) / span.total_seconds():.0f} "
            f"trials/hour), {took:.1f} s with process starts "
            f"({3600 * len(trials) / took:.0f} trials/hour)"
        )


if __name__ == "__main__":
    main()
