"""Where a preset's training step spends its time, and how fast each part computes.

    python benchmarks/step_profile.py [--preset quick] [--image-size 128] [--batch-size 128]
        [--precision auto] [--steps 3] [--json OUT.json]

Builds the preset's own step (model, AdamW, precision, channels_last, and the process
settings of `configure_backends`, as `train` does) and feeds it random batches of the
preset's shape (`bench`'s bare inputs): `bench --profile` puts the data pipeline under 1 %
of a step, so the step alone is what is timed here. It counts each part's
floating-point operations with torch's FlopCounterMode, times each part's kernels with the
profiler over ``--steps`` steps, and prints per part: milliseconds per step, share, GFLOP
per step and GFLOP/s. One square GEMM in the step's precision (n = ``--gemm-size``, 4096)
is timed as the CPU's reference rate for dense matrix products. Runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from fmnist_alexnet.bench import random_batch
from fmnist_alexnet.config import TrainConfig, resolve
from fmnist_alexnet.runtime import (
    PRECISIONS,
    configure_backends,
    device_name,
    resolve_device,
    resolve_precision,
)
from fmnist_alexnet.spec import ModelSpec
from fmnist_alexnet.step import build_train_step

# Profiler kernel names (self time) and FlopCounterMode ops of each part of the step.
PARTS = {
    "convolutions, forward": (("aten::mkldnn_convolution",), ("convolution",)),
    "convolutions, backward": (("aten::convolution_backward",), ("convolution_backward",)),
    "linear layers, forward and backward": (("aten::addmm", "aten::mm"), ("addmm", "mm")),
    "optimizer (fused AdamW)": (("aten::_fused_adamw_",), ()),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gemm-size", type=int, default=4096, help="the reference GEMM's n")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    overrides = {"image_size": args.image_size, "batch_size": args.batch_size}
    config = resolve(args.preset, {**overrides, "precision": args.precision, "device": "cpu"})
    result = profile_step(config, args.steps, args.gemm_size)
    _print(result, args.steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def profile_step(config: TrainConfig, steps: int, gemm_size: int) -> dict:
    """The figures ``main`` prints, for the step of a resolved ``config``."""
    device = resolve_device(config.device, 0)
    precision = resolve_precision(config.precision, device)
    configure_backends(device, config.precision)  # as train and bench do: malloc, denormals
    step = build_train_step(config, device, precision, steps_per_epoch=1000)
    inputs, labels = random_batch(config, ModelSpec.from_config(config), device)
    for _ in range(2):  # warm-up: oneDNN's first calls choose and cache kernels
        step(inputs, labels)
    with FlopCounterMode(display=False) as counter:
        step(inputs, labels)
    flops = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    walls = []
    for _ in range(steps):
        started = time.perf_counter()
        step(inputs, labels)
        walls.append(time.perf_counter() - started)
    wall_ms = 1000 * statistics.median(walls)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(inputs, labels)
    self_ms = {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}
    profiled_ms = sum(self_ms.values())
    rows = []
    for part, (kernels, ops) in PARTS.items():
        ms = sum(self_ms.get(k, 0.0) for k in kernels)
        gflop = sum(flops.get(op, 0) for op in ops) / 1e9
        rows.append(_row(part, ms, profiled_ms, gflop))
    rest = profiled_ms - sum(row["ms_per_step"] for row in rows)
    rows.append(_row("everything else", rest, profiled_ms, 0.0))
    return {
        "preset": config.preset,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "precision": precision,
        "channels_last": config.channels_last,
        "machine": f"{device_name(device)}, torch {torch.__version__}",
        "step_ms_median": wall_ms,
        "train_images_per_sec": config.batch_size / (wall_ms / 1000),
        "gflop_per_step": sum(flops.values()) / 1e9,
        "gemm_size": gemm_size,
        "gemm_gflop_per_sec": _gemm_rate(precision, gemm_size),
        "parts": rows,
    }


def _row(part: str, ms: float, total_ms: float, gflop: float) -> dict:
    rate = gflop / (ms / 1000) if gflop and ms else None
    return {"part": part, "ms_per_step": ms, "share": ms / total_ms, "gflop": gflop, "gflops": rate}


def _gemm_rate(precision: str, n: int) -> float:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    F.linear(a, b)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        F.linear(a, b)
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times) / 1e9


def _print(result: dict, steps: int) -> None:
    print(
        f"{result['preset']} step, {result['image_size']} px, batch {result['batch_size']}, "
        f"{result['precision']}, {result['machine']}"
    )
    print(
        f"step {result['step_ms_median']:.0f} ms (median of {steps}, unprofiled): "
        f"{result['train_images_per_sec']:.1f} img/s, {result['gflop_per_step']:.1f} GFLOP; "
        f"a {result['gemm_size']} GEMM runs at {result['gemm_gflop_per_sec']:.0f} GFLOP/s"
    )
    print(f"{'part':38s} {'ms/step':>8s} {'share':>6s} {'GFLOP':>7s} {'GFLOP/s':>8s}")
    for row in result["parts"]:
        rate = f"{row['gflops']:8.0f}" if row["gflops"] else f"{'':8s}"
        gflop = f"{row['gflop']:7.1f}" if row["gflop"] else f"{'':7s}"
        print(f"{row['part']:38s} {row['ms_per_step']:8.0f} {row['share']:6.1%} {gflop} {rate}")


if __name__ == "__main__":
    main()
