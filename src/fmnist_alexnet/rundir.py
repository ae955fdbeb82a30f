"""A run's folder: config.json, metrics.jsonl, checkpoints/. Only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no run-folder lock
    fcntl = None

from fmnist_alexnet import checkpoint as ckpt
from fmnist_alexnet.atomic import atomic_link_or_copy, atomic_write_text
from fmnist_alexnet.errors import FmnistError


class RunDir:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"
        self._lock = None

    def prepare(self) -> None:
        """Create the folder, prove it is writable and take its lock before any work."""
        if not self.enabled:
            return
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.checkpoints):
                pass
        except OSError as exc:
            raise FmnistError(
                f"--out {self.path}: cannot write there ({exc.strerror or exc})"
            ) from None
        self._take_lock()

    def _take_lock(self) -> None:
        """One training per folder: an OS lock on ``OUT/.lock``, which the kernel releases
        when its holder ends, however it ends, so a killed run leaves no stale lock."""
        if fcntl is None:
            return
        handle = open(self.path / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 (held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FmnistError(
                f"--out {self.path} is in use by another training ({holder}); wait for it "
                "to end or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Give the folder's lock back (the end of the process does it too)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunDir:
        self.prepare()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def write_config(self, config, runtime: dict) -> None:
        self.write_json("config.json", {**config.to_dict(), "runtime": runtime})

    def write_json(self, name: str, value: dict) -> None:
        if self.enabled:
            atomic_write_text(self.path / name, json.dumps(value, indent=2) + "\n")

    def save_checkpoint(self, name: str, checkpoint: ckpt.Checkpoint) -> None:
        if self.enabled:
            ckpt.save_checkpoint(self.checkpoints / name, checkpoint)

    def copy_checkpoint(self, source: str, target: str) -> None:
        if not self.enabled:
            return
        atomic_link_or_copy(self.checkpoints / source, self.checkpoints / target)

    def append_metrics(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_metrics(self, after_epoch: int) -> None:
        """On resume, drop rows of epochs the checkpoint does not contain."""
        if not self.enabled or not self.metrics.is_file():
            return
        kept = [row for row in self.read_metrics() if row["epoch"] <= after_epoch]
        atomic_write_text(self.metrics, "".join(json.dumps(row) + "\n" for row in kept))
