"""The malloc tuning that lets big CPU tensors reuse their pages (see fmnist_alexnet.malloc)."""

import subprocess
import sys

import pytest

CHECK = "from fmnist_alexnet.malloc import keep_freed_memory as k; print(k(), k())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize(("setting", "expected"), [("", "True True"), ("default", "False False")])
def test_applies_on_glibc_unless_opted_out(setting, expected):
    env = {"PATH": "/usr/bin:/bin", "FMNIST_ALEXNET_MALLOC": setting}
    out = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == expected.split()
