"""How a run names the machine it ran on (config.json, bench, the benchmarks' reports)."""

import torch

from fmnist_alexnet import runtime

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu avx2

processor\t: 1
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
"""


def test_a_cpu_is_named_with_its_family_and_model(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    monkeypatch.setattr(runtime, "CPUINFO", str(tmp_path / "cpuinfo"))
    name = runtime.device_name(torch.device("cpu"))
    assert name.startswith("AMD EPYC (family 23 model 1, "), name  # the first processor's


def test_a_cpu_without_a_model_name_is_still_named(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")
    monkeypatch.setattr(runtime, "CPUINFO", str(tmp_path / "cpuinfo"))
    assert runtime.device_name(torch.device("cpu")).startswith("cpu (")
    monkeypatch.setattr(runtime, "CPUINFO", str(tmp_path / "absent"))
    assert runtime.device_name(torch.device("cpu")).startswith("cpu (")
