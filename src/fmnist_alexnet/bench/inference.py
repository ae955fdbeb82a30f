"""``bench --inference``: what answering with a model costs on this machine.

For each model (a checkpoint run by PyTorch, an ``.onnx`` run by ONNX Runtime, float32 or
int8): batch-1 latency (p50, p99 over every call) and images/s at larger batches, each call
``logits()`` on real uint8 test images, preprocessing included, as ``predict`` and ``serve``
run it. After an untimed warm-up of every model, timing windows alternate between the models
in one process, so a machine that speeds up or slows down touches them alike.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist_alexnet import runtime
from fmnist_alexnet.checkpoint import LoadedModel
from fmnist_alexnet.data.sources import find_data, load_split
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.engines import load_classifier
from fmnist_alexnet.infer.predict import Classifier

BATCHES = (32, 64)
LATENCY_CALLS = 100  # batch-1 calls per model per window
THROUGHPUT_CALLS = 3  # calls per batch size per model per window
WARMUP_CALLS = 5


@dataclass
class ModelTiming:
    model: str
    engine: str
    precision: str
    model_bytes: int  # what answering reads: see _model_bytes
    p50_ms: float  # batch 1
    p99_ms: float
    images_per_sec: dict[int, float]  # by batch size, median over windows


@dataclass
class InferenceBenchmark:
    device_name: str
    threads: int
    windows: int
    latency_calls: int  # batch-1 calls per model, all windows together
    torch: str = field(default_factory=lambda: torch.__version__.split("+")[0])
    models: list[ModelTiming] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench_inference(
    paths: list[str],
    threads: int | None = None,
    windows: int = 5,
    batches: tuple[int, ...] = BATCHES,
    data_dir: str | Path | None = None,
) -> InferenceBenchmark:
    """Time each model of ``paths`` with ``threads`` intra-op threads (all cores if None)."""
    if windows < 1:
        raise FmnistError(f"--windows must be > 0, got {windows}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _bench(paths, threads, windows, batches, data_dir)
    finally:
        torch.set_num_threads(before)  # PyTorch's count is process-wide


def _bench(
    paths: list[str],
    threads: int | None,
    windows: int,
    batches: tuple[int, ...],
    data_dir: str | Path | None,
) -> InferenceBenchmark:
    loaded = [load_classifier(path, "auto", "cpu", "auto", threads) for path in paths]
    models = [model for model, _ in loaded]
    test_images = load_split(find_data(data_dir), "test")[0]
    images = torch.from_numpy(test_images[: max(LATENCY_CALLS, *batches)].copy())[:, None]
    for model in models:  # untimed: first calls allocate and pick kernels
        for _ in range(WARMUP_CALLS):
            model.logits(images[:1])
        for size in batches:
            model.logits(images[:size])
    latencies: list[list[float]] = [[] for _ in models]
    rates: list[dict[int, list[float]]] = [{size: [] for size in batches} for _ in models]
    for _ in range(windows):
        for index, model in enumerate(models):
            latencies[index] += _latencies(model, images)
            for size in batches:
                rates[index][size].append(_rate(model, images[:size]))
    result = InferenceBenchmark(
        device_name=runtime.device_name(torch.device("cpu")),
        threads=threads or torch.get_num_threads(),
        windows=windows,
        latency_calls=windows * LATENCY_CALLS,
    )
    for path, (model, engine), times, by_size in zip(paths, loaded, latencies, rates, strict=True):
        result.models.append(
            ModelTiming(
                model=path,
                engine=engine,
                precision=model.precision,
                model_bytes=_model_bytes(model, path),
                p50_ms=float(np.percentile(times, 50)),
                p99_ms=float(np.percentile(times, 99)),
                images_per_sec={size: float(np.median(r)) for size, r in by_size.items()},
            )
        )
    return result


def _latencies(model: Classifier, images: torch.Tensor) -> list[float]:
    times = []
    for index in range(LATENCY_CALLS):
        started = time.perf_counter()
        model.logits(images[index : index + 1])
        times.append(1000 * (time.perf_counter() - started))
    return times


def _rate(model: Classifier, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    for _ in range(THROUGHPUT_CALLS):
        model.logits(batch)
    return THROUGHPUT_CALLS * len(batch) / (time.perf_counter() - started)


def _model_bytes(model: Classifier, path: str) -> int:
    """An ONNX file's size; a checkpoint's weights as float32 (its file also holds the
    optimizer's state, which answering does not use)."""
    if isinstance(model, LoadedModel):
        return sum(4 * t.numel() for t in model.model.state_dict().values())
    return Path(path).stat().st_size
