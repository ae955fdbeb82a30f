"""Flush denormal floats to zero on every CPU thread that computes, not just the caller's.

Late in a run about half of AdamW's moment estimates in the big linear layers are denormal,
and x86 cores are slow on them. ``torch.set_flush_denormal`` sets the flag
in the calling thread's MXCSR register only. OpenMP threads started afterwards inherit it,
but a pool that some earlier parallel operation already started (a notebook that touched
torch before training) would keep computing with denormals on its worker threads. So once
the flag is set, the OpenMP runtime is asked to release its idle threads
(``omp_pause_resource_all``, OpenMP 5.0: libgomp, as in PyTorch's Linux wheels, and LLVM's
and Intel's runtimes); the next parallel operation starts fresh ones, which inherit the flag.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

_OMP_PAUSE_SOFT = 1
_RUNTIMES = ("libgomp", "libiomp", "libomp")


def _openmp_runtime() -> str | None:
    """The path of the OpenMP runtime loaded into this process, if one is (Linux only)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    found = sorted(p for p in paths if os.path.basename(p).startswith(_RUNTIMES))
    return found[0] if found else None


def restart_openmp_threads() -> bool:
    """Release the OpenMP pool's threads so the next parallel region starts new ones; True
    when the runtime did (False: no OpenMP runtime found, or it refused)."""
    if not sys.platform.startswith("linux"):
        return False
    path = _openmp_runtime()
    if path is None:
        return False
    try:
        pause = ctypes.CDLL(path).omp_pause_resource_all
    except (OSError, AttributeError):  # a runtime older than OpenMP 5.0
        return False
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    return bool(pause(_OMP_PAUSE_SOFT) == 0)


def flush_denormals() -> bool:
    """Denormals read and written as zero in this thread and every OpenMP thread after it;
    False where the CPU cannot (no DAZ/FTZ) or the worker threads could not be restarted."""
    if not torch.set_flush_denormal(True):
        return False
    return restart_openmp_threads()
