"""The training recipe: data, model and optimizer, epochs of steps with validation, and one
final test of the selected checkpoint. Only the CLI (and tests) call it."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from fmnist_alexnet import checkpoint as ckpt
from fmnist_alexnet.config import TrainConfig
from fmnist_alexnet.data.batches import (
    Augment,
    DeviceData,
    Preprocess,
    steps_per_epoch,
    train_batches,
    validation_split,
)
from fmnist_alexnet.data.sources import DataSource, find_data, load_splits
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.evaluate import evaluate
from fmnist_alexnet.progress import Progress
from fmnist_alexnet.rundir import RunDir
from fmnist_alexnet.runtime import (
    Distributed,
    configure_backends,
    device_name,
    resolve_device,
    resolve_precision,
)
from fmnist_alexnet.spec import ModelSpec
from fmnist_alexnet.step import TrainStep, build_train_step
from fmnist_alexnet.stopping import StopOnSigint, stop_condition


class TrainingInterrupted(Exception):
    """Ctrl-C (or ``should_stop``) during training: ``last.pt`` was saved; the message says
    how to resume."""


@dataclass
class TrainResult:
    out: Path
    test: dict
    best_epoch: int
    best_val_accuracy: float | None
    wall_s: float
    train_images_per_sec: float
    history: list[dict] = field(default_factory=list)


@dataclass
class RunData:
    train: DeviceData
    val: DeviceData
    test: DeviceData
    source: DataSource
    steps_per_epoch: int


def train(
    config: TrainConfig,
    resume: ckpt.Checkpoint | None = None,
    dist: Distributed | None = None,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Train ``config`` (continuing ``resume`` when given) and test the best checkpoint.

    ``should_stop(step)`` is asked after every optimizer step; True stops the run as Ctrl-C
    does: ``last.pt`` is saved and :class:`TrainingInterrupted` raised.
    """
    dist, log = dist or Distributed(), log or _print_now
    started = time.perf_counter()
    device = resolve_device(config.device, dist.local_rank)
    precision = resolve_precision(config.precision, device)
    configure_backends(device)
    run = RunDir(Path(config.out), enabled=dist.is_main)
    run.prepare()

    data = load_data(config, device, dist)
    step = build_train_step(config, device, precision, data.steps_per_epoch, dist, resume)
    progress = Progress(resume, started)
    if resume is not None:
        run.truncate_metrics(after_epoch=progress.epoch)
    run.write_config(config, _runtime(config, device, precision, dist, data))
    if dist.is_main:
        log(_start_line(config, device, precision, data, run))

    spec = ModelSpec.from_config(config)
    with StopOnSigint() as sigint:
        stop = stop_condition(sigint, should_stop)
        for epoch in range(progress.epoch, config.epochs):
            trained = train_one_epoch(step, data, config, spec, epoch, progress, dist, stop)
            if trained is None:
                run.save_checkpoint("last.pt", step.checkpoint(config, progress))
                last = run.checkpoints / "last.pt"
                raise TrainingInterrupted(
                    f"interrupted at epoch {epoch + 1}, step {progress.step}; saved {last}; "
                    f"resume with: fmnist-alexnet train --resume {last}"
                )
            val = validate(step, data.val, spec, config, dist) if len(data.val) else None
            is_best = progress.update_best(val)
            run.save_checkpoint("last.pt", step.checkpoint(config, progress))
            if is_best:
                run.copy_checkpoint("last.pt", "best.pt")
            row = _epoch_row(progress, trained, val, step.lr)
            run.append_metrics(row)
            if dist.is_main:
                log(_epoch_line(row, config.epochs))

    dist.barrier()
    test, best = final_test(step, data.test, spec, config, run, device, dist)
    history = run.read_metrics()
    rates = sorted(row["images_per_sec"] for row in history)
    result = TrainResult(
        out=run.path,
        test=test,
        best_epoch=best.best_epoch,
        best_val_accuracy=best.best_val_acc,
        wall_s=progress.elapsed_s(),
        train_images_per_sec=rates[len(rates) // 2] if rates else 0.0,
        history=history,
    )
    run.write_json("test_metrics.json", _test_metrics(result, run.checkpoints / "best.pt"))
    return result


def load_data(config: TrainConfig, device: torch.device, dist: Distributed) -> RunData:
    """Find and read the files, hold out the validation split, move everything to ``device``."""
    source = find_data(config.data_dir)
    splits = load_splits(source)
    train_part, val = validation_split(
        DeviceData.from_numpy(*splits["train"], device), config.val_size, config.split_seed
    )
    train_part, val = train_part.head(config.limit_train), val.head(config.limit_eval)
    test = DeviceData.from_numpy(*splits["test"], device).head(config.limit_eval)
    if config.batch_size % dist.world_size:
        raise FmnistError(
            f"--batch-size {config.batch_size} must divide evenly across "
            f"{dist.world_size} processes"
        )
    steps = steps_per_epoch(len(train_part), config.batch_size)
    if steps == 0:
        raise FmnistError(
            f"--batch-size {config.batch_size} is larger than the {len(train_part)} training images"
        )
    return RunData(train_part, val, test, source, steps)


def train_one_epoch(
    step: TrainStep,
    data: RunData,
    config: TrainConfig,
    spec: ModelSpec,
    epoch: int,
    progress: Progress,
    dist: Distributed,
    stop: Callable[[int], bool],
) -> dict | None:
    """Train ``epoch`` from where ``progress`` stands; the epoch's training figures, or None
    when ``stop`` asked to stop before its end."""
    steps = data.steps_per_epoch
    started = time.perf_counter()
    start_step = progress.step - epoch * steps
    bar = tqdm(
        total=steps,
        initial=start_step,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=not (config.progress and dist.is_main and sys.stderr.isatty()),
        leave=False,
        dynamic_ncols=True,
    )
    step.model.train()
    images = 0
    with bar:
        for inputs, labels in epoch_batches(data.train, config, spec, epoch, start_step, dist):
            loss, logits = step(inputs, labels)
            progress.record_step(loss, logits, labels)
            images += len(labels) * dist.world_size
            bar.update()
            if bar.n % 10 == 0 or bar.n == steps:
                rate = images / (time.perf_counter() - started)
                bar.set_postfix(progress.running(), img_s=f"{rate:.0f}")
            if stop(progress.step):
                return None
    seconds = time.perf_counter() - started
    return {**progress.finish_epoch(dist), "images_per_sec": images / seconds}


def epoch_batches(
    data: DeviceData,
    config: TrainConfig,
    spec: ModelSpec,
    epoch: int,
    start_step: int = 0,
    dist: Distributed | None = None,
):
    """This rank's augmented, resized (inputs, labels) of ``epoch`` from ``start_step`` on."""
    dist = dist or Distributed()
    return train_batches(
        data,
        batch_size=config.batch_size,
        preprocess=_train_preprocess(config, spec, epoch),
        augment=Augment(config.flip, config.translate, config.erase),
        seed=config.seed,
        epoch=epoch,
        start_step=start_step,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=config.channels_last,
    )


def validate(
    step: TrainStep, data: DeviceData, spec: ModelSpec, config: TrainConfig, dist: Distributed
) -> dict:
    """Validation sees the weight average when ``--ema`` is on."""
    with step.ema.applied(step.model) if step.ema else nullcontext():
        return _evaluate(step, data, spec, config, dist)


def final_test(step, data, spec, config, run: RunDir, device, dist):
    """Load ``best.pt`` (already the average when ``--ema`` is on) and test it, once."""
    best = ckpt.load_checkpoint(run.checkpoints / "best.pt", map_location=device)
    ckpt.load_weights(step.model, best.model, run.checkpoints / "best.pt", spec.arch)
    return _evaluate(step, data, spec, config, dist), best


def _evaluate(step, data, spec, config, dist) -> dict:
    return evaluate(
        model=step.model,
        data=data,
        preprocess=spec.preprocess(),
        batch_size=config.eval_batch_size,
        autocast=step.amp,
        num_classes=spec.num_classes,
        channels_last=config.channels_last,
        dist=dist,
    )


def _train_preprocess(config: TrainConfig, spec: ModelSpec, epoch: int) -> Preprocess:
    """Progressive resizing: the first ``start_epochs`` epochs train at ``start_size``."""
    preprocess = spec.preprocess()
    if epoch < config.start_epochs:
        return dataclasses.replace(preprocess, image_size=config.start_size)
    return preprocess


def _epoch_row(progress: Progress, trained: dict, val: dict | None, lr: float) -> dict:
    return {
        "epoch": progress.epoch,
        "step": progress.step,
        "train_loss": trained["train_loss"],
        "train_acc": trained["train_acc"],
        "val_loss": val["loss"] if val else None,
        "val_acc": val["accuracy"] if val else None,
        "lr": lr,
        "images_per_sec": trained["images_per_sec"],
        "elapsed_s": progress.elapsed_s(),
    }


def _test_metrics(result: TrainResult, best: Path) -> dict:
    return {
        "checkpoint": str(best),
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_accuracy,
        "wall_s": result.wall_s,
        "train_images_per_sec": result.train_images_per_sec,
        **result.test,
    }


def _runtime(config, device, precision, dist, data: RunData) -> dict:
    return {
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision,
        "world_size": dist.world_size,
        "torch": torch.__version__,
        "data_source": f"{data.source.origin}: {data.source.directory}",
        "train_images": len(data.train),
        "val_images": len(data.val),
        "test_images": len(data.test),
        "steps_per_epoch": data.steps_per_epoch,
    }


def _print_now(line: str) -> None:
    print(line, flush=True)  # progress lines reach a pipe or `tee` as they happen


def _start_line(config, device, precision, data: RunData, run: RunDir) -> str:
    sizes = f"{config.image_size} px"
    if config.start_epochs:
        sizes = f"{config.start_size} px for {config.start_epochs} epochs then {sizes}"
    return (
        f"training {config.arch} ({config.preset} preset) on {device} in {precision}, "
        f"{sizes}, {len(data.train)} train / {len(data.val)} val images, "
        f"{config.epochs} epochs of {data.steps_per_epoch} steps -> {run.path}"
    )


def _epoch_line(row: dict, epochs: int) -> str:
    val = (
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        if row["val_acc"] is not None
        else "no validation split"
    )
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.4f} | {val} | lr {row['lr']:.2e} | "
        f"{row['images_per_sec']:.0f} img/s | {row['elapsed_s']:.0f} s"
    )


def summary_line(result: TrainResult) -> str:
    test = result.test
    return (
        f"test accuracy {test['accuracy']:.4f} on {test['n']} images "
        f"(best.pt from epoch {result.best_epoch}) | wall {result.wall_s:.1f} s | "
        f"{result.train_images_per_sec:.0f} train img/s | run {result.out}"
    )
