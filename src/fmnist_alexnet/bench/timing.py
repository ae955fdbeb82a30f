"""Throughput, side by side in one run: our pipeline, a bare step loop, the seed's way.

- ``pipeline``: training's own step (:func:`build_train_step` from the resolved config, so
  its optimizer, schedule, EMA, precision and memory format) fed by training's own batches
  (:func:`epoch_batches`: data on the device, the preset's augmentation, batched resize),
  with the loop's bookkeeping (running sums, the finite-loss check every ``log_every``);
- ``tensorboard`` (with ``tensorboard=True``): the same, also writing TensorBoard points
  every ``log_every`` steps as training does;
- ``bare``: the same step on random inputs already on the device, the upper bound the
  pipeline is measured against;
- ``profile``: each phase's milliseconds (data, forward, backward, optimizer) and, on the
  CPU, each kind of work's share and GFLOP/s (:mod:`fmnist_alexnet.bench.step_parts`);
- ``baseline``: the ``seed`` preset's step in fp32 without channels_last, fed the way the seed
  notebook feeds it: a Dataset returning per-sample PIL-resized tensors through a DataLoader
  with worker processes.

Runners alternate window by window, so drift in a shared machine's speed hits all alike;
each figure is the median of its windows.
"""

from __future__ import annotations

import itertools
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist_alexnet import runtime
from fmnist_alexnet.bench.step_parts import GEMM_SIZE, gemm_gflops, step_parts
from fmnist_alexnet.config import TrainConfig, resolve
from fmnist_alexnet.data.batches import DeviceData, eval_batches
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.runtime import (
    Distributed,
    configure_backends,
    resolve_device,
    resolve_precision,
    synchronize,
)
from fmnist_alexnet.spec import ModelSpec
from fmnist_alexnet.train.data import RunData, epoch_batches, load_data
from fmnist_alexnet.train.monitor import StepMonitor
from fmnist_alexnet.train.progress import Progress
from fmnist_alexnet.train.step import TrainStep, build_train_step
from fmnist_alexnet.train.tracking import TensorBoardTracker, Tracker, tensorboard_installed

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (inputs, labels), one step's each


class SeedStyleDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """The seed's input path: ``Resize(image_size)`` on a PIL image, then ``ToTensor()``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int) -> None:
        self.images, self.labels, self.image_size = images, labels, image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = Image.fromarray(self.images[index], mode="L")
        image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
        return tensor, int(self.labels[index])


@dataclass
class Benchmark:
    """What ``bench`` measured and on what: images/s of each way of training, evaluation's,
    peak memory; with ``profile``, each phase's and each kind of work's share of a step."""

    preset: str
    optimizer: str
    device: str
    device_name: str
    precision: str
    channels_last: bool
    compile: bool
    arch: str
    image_size: int
    batch_size: int
    steps_per_window: int
    windows: int
    train_images_per_sec: float
    bare_train_images_per_sec: float
    pipeline_cost: float
    tensorboard_train_images_per_sec: float | None
    tensorboard_ratio: float | None
    log_every: int
    baseline_train_images_per_sec: float | None
    speedup_vs_baseline: float | None
    baseline_workers: int | None
    eval_images_per_sec: float
    train_images_per_sec_by_window: dict[str, list[float]]
    peak_memory_mb: float
    torch: str
    cuda: str | None
    threads: int
    profile_ms_per_step: dict[str, float] | None = None
    profile_parts: list[dict[str, Any]] | None = None  # on the CPU only
    gemm_size: int | None = None
    gemm_gflops: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """``bench --json``'s object (the profile's keys only when profiled)."""
        values = asdict(self)
        for name in ("profile_ms_per_step", "profile_parts", "gemm_size", "gemm_gflops"):
            if values[name] is None:
                del values[name]
        return values


def bench(
    config: TrainConfig,
    *,
    steps: int = 5,
    windows: int = 3,
    warmup: int = 2,
    baseline: bool = True,
    baseline_workers: int = 4,
    profile: bool = False,
    tensorboard: bool = False,
) -> Benchmark:
    """Images/s of ``config``'s training step, its bare step and the seed-style baseline."""
    _check(steps, windows, warmup, baseline_workers, tensorboard)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    configure_backends(device, config.precision)
    data = load_data(config, device, Distributed())
    spec = ModelSpec.from_config(config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ours = build_train_step(config, device, precision, data.steps_per_epoch)
    bare_inputs, bare_labels = random_batch(config, spec, device)
    batches = _forever(lambda epoch: epoch_batches(data.train, config, spec, epoch))
    runners: dict[str, Runner] = {
        "pipeline": _loop_runner(ours, batches, Tracker(), config.log_every),
        "bare": Runner(lambda: ours(bare_inputs, bare_labels)),
    }
    with _tensorboard_runner(tensorboard, runners, ours, batches, config.log_every):
        if baseline:  # after the TensorBoard runner: runners take turns in this order
            runners["baseline"] = _seed_style_runner(config, device, data, baseline_workers)
        by_window = window_rates(runners, config.batch_size * steps, steps, windows, warmup, device)
    rates = {name: statistics.median(values) for name, values in by_window.items()}
    eval_data = data.train.head(min(len(data.train), config.batch_size * steps))
    result = Benchmark(
        **_what_ran(config, device, precision, steps, windows),
        train_images_per_sec=rates["pipeline"],
        bare_train_images_per_sec=rates["bare"],
        pipeline_cost=1.0 - rates["pipeline"] / rates["bare"],
        tensorboard_train_images_per_sec=rates.get("tensorboard"),
        tensorboard_ratio=rates["tensorboard"] / rates["pipeline"] if tensorboard else None,
        log_every=config.log_every,
        baseline_train_images_per_sec=rates.get("baseline"),
        speedup_vs_baseline=rates["pipeline"] / rates["baseline"] if baseline else None,
        baseline_workers=baseline_workers if baseline else None,
        eval_images_per_sec=_eval_rate(ours, eval_data, spec, config, windows, device),
        train_images_per_sec_by_window=by_window,
        peak_memory_mb=_peak_memory_mb(device),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        threads=torch.get_num_threads(),
    )
    if profile:
        result.profile_ms_per_step = _profile(ours, batches, steps, device)
        if device.type == "cpu":  # the profiler's kernel names are the CPU's
            result.profile_parts = step_parts(ours, bare_inputs, bare_labels, steps)
            result.gemm_size = GEMM_SIZE
            result.gemm_gflops = gemm_gflops(precision, GEMM_SIZE)
    return result


def _check(steps: int, windows: int, warmup: int, workers: int, tensorboard: bool) -> None:
    for name, value in (("--steps", steps), ("--windows", windows)):
        if value <= 0:
            raise FmnistError(f"{name} must be > 0, got {value}")
    if warmup < 0 or workers < 0:
        raise FmnistError("--warmup and --baseline-workers must be >= 0")
    if tensorboard and not tensorboard_installed():
        raise FmnistError("--tensorboard: pip install 'fmnist-alexnet[tensorboard]' first")


def _what_ran(
    config: TrainConfig, device: torch.device, precision: str, steps: int, windows: int
) -> dict[str, Any]:
    return {
        "preset": config.preset,
        "optimizer": config.optimizer,
        "device": str(device),
        "device_name": runtime.device_name(device),
        "precision": precision,
        "channels_last": config.channels_last,
        "compile": config.compile,
        "arch": config.arch,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "steps_per_window": steps,
        "windows": windows,
    }


@contextmanager
def _tensorboard_runner(
    wanted: bool, runners: dict[str, Runner], step: TrainStep, batches: Batches, log_every: int
) -> Iterator[None]:
    """With ``wanted``, a runner that also writes TensorBoard points (to a folder removed
    after), timed with the others."""
    if not wanted:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="bench-tensorboard-") as events:
        tracker = TensorBoardTracker(Path(events))
        runners["tensorboard"] = _loop_runner(step, batches, tracker, log_every)
        try:
            yield
        finally:
            tracker.close()


def _seed_style_runner(
    config: TrainConfig, device: torch.device, data: RunData, workers: int
) -> _LoaderRunner:
    """The seed preset's step in fp32, NCHW, uncompiled, on per-sample PIL-resized copies of
    the training images ``data`` already holds."""
    seed_config = resolve(
        "seed",
        {
            "arch": config.arch,
            "image_size": config.image_size,
            "batch_size": config.batch_size,
            "device": config.device,
            "precision": "fp32",
            "channels_last": False,
            "compile": False,
        },
    )
    seed_step = build_train_step(seed_config, device, "fp32", data.steps_per_epoch)
    # The seed used 4 workers whatever the machine; torch warns when that exceeds the cores,
    # which is the point of the comparison here.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    images, labels = data.train.images[:, 0].cpu().numpy(), data.train.labels.cpu().numpy()
    loader = torch.utils.data.DataLoader(
        SeedStyleDataset(images, labels, config.image_size),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
    )
    return _LoaderRunner(loader, seed_step, device)


def _loop_runner(step: TrainStep, batches: Batches, tracker: Tracker, log_every: int) -> Runner:
    """A step as training's loop takes it: batch, step, running sums, the monitor."""
    progress = Progress()
    monitor = StepMonitor(tracker, log_every)

    def one() -> None:
        inputs, labels = next(batches)
        loss, logits = step(inputs, labels)
        progress.record_step(loss, logits, labels)
        monitor.after_step(progress.step, loss, step.grad_norm, step.lr, len(labels))

    return Runner(one)


def _forever(make_epoch: Callable[[int], Batches]) -> Batches:
    for epoch in itertools.count():
        yield from make_epoch(epoch)


class Runner:
    """One way of doing a training step, timed in windows between ``start`` and ``stop``."""

    def __init__(self, step: Callable[[], object]) -> None:
        self.step = step

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _LoaderRunner(Runner):
    """The seed-style baseline. Its worker processes live only within its own windows (one
    untimed step first), so their prefetching never steals CPU from the other runners."""

    def __init__(
        self,
        loader: torch.utils.data.DataLoader[tuple[torch.Tensor, int]],
        trainer: TrainStep,
        device: torch.device,
    ) -> None:
        super().__init__(self._step)
        self.loader, self.trainer, self.device = loader, trainer, device
        self.batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _step(self) -> None:
        if self.batches is None:
            raise RuntimeError("the baseline's step runs between start() and stop()")
        try:
            inputs, labels = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            inputs, labels = next(self.batches)
        self.trainer(inputs.to(self.device), labels.to(self.device))

    def start(self) -> None:
        self.batches = iter(self.loader)
        self._step()

    def stop(self) -> None:
        self.batches = None  # shuts the workers down


def window_rates(
    runners: dict[str, Runner],
    images: int,
    steps: int,
    windows: int,
    warmup: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Images/s of each runner in ``windows`` timed windows of ``steps`` steps, the runners
    taking turns window by window after ``warmup`` untimed steps each."""
    for runner in runners.values():
        runner.start()
        for _ in range(warmup):
            runner.step()
        runner.stop()
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(windows):
        for name, runner in runners.items():
            runner.start()
            synchronize(device)
            started = time.perf_counter()
            for _ in range(steps):
                runner.step()
            synchronize(device)
            rates[name].append(images / (time.perf_counter() - started))
            runner.stop()
    return rates


@torch.no_grad()
def _eval_rate(
    step: TrainStep,
    data: DeviceData,
    spec: ModelSpec,
    config: TrainConfig,
    windows: int,
    device: torch.device,
) -> float:
    step.model.eval()
    preprocess = spec.preprocess()
    rates = []
    for _ in range(windows + 1):  # the first pass is warm-up
        synchronize(device)
        started = time.perf_counter()
        for inputs, _labels in eval_batches(
            data, config.eval_batch_size, preprocess, channels_last=config.channels_last
        ):
            with step.amp:
                step.step_model(inputs).argmax(1)
        synchronize(device)
        rates.append(len(data) / (time.perf_counter() - started))
    step.model.train()
    return statistics.median(rates[1:])


def random_batch(
    config: TrainConfig, spec: ModelSpec, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs and labels of the shape and memory format the step is fed."""
    size, batch_size = config.image_size, config.batch_size
    inputs = torch.randn(batch_size, 1, size, size, device=device)
    if config.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, torch.randint(0, spec.num_classes, (batch_size,), device=device)


def _profile(
    trainer: TrainStep, batches: Batches, steps: int, device: torch.device
) -> dict[str, float]:
    """Milliseconds per step in each phase, synchronising between phases (which costs a
    little overlap on a GPU, so the phases add up to slightly more than a plain step)."""
    phases: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimizer": []}

    def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        synchronize(device)
        started = time.perf_counter()
        out = fn(*args)
        synchronize(device)
        phases[name].append(1000 * (time.perf_counter() - started))
        return out

    for _ in range(steps):
        inputs, labels = timed("data", next, batches)
        loss, _logits = timed("forward", trainer.forward_loss, inputs, labels)
        timed("backward", trainer.backward, loss)
        timed("optimizer", trainer.update)
    return {name: statistics.median(values) for name, values in phases.items()}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
