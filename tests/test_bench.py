import json

import pytest
import torch
from conftest import TINY_ARCH

from fmnist_alexnet.bench import timing as bench_module
from fmnist_alexnet.cli import main

KEYS = {
    "train_images_per_sec",
    "baseline_train_images_per_sec",
    "eval_images_per_sec",
    "peak_memory_mb",
    "device",
    "precision",
    "image_size",
    "batch_size",
    "torch",
    "bare_train_images_per_sec",
    "pipeline_cost",
    "speedup_vs_baseline",
    "tensorboard_train_images_per_sec",
    "tensorboard_ratio",
}


def test_bench_json_has_every_figure(capsys):
    argv = [
        "bench",
        "--arch",
        TINY_ARCH,
        "--device",
        "cpu",
        "--image-size",
        "63",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--windows",
        "2",
        "--warmup",
        "1",
        "--precision",
        "fp32",
        "--baseline-workers",
        "1",
        "--profile",
        "--tensorboard",
        "--log-every",
        "1",
        "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= KEYS
    assert result["tensorboard_train_images_per_sec"] > 0 and result["log_every"] == 1
    assert (result["device"], result["precision"], result["image_size"]) == ("cpu", "fp32", 63)
    # The step timed is the quick preset's own (AdamW), not a stand-in.
    assert (result["preset"], result["optimizer"], result["batch_size"]) == ("quick", "adamw", 8)
    for key in (
        "train_images_per_sec",
        "bare_train_images_per_sec",
        "baseline_train_images_per_sec",
        "eval_images_per_sec",
        "peak_memory_mb",
    ):
        assert result[key] > 0, key
    assert result["speedup_vs_baseline"] == pytest.approx(
        result["train_images_per_sec"] / result["baseline_train_images_per_sec"]
    )
    assert set(result["profile_ms_per_step"]) == {"data", "forward", "backward", "optimizer"}
    assert all(ms > 0 for ms in result["profile_ms_per_step"].values())


def test_bench_rejects_bad_values(capsys):
    with pytest.raises(SystemExit) as refused:  # refused while parsing
        main(["bench", "--steps", "0"])
    assert refused.value.code == 2
    assert "argument --steps: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["bench", "--image-size", "40"]) == 2


def test_profile_counts_every_part_of_the_real_step(capsys, monkeypatch):
    """bench --profile: the linear layers' FLOPs are exactly the three layers' forward and
    backward GEMMs, and each part's kernels are found by the profiler (a renamed kernel
    would read 0 ms). The reference GEMM is made smaller here: at 4096 its six products
    take most of this test's time on two cores."""
    monkeypatch.setattr(bench_module, "GEMM_SIZE", 1024)
    argv = ["bench", "--device", "cpu", "--image-size", "63", "--batch-size", "8"]
    argv += ["--steps", "1", "--windows", "1", "--warmup", "1", "--precision", "fp32"]
    assert main([*argv, "--no-baseline", "--profile", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    parts = {row["part"]: row for row in result["profile_parts"]}
    multiply_adds = 9216 * 4096 + 4096 * 4096 + 4096 * 10  # per image, forward
    linear = parts["linear layers, forward and backward"]
    assert linear["gflop"] * 1e9 == 2 * 3 * 8 * multiply_adds  # forward, input and weight grads
    for name in ("convolutions, forward", "convolutions, backward", "optimizer (fused)"):
        assert parts[name]["ms_per_step"] > 0, name
    assert parts["convolutions, backward"]["gflop"] > parts["convolutions, forward"]["gflop"] > 0
    assert abs(sum(row["share"] for row in parts.values()) - 1) < 1e-9
    assert result["gemm_gflops"] > 0 and result["gemm_size"] == 1024
    assert main([*argv, "--no-baseline", "--profile", "--arch", TINY_ARCH]) == 0
    text = capsys.readouterr().out
    assert "by kind of work (profiled; a 1024 GEMM runs at " in text
    assert "    linear layers, forward and backward " in text


def test_bench_text_says_what_it_timed(capsys):
    argv = ["bench", "--device", "cpu", "--image-size", "63", "--batch-size", "8"]
    argv += ["--steps", "1", "--windows", "1", "--warmup", "0", "--precision", "fp32"]
    assert main([*argv, "--no-baseline"]) == 0
    first, *rest = capsys.readouterr().out.splitlines()
    assert first.endswith(
        "fp32, 63 px, batch 8, torch " + torch.__version__ + ", one window of 1 step"
    )
    assert rest[0].startswith("  train, our pipeline") and rest[0].endswith(" img/s")


def test_bench_inference_times_each_model_side_by_side(tiny_run, tmp_path, capsys):
    from fmnist_alexnet.infer.export import export

    best = tiny_run / "checkpoints" / "best.pt"
    onnx = tmp_path / "tiny.onnx"
    export(best, "onnx", onnx, check_images=8)
    threads = torch.get_num_threads()
    argv = ["bench", "--inference", str(best), str(onnx), "--windows", "1", "--threads", "1"]
    assert main([*argv, "--json"]) == 0
    assert torch.get_num_threads() == threads  # put back: the count is process-wide
    result = json.loads(capsys.readouterr().out)
    assert (result["threads"], result["windows"], result["latency_calls"]) == (1, 1, 100)
    timed_torch, timed_onnx = result["models"]
    assert (timed_torch["model"], timed_torch["engine"]) == (str(best), "torch")
    assert (timed_onnx["engine"], timed_onnx["precision"]) == ("onnx", "fp32")
    assert timed_onnx["model_bytes"] == onnx.stat().st_size
    assert timed_torch["model_bytes"] == 4 * 4666  # the small network's float32 weights
    for timed in (timed_torch, timed_onnx):
        assert 0 < timed["p50_ms"] <= timed["p99_ms"]
        assert set(timed["images_per_sec"]) == {"32", "64"}
        assert all(rate > 0 for rate in timed["images_per_sec"].values())
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and "1 intra-op thread," in lines[0]
    assert lines[-1].startswith(f"  {onnx} against {best}: ") and "x the p50 latency" in lines[-1]


def test_a_dynamic_int8_export_and_one_that_disagrees_too_much(tiny_run, tmp_path, monkeypatch):
    from fmnist_alexnet.errors import FmnistError
    from fmnist_alexnet.infer import export as export_module

    best = tiny_run / "checkpoints" / "best.pt"
    dynamic = tmp_path / "dynamic.onnx"
    result = export_module.export(
        best, "onnx", dynamic, check_images=64, quantize="int8", method="dynamic"
    )
    made = result["contract"]["quantization"]
    assert made["method"] == "dynamic" and "calibration" not in made
    assert made["check"]["images"] == 64 and made["check"]["top1_agreement"] >= 0.98
    monkeypatch.setattr(export_module, "MIN_INT8_AGREEMENT", 1.01)
    refused = tmp_path / "refused.onnx"
    with pytest.raises(FmnistError, match=r"agrees with float32 on .* nothing written"):
        export_module.export(
            best, "onnx", refused, check_images=64, quantize="int8", calibration_images=32
        )
    assert not refused.exists()
