"""Full-disk trials: training runs whose writes fail, on a real small filesystem.

Three cases, each a real `fmnist-alexnet train` process (63 px, 256 images, 3 epochs):

1. ``fsize``: `ulimit -f` (RLIMIT_FSIZE, 50 MiB) set in the child, resumed from a copy of a
   finished 1-epoch run: the next last.pt write fails (EFBIG);
2. ``too-small``: the run folder on a tmpfs of 1 GiB (one 684 MB checkpoint fits, its
   replacement's temp file does not): the epoch-2 write fails (ENOSPC);
3. ``filled``: the run folder on a tmpfs of 2 GiB that a filler file fills to the last byte
   once the run has started: the next write (the metrics row) fails (ENOSPC); then the
   filler is deleted and the same command (`--resume auto`) finishes the run.

Each must end with exit status 2 and one line on stderr naming the file and the cause; the
last.pt that was there before must be unchanged and load with `weights_only=True`; no temp
file may be left. Needs root (to mount tmpfs); case 1 runs without it.

Usage: sudo python -m benchmarks.full_disk [--out full_disk.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from fmnist_alexnet.checkpoint import load_checkpoint

RUN_ARGS = [
    "--preset", "quick", "--image-size", "63", "--limit-train", "256", "--limit-eval", "64",
    "--val-size", "128", "--batch-size", "32", "--precision", "fp32", "--device", "cpu",
    "--seed", "0", "--no-progress", "--no-tensorboard", "--no-report",
    "--time-budget", "0",  # the epochs given, not quick's 15-minute plan
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="full-disk-"))
    results = []
    try:
        seed_run = work / "one-epoch"
        _train(seed_run, epochs=1)
        results.append(_fsize(seed_run, work / "fsize"))
        if os.geteuid() == 0:
            results.append(_too_small(work / "small"))
            results.append(_filled(work / "filled"))
        else:
            print("not root: the tmpfs cases are skipped", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for result in results:
        print(json.dumps(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    sys.exit(0 if all(r["held"] for r in results) else 1)


def _fsize(seed_run: Path, run: Path) -> dict:
    shutil.copytree(seed_run, run, copy_function=os.link)
    before = _digest(run)
    limit = 50 * 2**20

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = _train(run, epochs=3, check=False, preexec_fn=small_files)
    return _verdict("fsize (ulimit -f 50 MiB)", done, run, before, "last.pt")


def _too_small(run_parent: Path) -> dict:
    with _tmpfs(run_parent, "1g") as mount:
        run = mount / "run"
        done = _train(run, epochs=3, check=False)
        return _verdict("tmpfs of 1 GiB", done, run, None, "last.pt")


def _filled(run_parent: Path) -> dict:
    with _tmpfs(run_parent, "2g") as mount:
        run = mount / "run"
        process = subprocess.Popen(
            _argv(run, 3), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        while not (run / "config.json").is_file() and process.poll() is None:
            time.sleep(0.05)
        filler = mount / "filler"
        _fill(filler)
        out, err = process.communicate(timeout=900)
        done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        result = _verdict("tmpfs filled during the run", done, run, None, None)
        filler.unlink()
        finish = _train(run, epochs=3, check=False)
        result["after_freeing_space"] = {
            "exit": finish.returncode,
            "test_metrics": (run / "test_metrics.json").is_file(),
        }
        result["held"] = result["held"] and finish.returncode == 0
        return result


def _verdict(case, done, run, before, file_named) -> dict:
    lines = done.stderr.strip().splitlines()
    last = run / "checkpoints" / "last.pt"
    loads, epoch = None, None
    if last.is_file():
        try:
            epoch, loads = load_checkpoint(last).epoch, True
        except Exception as exc:  # noqa: BLE001 (that is the finding)
            loads = f"{type(exc).__name__}: {exc}"
    result = {
        "case": case,
        "exit": done.returncode,
        "stderr_lines": len(lines),
        "message": lines[-1] if lines else "",
        "last_pt_unchanged": None if before is None else _digest(run) == before,
        "last_pt_loads": loads,
        "last_pt_epoch": epoch,
        "temp_files_left": [p.name for p in run.rglob(".*.tmp")],
    }
    result["held"] = (
        done.returncode == 2
        and len(lines) == 1
        and "cannot write" in lines[0]
        and (file_named is None or file_named in lines[0])
        and result["last_pt_unchanged"] is not False
        and loads in (True, None)
        and not result["temp_files_left"]
    )
    return result


def _digest(run: Path) -> str:
    with open(run / "checkpoints" / "last.pt", "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fill(path: Path) -> None:
    """Write zeros until the filesystem refuses, then single bytes until it refuses those."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            block = bytes(size)
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
    finally:
        os.close(fd)


@contextmanager
def _tmpfs(where: Path, size: str):
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def _train(run: Path, epochs: int, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(_argv(run, epochs), capture_output=True, text=True, timeout=900, **kwargs)
    if check and done.returncode != 0:
        raise SystemExit(f"training failed: {done.stderr[-500:]}")
    return done


def _argv(run: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "fmnist_alexnet", "train", "--resume", "auto", "--out",
            str(run), "--epochs", str(epochs), *RUN_ARGS]  # fmt: skip


if __name__ == "__main__":
    main()
