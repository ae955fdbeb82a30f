"""Throughput, side by side in one run: our pipeline, a bare step loop, the seed's way.

- ``pipeline``: the training path (data on the device, batched augment + resize, the model
  in the chosen precision and memory format, the optimizer);
- ``bare``: the same model and optimizer on random inputs already on the device, the upper
  bound the pipeline is measured against;
- ``baseline``: built the way the seed notebook does it: a Dataset returning per-sample
  PIL-resized tensors through a DataLoader with worker processes, fp32, no channels_last.

Runners alternate window by window, so drift in a shared machine's speed hits all alike;
each figure is the median of its windows.
"""

from __future__ import annotations

import itertools
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmnist_alexnet import runtime
from fmnist_alexnet.data import MEAN, STD
from fmnist_alexnet.data.batches import (
    Augment,
    DeviceData,
    Preprocess,
    eval_batches,
    train_batches,
)
from fmnist_alexnet.data.sources import find_data, load_splits
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import build_model, check_image_size
from fmnist_alexnet.runtime import (
    autocast,
    configure_backends,
    resolve_device,
    resolve_precision,
)


class SeedStyleDataset(torch.utils.data.Dataset):
    """The seed's input path: ``Resize(image_size)`` on a PIL image, then ``ToTensor()``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int) -> None:
        self.images, self.labels, self.image_size = images, labels, image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = Image.fromarray(self.images[index], mode="L")
        image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
        return tensor, int(self.labels[index])


def bench(
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
    baseline: bool = True,
    baseline_workers: int = 4,
    profile: bool = False,
) -> dict:
    for name, value in (("--steps", steps), ("--windows", windows), ("--batch-size", batch_size)):
        if value <= 0:
            raise FmnistError(f"{name} must be > 0, got {value}")
    if warmup < 0 or baseline_workers < 0:
        raise FmnistError("--warmup and --baseline-workers must be >= 0")
    check_image_size(arch, image_size)
    device = resolve_device(device_name)
    precision = resolve_precision(precision, device)
    configure_backends(device)
    train_images, train_labels = load_splits(find_data(data_dir))["train"]
    data = DeviceData.from_numpy(train_images, train_labels, device)
    preprocess = Preprocess(image_size, MEAN, STD)
    augment = Augment(flip=True, translate=2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    ours = _Trainer(arch, device, precision, channels_last, compile)
    bare_inputs = torch.randn(batch_size, 1, image_size, image_size, device=device)
    if channels_last:
        bare_inputs = bare_inputs.contiguous(memory_format=torch.channels_last)
    bare_labels = torch.randint(0, 10, (batch_size,), device=device)
    batches = _forever(
        lambda epoch: train_batches(
            data, batch_size, preprocess, augment, 0, epoch, channels_last=channels_last
        )
    )
    runners: dict[str, _Runner] = {
        "pipeline": _Runner(lambda: ours.step(*next(batches))),
        "bare": _Runner(lambda: ours.step(bare_inputs, bare_labels)),
    }
    if baseline:
        seed_model = _Trainer(arch, device, "fp32", channels_last=False, compile=False)
        # The seed used 4 workers whatever the machine; torch warns when that exceeds
        # the cores, which is the point of the comparison here.
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = torch.utils.data.DataLoader(
            SeedStyleDataset(train_images, train_labels, image_size),
            batch_size=batch_size,
            shuffle=True,
            num_workers=baseline_workers,
            drop_last=True,
        )
        runners["baseline"] = _LoaderRunner(loader, seed_model, device)
    windows_rates = _window_rates(runners, batch_size * steps, steps, windows, warmup, device)
    rates = {name: statistics.median(values) for name, values in windows_rates.items()}

    eval_data = data.subset(torch.arange(min(len(data), batch_size * steps)))
    eval_rate = _eval_rate(ours, eval_data, preprocess, batch_size, channels_last, windows)
    result = {
        "device": str(device),
        "device_name": runtime.device_name(device),
        "precision": precision,
        "channels_last": channels_last,
        "compile": compile,
        "arch": arch,
        "image_size": image_size,
        "batch_size": batch_size,
        "steps_per_window": steps,
        "windows": windows,
        "train_images_per_sec": rates["pipeline"],
        "bare_train_images_per_sec": rates["bare"],
        "pipeline_cost": 1.0 - rates["pipeline"] / rates["bare"],
        "baseline_train_images_per_sec": rates.get("baseline"),
        "speedup_vs_baseline": rates["pipeline"] / rates["baseline"] if baseline else None,
        "baseline_workers": baseline_workers if baseline else None,
        "eval_images_per_sec": eval_rate,
        "train_images_per_sec_by_window": windows_rates,
        "peak_memory_mb": _peak_memory_mb(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }
    if profile:
        result["profile_ms_per_step"] = _profile(ours, batches, steps, device)
    return result


class _Trainer:
    def __init__(self, arch, device, precision, channels_last, compile) -> None:
        torch.manual_seed(0)
        self.device = device
        self.model: nn.Module = build_model(arch).to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.step_model = torch.compile(self.model) if compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, fused=True)
        self.amp = autocast(device, precision)

    def forward_loss(self, inputs, labels):
        with self.amp:
            return F.cross_entropy(self.step_model(inputs), labels)

    def backward(self, loss) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def step(self, inputs, labels) -> None:
        self.backward(self.forward_loss(inputs, labels))
        self.optimizer.step()


def _forever(make_epoch: Callable[[int], Iterator]) -> Iterator:
    for epoch in itertools.count():
        yield from make_epoch(epoch)


class _Runner:
    """One way of doing a training step, timed in windows between ``start`` and ``stop``."""

    def __init__(self, step: Callable[[], None]) -> None:
        self.step = step

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _LoaderRunner(_Runner):
    """The seed-style baseline. Its worker processes live only within its own windows (one
    untimed step first), so their prefetching never steals CPU from the other runners."""

    def __init__(self, loader, trainer: _Trainer, device: torch.device) -> None:
        super().__init__(self._step)
        self.loader, self.trainer, self.device = loader, trainer, device
        self.batches: Iterator | None = None

    def _step(self) -> None:
        try:
            inputs, labels = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            inputs, labels = next(self.batches)
        self.trainer.step(inputs.to(self.device), labels.to(self.device))

    def start(self) -> None:
        self.batches = iter(self.loader)
        self._step()

    def stop(self) -> None:
        self.batches = None  # shuts the workers down


def _window_rates(runners, images, steps, windows, warmup, device) -> dict[str, list[float]]:
    for runner in runners.values():
        runner.start()
        for _ in range(warmup):
            runner.step()
        runner.stop()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(windows):
        for name, runner in runners.items():
            runner.start()
            _sync(device)
            started = time.perf_counter()
            for _ in range(steps):
                runner.step()
            _sync(device)
            rates[name].append(images / (time.perf_counter() - started))
            runner.stop()
    return rates


@torch.no_grad()
def _eval_rate(trainer, data, preprocess, batch_size, channels_last, windows) -> float:
    trainer.model.eval()
    rates = []
    for _ in range(windows + 1):  # the first pass is warm-up
        _sync(trainer.device)
        started = time.perf_counter()
        for inputs, _labels in eval_batches(
            data, batch_size, preprocess, channels_last=channels_last
        ):
            with trainer.amp:
                trainer.step_model(inputs).argmax(1)
        _sync(trainer.device)
        rates.append(len(data) / (time.perf_counter() - started))
    trainer.model.train()
    return statistics.median(rates[1:])


def _profile(trainer, batches, steps, device) -> dict[str, float]:
    """Milliseconds per step in each phase, synchronising between phases (which costs a
    little overlap on a GPU, so the phases add up to slightly more than a plain step)."""
    phases: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimizer": []}

    def timed(name, fn, *args):
        _sync(device)
        started = time.perf_counter()
        out = fn(*args)
        _sync(device)
        phases[name].append(1000 * (time.perf_counter() - started))
        return out

    for _ in range(steps):
        inputs, labels = timed("data", next, batches)
        loss = timed("forward", trainer.forward_loss, inputs, labels)
        timed("backward", trainer.backward, loss)
        timed("optimizer", trainer.optimizer.step)
    return {name: statistics.median(values) for name, values in phases.items()}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
