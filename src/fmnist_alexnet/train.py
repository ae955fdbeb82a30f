"""The training loop. It calls everything else; only the CLI calls it."""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fmnist_alexnet import checkpoint as ckpt
from fmnist_alexnet.config import TrainConfig, replace, resolve
from fmnist_alexnet.data.batches import (
    Augment,
    DeviceData,
    Preprocess,
    split_train_val,
    steps_per_epoch,
    train_batches,
)
from fmnist_alexnet.data.sources import find_data, load_splits
from fmnist_alexnet.ema import WeightEma
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.evaluate import evaluate
from fmnist_alexnet.model import build_model, initialize
from fmnist_alexnet.optim import build_optimizer, build_scheduler
from fmnist_alexnet.rundir import RunDir
from fmnist_alexnet.runtime import (
    Distributed,
    autocast,
    configure_backends,
    device_name,
    resolve_device,
    resolve_precision,
)


class TrainingInterrupted(Exception):
    """Ctrl-C during training: ``last.pt`` was saved; the message says how to resume."""


@dataclass
class TrainResult:
    out: Path
    test: dict
    best_epoch: int
    best_val_accuracy: float | None
    wall_s: float
    train_images_per_sec: float
    history: list[dict] = field(default_factory=list)


def train(
    config: TrainConfig,
    resume_state: dict | None = None,
    dist: Distributed | None = None,
    log=None,
) -> TrainResult:
    dist = dist or Distributed()
    log = log or _print_now
    started = time.perf_counter()
    device = resolve_device(config.device, dist.local_rank)
    precision = resolve_precision(config.precision, device)
    configure_backends(device)
    run = RunDir(Path(config.out), enabled=dist.is_main)
    run.prepare()

    # Data: find, load, split, move to the device once.
    source = find_data(config.data_dir)
    splits = load_splits(source)
    train_all = DeviceData.from_numpy(*splits["train"], device)
    train_idx, val_idx = split_train_val(len(train_all), config.val_size, config.split_seed)
    if config.limit_train:
        train_idx = train_idx[: config.limit_train]
    train_data = train_all.subset(train_idx)
    val_data = train_all.subset(val_idx[: config.limit_eval or None])
    test_data = DeviceData.from_numpy(*splits["test"], device)
    if config.limit_eval:
        test_data = test_data.subset(torch.arange(min(config.limit_eval, len(test_data))))
    if config.batch_size % dist.world_size:
        raise FmnistError(
            f"--batch-size {config.batch_size} must divide evenly across "
            f"{dist.world_size} processes"
        )
    steps = steps_per_epoch(len(train_data), config.batch_size)
    if steps == 0:
        raise FmnistError(
            f"--batch-size {config.batch_size} is larger than the {len(train_data)} training images"
        )
    preprocess = Preprocess(config.image_size, config.mean, config.std, config.resize_mode)
    augment = Augment(config.flip, config.translate, config.erase)

    def train_preprocess(epoch: int) -> Preprocess:
        """Progressive resizing: the first ``start_epochs`` epochs train at ``start_size``."""
        if epoch < config.start_epochs:
            return dataclasses.replace(preprocess, image_size=config.start_size)
        return preprocess

    # Model, optimizer, schedule.
    torch.manual_seed(config.seed)
    model = build_model(config.arch, config.num_classes, config.dropout)
    model = initialize(model, config.init).to(device)
    # Every rank starts from the same weights (DDP also broadcasts them); dropout then
    # draws differently on each rank, and rank 0 exactly as a single process would.
    torch.manual_seed(config.seed + dist.rank)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps)
    ema = WeightEma(model, config.ema) if config.ema else None
    state = TrainState()
    if resume_state is not None:
        state = TrainState.restore(resume_state, model, optimizer, scheduler, ema, device)
        if dist.rank > 0:  # the checkpoint holds rank 0's RNG; others need streams of their own
            torch.manual_seed(config.seed + dist.rank + 1_000_003 * state.step)
        run.truncate_metrics(after_epoch=state.epoch)
    step_model = torch.compile(model) if config.compile else model
    if dist.enabled:
        step_model = DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp = autocast(device, precision)
    run.write_config(
        config,
        {
            "device": str(device),
            "device_name": device_name(device),
            "precision": precision,
            "world_size": dist.world_size,
            "torch": torch.__version__,
            "data_source": f"{source.origin}: {source.directory}",
            "train_images": len(train_data),
            "val_images": len(val_data),
            "test_images": len(test_data),
            "steps_per_epoch": steps,
        },
    )
    if dist.is_main:
        log(
            f"training {config.arch} ({config.preset} preset) on {device} in {precision}, "
            f"{_sizes(config)}, {len(train_data)} train / {len(val_data)} val images, "
            f"{config.epochs} epochs of {steps} steps -> {run.path}"
        )

    def evaluate_on(data: DeviceData, averaged: bool = True) -> dict:
        """Validation sees the EMA weights when they are on; the final test loads best.pt."""
        with ema.applied(model) if ema and averaged else nullcontext():
            return evaluate(
                model,
                data,
                preprocess,
                config.eval_batch_size,
                amp,
                config.num_classes,
                config.channels_last,
                dist,
            )

    def save_last() -> None:
        run.save_checkpoint("last.pt", state.snapshot(model, optimizer, scheduler, ema, config))

    with _StopOnSigint() as stop:
        for epoch in range(state.epoch, config.epochs):
            epoch_started = time.perf_counter()
            start_step = state.step - epoch * steps
            bar = tqdm(
                total=steps,
                initial=start_step,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=not (config.progress and dist.is_main and sys.stderr.isatty()),
                leave=False,
                dynamic_ncols=True,
            )
            model.train()
            batches = train_batches(
                train_data,
                config.batch_size,
                train_preprocess(epoch),
                augment,
                config.seed,
                epoch,
                start_step,
                dist.rank,
                dist.world_size,
                config.channels_last,
            )
            images_this_run = 0
            for inputs, labels in batches:
                with amp:
                    logits = step_model(inputs)
                    loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                if ema:
                    ema.update(model)
                state.record_step(loss.detach(), logits.detach(), labels)
                images_this_run += len(labels) * dist.world_size
                bar.update()
                if bar.n % 10 == 0 or bar.n == steps:
                    seconds = time.perf_counter() - epoch_started
                    bar.set_postfix(state.running(), img_s=f"{images_this_run / seconds:.0f}")
                if stop.requested:
                    bar.close()
                    state.elapsed_s += time.perf_counter() - started
                    save_last()
                    raise TrainingInterrupted(
                        f"interrupted at epoch {epoch + 1}, step {state.step}; saved "
                        f"{run.path / 'checkpoints' / 'last.pt'}; resume with: fmnist-alexnet "
                        f"train --resume {run.path / 'checkpoints' / 'last.pt'}"
                    )
            bar.close()
            train_seconds = time.perf_counter() - epoch_started
            train_metrics = state.finish_epoch(dist)
            val = None
            if len(val_data):
                val = evaluate_on(val_data)
            is_best = state.update_best(val)
            state.elapsed_s += time.perf_counter() - started
            started = time.perf_counter()
            save_last()
            if is_best:
                run.copy_checkpoint("last.pt", "best.pt")
            row = {
                "epoch": epoch + 1,
                "step": state.step,
                **train_metrics,
                "val_loss": val["loss"] if val else None,
                "val_acc": val["accuracy"] if val else None,
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_sec": images_this_run / train_seconds,
                "elapsed_s": state.elapsed_s,
            }
            run.append_metrics(row)
            if dist.is_main:
                log(_epoch_line(row, config.epochs))

    # Final evaluation of the selected checkpoint on the test set, once.
    dist.barrier()
    best_path = run.path / "checkpoints" / "best.pt"
    best_state = ckpt.load_checkpoint(best_path, map_location=device)
    ckpt.load_weights(model, best_state["model"], best_path, config.arch)
    test = evaluate_on(test_data, averaged=False)  # best.pt's model already is the average
    state.elapsed_s += time.perf_counter() - started
    history = run.read_metrics()
    image_rates = [row["images_per_sec"] for row in history]
    result = TrainResult(
        out=run.path,
        test=test,
        best_epoch=best_state["best_epoch"],
        best_val_accuracy=best_state["best_val_acc"],
        wall_s=state.elapsed_s,
        train_images_per_sec=sorted(image_rates)[len(image_rates) // 2] if image_rates else 0.0,
        history=history,
    )
    run.write_json(
        "test_metrics.json",
        {
            "checkpoint": str(best_path),
            "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_accuracy,
            "wall_s": result.wall_s,
            "train_images_per_sec": result.train_images_per_sec,
            **test,
        },
    )
    return result


class TrainState:
    """Counters that make a run resumable: position, best so far, running sums, RNG."""

    def __init__(self) -> None:
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimizer steps
        self.best_val_acc: float | None = None
        self.best_epoch = 0
        self.elapsed_s = 0.0
        self.sums = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n (this epoch)
        self._device_sums: torch.Tensor | None = None

    def record_step(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = len(labels)
        batch = torch.stack(
            [
                loss.double() * n,
                (logits.argmax(1) == labels).sum().double(),
                torch.tensor(float(n), dtype=torch.float64, device=labels.device),
            ]
        )
        if self._device_sums is None:
            self._device_sums = self.sums.to(labels.device)
        self._device_sums += batch
        self.step += 1

    def _current_sums(self) -> torch.Tensor:
        return self.sums if self._device_sums is None else self._device_sums.cpu()

    def running(self) -> dict:
        loss_sum, correct, n = self._current_sums().tolist()
        return {"loss": f"{loss_sum / max(n, 1):.3f}", "acc": f"{correct / max(n, 1):.3f}"}

    def finish_epoch(self, dist: Distributed) -> dict:
        sums = dist.all_reduce_sum(
            self._device_sums if self._device_sums is not None else self.sums.clone()
        )
        loss_sum, correct, n = sums.cpu().tolist()
        self.sums = torch.zeros(3, dtype=torch.float64)
        self._device_sums = None
        self.epoch += 1
        return {"train_loss": loss_sum / max(n, 1), "train_acc": correct / max(n, 1)}

    def update_best(self, val: dict | None) -> bool:
        """Select on validation accuracy; with no validation split the last epoch is best."""
        accuracy = val["accuracy"] if val else None
        if accuracy is None or self.best_val_acc is None or accuracy > self.best_val_acc:
            self.best_val_acc, self.best_epoch = accuracy, self.epoch
            return True
        return False

    def snapshot(self, model, optimizer, scheduler, ema: WeightEma | None, config) -> dict:
        """``model`` holds the weights to evaluate (the average when EMA is on); the weights
        being trained then travel as ``train_model`` for resuming."""
        averaged = {"train_model": model.state_dict(), "ema_updates": ema.updates} if ema else {}
        return {
            "model": ema.state_dict() if ema else model.state_dict(),
            **averaged,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "elapsed_s": self.elapsed_s,
            "epoch_sums": self._current_sums().clone(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "config": config.to_dict(),
        }

    @classmethod
    def restore(cls, saved: dict, model, optimizer, scheduler, ema, device) -> TrainState:
        state = cls()
        model.load_state_dict(saved.get("train_model", saved["model"]))
        if ema is not None:
            if "train_model" not in saved:
                raise FmnistError("--ema: the checkpoint to resume was trained without EMA")
            ema.load_state_dict(saved["model"], saved["ema_updates"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state.epoch, state.step = saved["epoch"], saved["step"]
        state.best_val_acc, state.best_epoch = saved["best_val_acc"], saved["best_epoch"]
        state.elapsed_s = saved["elapsed_s"]
        state.sums = saved["epoch_sums"].double().cpu()
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        if saved["rng"]["cuda"] and device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["rng"]["cuda"]])
        return state


class _StopOnSigint:
    """The first Ctrl-C asks the loop to stop after the current step (so the checkpoint is
    consistent); a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr)

    def __enter__(self) -> _StopOnSigint:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _print_now(line: str) -> None:
    print(line, flush=True)  # progress lines reach a pipe or `tee` as they happen


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


def _sizes(config: TrainConfig) -> str:
    if not config.start_epochs:
        return f"{config.image_size} px"
    return f"{config.start_size} px for {config.start_epochs} epochs then {config.image_size} px"


def summary_line(result: TrainResult) -> str:
    test = result.test
    return (
        f"test accuracy {test['accuracy']:.4f} on {test['n']} images "
        f"(best.pt from epoch {result.best_epoch}) | wall {result.wall_s:.1f} s | "
        f"{result.train_images_per_sec:.0f} train img/s | run {result.out}"
    )


def plan_run(
    preset: str | None, overrides: dict, resume: str | None
) -> tuple[TrainConfig, dict | None]:
    """The resolved config and, when resuming, the checkpoint state to continue from.

    A new run takes the preset (``quick`` when none is named) and the explicit flags. A resumed
    run takes the checkpoint's own config and the explicit flags (``--epochs`` is the total).
    """
    if resume is None:
        config = resolve(preset or "quick", overrides)
        if config.out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            config = replace(config, {"out": str(Path("runs") / f"{stamp}-{config.preset}")})
        return config, None
    if resume == "auto":
        if not overrides.get("out"):
            raise FmnistError("--resume auto needs --out DIR (the run folder to continue)")
        path = Path(overrides["out"]) / "checkpoints" / "last.pt"
    else:
        path = Path(resume)
    state = ckpt.load_checkpoint(path)
    saved = TrainConfig.from_dict(state["config"])
    for key in ("arch", "num_classes"):
        if overrides.get(key) is not None and overrides[key] != getattr(saved, key):
            raise FmnistError(
                f"--{key.replace('_', '-')} {overrides[key]} differs from the checkpoint's "
                f"{getattr(saved, key)} ({path})"
            )
    if preset is not None and preset != saved.preset:
        raise FmnistError(
            f"--preset {preset} differs from the checkpoint's {saved.preset} ({path})"
        )
    overrides = {**overrides, "out": overrides.get("out") or str(path.parent.parent)}
    config = replace(saved, overrides)
    if state["epoch"] >= config.epochs:
        raise FmnistError(
            f"{path} has already trained {state['epoch']} of {config.epochs} epochs; "
            f"pass --epochs N with N > {state['epoch']} to train further"
        )
    return config, state
