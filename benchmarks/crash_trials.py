"""Crash trials: SIGKILL real training runs at random moments and check that nothing is lost.

One uninterrupted run of a small config is the reference. Then each trial starts the same
command (`train --resume auto --out FOLDER ...`) again and again, killing it with SIGKILL:
at a random moment of the run (start-up, a step, validation, the final test), or aimed at
a checkpoint write (killed as soon as the write's temp file appears, after a random delay
of up to the write's length). After every kill: `last.pt`, if there is one yet, must load
with `weights_only=True`, and `metrics.jsonl` must read. When a trial has had its kills, the
same command finishes the run, and then its `last.pt` and `best.pt` (weights, optimizer
state, step), its test metrics and its metrics rows (less timings) must equal the reference
run bit for bit, and no temp file may be left. The command is run once more and must say
the run is complete (exit 0), as a requeued job would.

Bounded: each process is killed or ends on its own, and the trial count is fixed.

Usage: python -m benchmarks.crash_trials [--kills 30] [--kills-per-trial 3]
           [--write-share 0.4] [--seed 0] [--work DIR] [--out crash_trials.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fmnist_alexnet.checkpoint import load_checkpoint
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.runtime import device_name

RUN_ARGS = [
    "--preset", "quick", "--image-size", "63", "--limit-train", "256", "--limit-eval", "64",
    "--val-size", "128", "--batch-size", "32", "--epochs", "3", "--precision", "fp32",
    "--device", "cpu", "--seed", "0", "--no-progress", "--no-tensorboard", "--no-report",
    "--time-budget", "0",  # the epochs given, not quick's 15-minute plan
]  # fmt: skip
TIMING_FIELDS = {"images_per_sec", "elapsed_s", "wall_s", "eval_images_per_sec"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs in all (30)")
    parser.add_argument("--kills-per-trial", type=int, default=3)
    parser.add_argument("--write-share", type=float, default=0.4, help="kills aimed at writes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the runs (default: /dev/shm or /tmp)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="crash-trials-", dir=args.work or _fast_tmp()))
    started = time.perf_counter()
    try:
        reference = work / "reference"
        t0 = time.perf_counter()
        _run_to_end(reference)
        run_s = time.perf_counter() - t0
        print(f"reference run: {run_s:.1f} s", flush=True)
        kills, trials = [], []
        while len(kills) < args.kills:
            folder = work / f"trial{len(trials):02d}"
            want = min(args.kills_per_trial, args.kills - len(kills))
            trial = _trial(folder, reference, want, args.write_share, run_s, rng)
            kills += trial.pop("kills")
            trials.append(trial)
            print(json.dumps(trial), flush=True)
            shutil.rmtree(folder)
        report = _summary(kills, trials, run_s, time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in report.items() if k not in ("kills", "trials")}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    sys.exit(0 if report["survived"] == report["trials"] else 1)


def _trial(folder, reference, want, write_share, run_s, rng) -> dict:
    kills = []
    while len(kills) < want:
        aim = "write" if rng.random() < write_share else "random"
        kill = _run_and_kill(folder, aim, run_s, rng)
        if kill is None:  # the run ended before the kill came: start a new trial's count
            break
        kills.append(kill)
    found = _temp_files(folder)
    done = _command(folder)
    cleaned = int(bool(found) and "temp file(s) a killed write left" in done.stdout)
    again = _command(folder)
    problems = list(_compare(folder, reference))
    if done.returncode != 0:
        problems.append(f"finishing run exited {done.returncode}: {done.stderr.strip()[-300:]}")
    if again.returncode != 0 or "is complete" not in again.stdout:
        problems.append(f"rerun after the end: exit {again.returncode}: {again.stdout[-200:]}")
    leftovers = sorted(p.name for p in folder.rglob(".*.tmp"))
    if leftovers:
        problems.append(f"temp files left: {leftovers}")
    return {
        "folder": folder.name,
        "kills": kills,
        "n_kills": len(kills),
        "survived": not problems,
        "problems": problems,
        "restarts_that_found_temp_files": sum(bool(k["temp_found_at_start"]) for k in kills)
        + bool(found),
        "restarts_that_removed_them": sum(k["removed_them"] for k in kills) + cleaned,
    }


def _run_and_kill(folder, aim, run_s, rng) -> dict | None:
    """Start the command, SIGKILL it (or see it end first: None), check what is left."""
    had_temp = _temp_files(folder)
    process = subprocess.Popen(
        _argv(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    t0 = time.perf_counter()
    if aim == "write":
        landed = _wait_for_temp(folder, process, set(had_temp), timeout=run_s * 2)
        if landed:
            time.sleep(rng.uniform(0, 0.4))
    else:
        deadline = t0 + rng.uniform(0, run_s)
        while time.perf_counter() < deadline and process.poll() is None:
            time.sleep(0.005)
    if process.poll() is not None:
        out, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a run failed on its own ({process.returncode}): {err[-500:]}")
        return None
    process.send_signal(signal.SIGKILL)
    out, _ = process.communicate()
    temps = _temp_files(folder)
    after = {
        "aim": aim,
        "at_s": round(time.perf_counter() - t0, 3),
        "inside_write": bool(set(temps) - set(had_temp)),  # a temp file this process made
        "temp_files": temps,
        "temp_found_at_start": had_temp,
        "removed_them": bool(had_temp) and "temp file(s) a killed write left" in out,
        "epochs_in_last": None,
        "last_loads": None,
        "metrics_rows": None,
    }
    last = folder / "checkpoints" / "last.pt"
    if last.is_file():
        try:
            after["epochs_in_last"] = load_checkpoint(last).epoch
            after["last_loads"] = True
        except FmnistError as exc:
            after["last_loads"] = False
            after["load_error"] = str(exc)
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        after["metrics_rows"] = len(metrics.read_text().splitlines())
    return after


def _compare(folder, reference):
    """Every difference between a finished trial and the reference run."""
    for name in ("last.pt", "best.pt"):
        got = torch.load(folder / "checkpoints" / name, weights_only=True)
        want = torch.load(reference / "checkpoints" / name, weights_only=True)
        for key in ("epoch", "step", "best_epoch", "best_val_acc"):
            if got[key] != want[key]:
                yield f"{name} {key}: {got[key]} != {want[key]}"
        for part in ("model", "optimizer"):
            if not _same(got[part], want[part]):
                yield f"{name} {part} differs"
    got_test = json.loads((folder / "test_metrics.json").read_text())
    want_test = json.loads((reference / "test_metrics.json").read_text())
    for key in ("accuracy", "loss", "best_epoch"):
        if got_test.get(key) != want_test.get(key):
            yield f"test {key}: {got_test.get(key)} != {want_test.get(key)}"
    if _rows(folder) != _rows(reference):
        yield f"metrics rows differ: {_rows(folder)} != {_rows(reference)}"


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _rows(folder) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def _summary(kills, trials, run_s, wall_s) -> dict:
    loads = [k["last_loads"] for k in kills if k["last_loads"] is not None]
    return {
        "machine": f"{device_name(torch.device('cpu'))}, torch {torch.__version__}",
        "config": " ".join(RUN_ARGS),
        "reference_run_s": round(run_s, 1),
        "kills": kills,
        "n_kills": len(kills),
        "aimed_at_a_write": sum(k["aim"] == "write" for k in kills),
        "inside_a_write": sum(k["inside_write"] for k in kills),
        "killed_in_startup": sum(k["at_s"] < 1.0 for k in kills),
        "before_any_checkpoint": sum(k["epochs_in_last"] is None for k in kills),
        "last_pt_loaded_after_kill": f"{sum(loads)}/{len(loads)}",
        "restarts_that_found_temp_files": sum(t["restarts_that_found_temp_files"] for t in trials),
        "restarts_that_removed_them": sum(t["restarts_that_removed_them"] for t in trials),
        "trials": trials,
        "survived": sum(t["survived"] for t in trials),
        "n_trials": len(trials),
        "wall_s": round(wall_s, 1),
    }


def _run_to_end(folder) -> None:
    done = _command(folder)
    if done.returncode != 0:
        raise SystemExit(f"the reference run failed: {done.stderr[-500:]}")


def _command(folder) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(folder), capture_output=True, text=True, timeout=900)


def _argv(folder) -> list[str]:
    return [sys.executable, "-m", "fmnist_alexnet", "train", "--out", str(folder),
            "--resume", "auto", *RUN_ARGS]  # fmt: skip


def _temp_files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob(".*.tmp"))


def _wait_for_temp(folder, process, old: set, timeout) -> bool:
    """Until this process starts a checkpoint write (a temp file not there before)."""
    deadline = time.perf_counter() + timeout
    checkpoints = Path(folder) / "checkpoints"
    while time.perf_counter() < deadline and process.poll() is None:
        try:
            names = {f"checkpoints/{n}" for n in os.listdir(checkpoints) if n.endswith(".tmp")}
            if names - old:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return False


def _fast_tmp() -> str | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 8 * 2**30:
        return str(shm)
    return None


if __name__ == "__main__":
    main()
