"""Denormals flushed on every OpenMP thread, even a pool started before the flag was set."""

import json
import subprocess
import sys

import pytest

# x * 1.0 over 2**20 elements runs as two chunks: the first half on the calling thread, the
# second on an OpenMP worker. A denormal input comes out zero only where the flag is set.
CHECK = """
import json, torch
from fmnist_alexnet.runtime import configure_backends
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1e-40)
def flushed():
    y = x * 1.0
    half = y.numel() // 2
    return [bool((y[:half] == 0).all()), bool((y[half:] == 0).all())]
seen = [flushed()]  # starts the pool
torch.set_flush_denormal(True)
seen.append(flushed())
configure_backends(torch.device("cpu"))
seen.append(flushed())
torch.set_flush_denormal(False)  # the caller only: the worker must still flush on its own
seen.append(flushed())
print(json.dumps(seen))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp's thread pool")
def test_configure_backends_flushes_denormals_on_a_pool_started_before_it():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    before, caller_only, configured, worker_alone = json.loads(out.stdout)
    assert before == [False, False]
    assert caller_only == [True, False]  # torch.set_flush_denormal alone misses the worker
    assert configured == [True, True]
    assert worker_alone == [False, True]  # a second thread computed, and it flushes
