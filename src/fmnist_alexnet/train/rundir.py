"""A run's folder: config.json, metrics.jsonl, checkpoints/. Only rank 0 writes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from fmnist_alexnet import checkpoint as ckpt
from fmnist_alexnet.atomic import (
    atomic_link_or_copy,
    atomic_write_text,
    remove_temp_files,
    write_error,
)
from fmnist_alexnet.config import TrainConfig
from fmnist_alexnet.errors import FmnistError, not_utf8

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # not POSIX: no run-folder lock
    fcntl = None


class RunDir:
    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.checkpoints = self.path / "checkpoints"
        self.metrics = self.path / "metrics.jsonl"
        self._lock: IO[str] | None = None
        self.removed_temp: list[Path] = []
        self.created = False  # this run made the folder (so may remove it, still empty)

    def prepare(self) -> None:
        """Create the folder, prove it is writable and take its lock before any work."""
        if not self.enabled:
            return
        self.created = not self.path.exists()
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.checkpoints):
                pass
        except OSError as exc:
            raise FmnistError(
                f"--out {self.path}: cannot write there ({exc.strerror or exc})"
            ) from None
        self._take_lock()
        # Under the lock, so no live write's temp file can be taken for a killed one's.
        self.removed_temp = remove_temp_files(self.path) + remove_temp_files(self.checkpoints)

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

    def __exit__(self, *exc: object) -> None:
        self.release()
        if exc[0] is not None:
            self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """A run that failed before writing anything (bad input found after the folder was
        made) leaves no empty folder behind; anything written keeps the folder."""
        if not self.created:  # set only by a rank that writes
            return
        with contextlib.suppress(OSError):
            if any(self.checkpoints.iterdir()):
                return
            if {p.name for p in self.path.iterdir()} != {".lock", "checkpoints"}:
                return
            self.checkpoints.rmdir()
            (self.path / ".lock").unlink()
            self.path.rmdir()

    def write_config(self, config: TrainConfig, runtime: dict[str, Any]) -> None:
        self.write_json("config.json", {**config.to_dict(), "runtime": runtime})

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as :meth:`write_config` wrote it, or one error naming the file."""
        path = self.path / "config.json"
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise FmnistError(f"{path}: not a readable run config: {not_utf8(exc)}") from None
        except (OSError, ValueError) as exc:
            raise FmnistError(f"{path}: not a readable run config ({exc})") from None
        if not isinstance(value, dict) or not isinstance(value.get("runtime", {}), dict):
            raise FmnistError(f"{path}: not a run config (expected a JSON object of settings)")
        return value

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_text(self.path / name, json.dumps(value, indent=2) + "\n")

    def save_checkpoint(self, name: str, checkpoint: ckpt.Checkpoint) -> None:
        if self.enabled:
            ckpt.save_checkpoint(self.checkpoints / name, checkpoint)

    def time_save(self, checkpoint: ckpt.Checkpoint) -> float:
        """Seconds to write ``checkpoint`` as an epoch's ``last.pt`` is written (to a file of
        its own, removed after): what ``--time-budget`` plans for each epoch."""
        path = self.checkpoints / "time-budget-probe.pt"
        started = time.perf_counter()
        self.save_checkpoint(path.name, checkpoint)
        seconds = time.perf_counter() - started
        path.unlink(missing_ok=True)
        return seconds

    def holds_checkpoint(self, name: str) -> bool:
        return (self.checkpoints / name).is_file()

    def repair_best(self, epoch: int, best_epoch: int) -> None:
        """A run resumed from ``last.pt`` of ``epoch``, whose best epoch is that one: a kill
        between writing ``last.pt`` and copying it to ``best.pt`` left ``best.pt`` one epoch
        behind, so the copy is made again."""
        if best_epoch == epoch and epoch > 0:
            self.copy_checkpoint("last.pt", "best.pt")

    def copy_checkpoint(self, source: str, target: str) -> None:
        if not self.enabled:
            return
        atomic_link_or_copy(self.checkpoints / source, self.checkpoints / target)

    def append_metrics(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = memoryview((json.dumps(row) + "\n").encode("utf-8"))
        try:
            fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise write_error(self.metrics, exc) from None
        try:
            size = os.fstat(fd).st_size
            while line:
                line = line[os.write(fd, line) :]
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no torn line left behind, where the disk lets us
            raise write_error(self.metrics, exc, "the file is as it was") from None
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows, less a torn last line (a process killed inside the append)."""
        if not self.metrics.is_file():
            return []
        rows = []
        for line in self.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return [row for row in rows if isinstance(row, dict) and "epoch" in row]

    def truncate_metrics(self, after_epoch: int) -> None:
        """On resume, drop rows of epochs the checkpoint does not contain."""
        if not self.enabled or not self.metrics.is_file():
            return
        kept = [row for row in self.read_metrics() if row["epoch"] <= after_epoch]
        atomic_write_text(self.metrics, "".join(json.dumps(row) + "\n" for row in kept))
