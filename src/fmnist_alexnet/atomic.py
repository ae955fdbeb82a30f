"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fmnist_alexnet.errors import FmnistError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temp file and move it to ``path`` only once it is complete.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise FmnistError(f"{path.parent}: cannot write there ({exc.strerror or exc})") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = os_error_in(exc)
        if cause is None:
            raise
        raise write_error(path, cause) from None
    _fsync_dir(path.parent)
    return path


def atomic_link_or_copy(source: str | Path, target: str | Path) -> Path:
    """Make ``target`` hold ``source``'s bytes, atomically.

    Files here are only ever replaced, never changed in place, so a hard link is as safe
    as a copy and costs nothing; filesystems without links get a copy.
    """
    source, target = Path(source), Path(target)
    if target.exists() and os.path.samefile(source, target):
        return target  # already the same file (rename() would do nothing, leaving tmp)
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        with open(source, "rb") as src:
            return atomic_write(target, lambda dst: shutil.copyfileobj(src, dst))
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    return target


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: itself, or the one a library wrapped (torch's zip writer
    turns a failed write into a RuntimeError whose context is the OSError)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def write_error(path: str | Path, exc: OSError, kept: str = "nothing was replaced") -> FmnistError:
    """One line naming the file and the cause (a full disk, a quota, a file-size limit, EIO)."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    hint = {
        errno.ENOSPC: ": the disk is full",
        errno.EDQUOT: ": the disk quota is used up",
        errno.EFBIG: ": a file-size limit (ulimit -f) was reached",
    }.get(exc.errno or 0, "")
    return FmnistError(f"{path}: cannot write ({cause}{hint}); {kept}")


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files an atomic write killed half-way left in ``folder`` (never a
    finished file: those are only ever renamed into place). Call it with the folder locked."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(handle: BinaryIO) -> None:
        handle.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
