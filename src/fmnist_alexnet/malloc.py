"""Keep freed CPU memory in the process instead of handing it back to the kernel.

PyTorch's CPU allocator is plain ``malloc``. glibc serves every block above 32 MB with a
fresh ``mmap`` and unmaps it on free, so each training step re-faults and re-zeroes the
big tensors it allocates: the 151 MB gradient of the first linear layer, the bf16 copies
autocast makes of the weights, the activations (a large share of a step on a small CPU).
Turning off ``mmap`` for large blocks and never trimming the heap lets those pages be
reused from step to step, at the cost of the process keeping its peak memory until it exits.

Set ``FMNIST_ALEXNET_MALLOC=default`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Tune glibc malloc once per process; False where it is not glibc or is opted out."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("FMNIST_ALEXNET_MALLOC") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    ok &= mallopt(_M_TOP_PAD, 256 * 2**20) == 1
    _applied = bool(ok)
    return _applied
