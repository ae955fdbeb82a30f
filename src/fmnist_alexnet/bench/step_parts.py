"""Where a training step's time goes by kind of work (convolutions, linear layers, the
optimizer), each with its GFLOP/s beside one large GEMM's on the same device: ``bench
--profile``. Operations are counted by torch's FlopCounterMode and timed by the profiler's
self time of their kernels, on the CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

# Profiler kernel names (self time) and FlopCounterMode ops of each part of the step.
PARTS = {
    "convolutions, forward": (("aten::mkldnn_convolution",), ("convolution",)),
    "convolutions, backward": (("aten::convolution_backward",), ("convolution_backward",)),
    "linear layers, forward and backward": (("aten::addmm", "aten::mm"), ("addmm", "mm")),
    "optimizer (fused)": (("aten::_fused_adamw_", "aten::_fused_sgd_"), ()),
}
GEMM_SIZE = 4096  # the reference GEMM's n: large enough to run at the CPU's best rate


def step_parts(
    step: Callable[[torch.Tensor, torch.Tensor], object],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
) -> list[dict[str, Any]]:
    """Milliseconds per step, share of the step, GFLOP and GFLOP/s of each part of
    ``step(inputs, labels)`` (already warmed up), over ``steps`` profiled steps."""
    with FlopCounterMode(display=False) as counter:
        step(inputs, labels)
    flops = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(inputs, labels)
    self_ms = {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}
    total_ms = sum(self_ms.values())
    rows = []
    for part, (kernels, ops) in PARTS.items():
        ms = sum(self_ms.get(kernel, 0.0) for kernel in kernels)
        rows.append(_row(part, ms, total_ms, sum(flops.get(op, 0) for op in ops) / 1e9))
    rest = total_ms - sum(row["ms_per_step"] for row in rows)
    rows.append(_row("everything else", rest, total_ms, 0.0))
    return rows


def gemm_gflops(precision: str, n: int = GEMM_SIZE) -> float:
    """GFLOP/s of one n x n matrix product in ``precision`` (median of 5, after one)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    F.linear(a, b)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        F.linear(a, b)
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times) / 1e9


def _row(part: str, ms: float, total_ms: float, gflop: float) -> dict[str, Any]:
    rate = gflop / (ms / 1000) if gflop and ms else None
    share = ms / total_ms if total_ms else 0.0
    return {"part": part, "ms_per_step": ms, "share": share, "gflop": gflop, "gflops": rate}
