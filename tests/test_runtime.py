"""How a run names the machine it ran on (config.json, bench, the benchmarks' reports), and
what its CPU can do (bf16 for precision auto, VNNI for int8)."""

import pytest
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


@pytest.mark.parametrize(
    ("line", "bf16", "reduce_range"),
    [
        ("flags\t\t: fpu avx2 fma", False, True),  # Zen 3: float32; int8 without VNNI
        ("flags\t\t: avx2 avx512f avx512bw avx512_vnni", False, False),  # Ice Lake
        ("flags\t\t: avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8", True, False),
        ("Features\t: fp asimd bf16 i8mm", True, False),  # an Arm core with BF16
    ],
)
def test_precision_auto_takes_bf16_only_where_the_cpu_computes_in_it(
    tmp_path, monkeypatch, line, bf16, reduce_range
):
    from fmnist_alexnet.infer import quantize

    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\n{line}\n")
    monkeypatch.setattr(runtime, "CPUINFO", str(tmp_path / "cpuinfo"))
    # oneDNN says yes on any AVX-512 CPU, emulating bf16 at well under float32's speed
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert runtime.cpu_has_native_bf16() is bf16
    assert runtime.resolve_precision("auto", torch.device("cpu")) == ("bf16" if bf16 else "fp32")
    x86 = not line.startswith("Features")
    monkeypatch.setattr(quantize.platform, "machine", lambda: "x86_64" if x86 else "aarch64")
    assert quantize.needs_reduce_range() is reduce_range
