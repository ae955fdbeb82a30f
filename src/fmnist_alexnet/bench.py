"""Throughput of the training pipeline beside a bare model step loop, in one run."""

from __future__ import annotations

import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from fmnist_alexnet.data import MEAN, STD
from fmnist_alexnet.data.batches import Augment, DeviceData, Preprocess, train_batches
from fmnist_alexnet.data.sources import find_data, load_splits
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import build_model, check_image_size
from fmnist_alexnet.runtime import autocast, configure_backends, resolve_device, resolve_precision


def bench_train(
    device_name: str = "auto",
    image_size: int = 224,
    batch_size: int = 64,
    precision: str = "auto",
    channels_last: bool = True,
    compile: bool = False,
    steps: int = 5,
    windows: int = 3,
    warmup: int = 2,
    data_dir=None,
    arch: str = "alexnet",
) -> dict:
    """Median images/s over ``windows`` windows of ``steps`` steps, after ``warmup`` steps.

    The pipeline and the bare loop (random data already on the device, same model,
    optimizer, precision and memory format) alternate window by window so that drift in
    a shared machine's speed hits both alike.
    """
    for name, value in (("--steps", steps), ("--windows", windows), ("--batch-size", batch_size)):
        if value <= 0:
            raise FmnistError(f"{name} must be > 0, got {value}")
    check_image_size(arch, image_size)
    device = resolve_device(device_name)
    precision = resolve_precision(precision, device)
    configure_backends(device)
    train = load_splits(find_data(data_dir))["train"]
    data = DeviceData.from_numpy(*train, device)
    preprocess = Preprocess(image_size, MEAN, STD)
    augment = Augment(flip=True, translate=2)

    torch.manual_seed(0)
    model = build_model(arch).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    amp = autocast(device, precision)

    def step(inputs, labels):
        with amp:
            loss = F.cross_entropy(step_model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def pipeline_batches():
        for epoch in itertools.count():
            yield from train_batches(
                data, batch_size, preprocess, augment, 0, epoch, channels_last=channels_last
            )

    pipeline = pipeline_batches()
    bare_inputs = torch.randn(batch_size, 1, image_size, image_size, device=device)
    if channels_last:
        bare_inputs = bare_inputs.contiguous(memory_format=torch.channels_last)
    bare_labels = torch.randint(0, 10, (batch_size,), device=device)
    runners = {
        "pipeline": lambda: step(*next(pipeline)),
        "bare": lambda: step(bare_inputs, bare_labels),
    }
    for run in runners.values():
        for _ in range(warmup):
            run()
    rates = {name: [] for name in runners}
    for _ in range(windows):
        for name, run in runners.items():
            rates[name].append(batch_size * steps / _timed(run, steps, device))
    train_rate = statistics.median(rates["pipeline"])
    bare_rate = statistics.median(rates["bare"])
    return {
        "device": str(device),
        "device_name": _device_name(device),
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile,
        "image_size": image_size,
        "batch_size": batch_size,
        "steps_per_window": steps,
        "windows": windows,
        "train_images_per_sec": train_rate,
        "bare_train_images_per_sec": bare_rate,
        "pipeline_cost": 1.0 - train_rate / bare_rate,
        "train_images_per_sec_windows": rates["pipeline"],
        "bare_train_images_per_sec_windows": rates["bare"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _timed(run, steps: int, device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    return time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return "cpu"
