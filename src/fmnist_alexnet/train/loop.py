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
from typing import Any, NoReturn

import numpy as np
import torch
from tqdm import tqdm

from fmnist_alexnet import checkpoint as ckpt
from fmnist_alexnet.config import TrainConfig, replace
from fmnist_alexnet.data.batches import DeviceData
from fmnist_alexnet.data.sources import is_published
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.calibration import fitted_spec
from fmnist_alexnet.infer.evaluate import Metrics, evaluate, split_logits
from fmnist_alexnet.infer.ood import DEFAULT_METHOD
from fmnist_alexnet.recipe import NOT_RECIPE
from fmnist_alexnet.runtime import (
    Distributed,
    configure_backends,
    device_name,
    resolve_device,
    resolve_precision,
)
from fmnist_alexnet.spec import ModelSpec
from fmnist_alexnet.train.data import RunData, epoch_batches, load_data
from fmnist_alexnet.train.messages import (
    calibrated_line,
    diverged_line,
    epoch_line,
    resumed_line,
    start_line,
    unpublished_data_line,
)
from fmnist_alexnet.train.monitor import NonFinite, StepMonitor, weights_are_finite
from fmnist_alexnet.train.optim import retarget_schedule
from fmnist_alexnet.train.progress import Progress
from fmnist_alexnet.train.rundir import RunDir
from fmnist_alexnet.train.start import resume_changes
from fmnist_alexnet.train.step import TrainStep, build_train_step
from fmnist_alexnet.train.stopping import StopOnSigint, early_stop_reason, stop_condition
from fmnist_alexnet.train.time_budget import TimeBudget
from fmnist_alexnet.train.tracking import Tracker, open_tracker

ShouldStop = Callable[[int], bool]
OnEpoch = Callable[[dict[str, Any]], "str | None"]


class TrainingInterrupted(Exception):
    """Ctrl-C (or ``should_stop``) during training: ``last.pt`` was saved; the message says
    how to resume."""


class TrainingDiverged(Exception):
    """A loss, gradient norm or weight became NaN or infinite. Nothing non-finite was saved:
    ``last.pt`` and ``best.pt`` hold the last finite state. The message is one line."""


@dataclass
class TrainResult:
    out: Path
    test: Metrics | None  # None when the run was asked not to test (tune's trials)
    best_epoch: int
    best_val_accuracy: float | None
    wall_s: float
    train_images_per_sec: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why training ended before --epochs, if it did


def train(
    config: TrainConfig,
    resume: ckpt.Checkpoint | None = None,
    dist: Distributed | None = None,
    log: Callable[[str], None] | None = None,
    should_stop: ShouldStop | None = None,
    on_epoch: OnEpoch | None = None,
    test: bool = True,
) -> TrainResult:
    """Train ``config`` (continuing ``resume`` when given) and test the best checkpoint.

    ``should_stop(step)`` is asked after every optimizer step; True stops the run as Ctrl-C
    does: ``last.pt`` is saved and :class:`TrainingInterrupted` raised. ``on_epoch(row)`` sees
    each epoch's metrics row; a string it returns ends training there, as early stopping does
    (tune prunes this way). ``test=False`` skips the final test (tune's trials).
    A non-finite loss, gradient norm or weight raises :class:`TrainingDiverged`.
    """
    dist, log = dist or Distributed(), log or _print_now
    started = time.perf_counter()
    if config.out is None:
        raise FmnistError("train(config): config.out is not set (the run folder to write)")
    # The folder is created, proved writable and locked for this run (released at the end).
    with RunDir(Path(config.out), enabled=dist.is_main) as run:
        if run.removed_temp:
            log(f"removed {len(run.removed_temp)} temp file(s) a killed write left in {run.path}")
        device = resolve_device(config.device, dist.local_rank)
        precision = resolve_precision(config.precision, device)
        configure_backends(device, config.precision)
        data = load_data(config, device, dist)
        budget = None
        if config.time_budget and resume is None:  # a resumed run keeps the planned epochs
            config, budget = TimeBudget.before_training(
                config, device, precision, data, dist, started, run
            )
        step = build_train_step(config, device, precision, data.steps_per_epoch, dist, resume)
        trainer = Trainer(config, data, step, run, dist, log, Progress(resume, started), budget)
        trainer.start(device, precision, resume)
        return trainer.fit(should_stop, on_epoch, test)


class Trainer:
    """One process's run, built once by :func:`train`. Its config changes only by
    :meth:`set_epochs` (a time budget's new count); its progress, by training."""

    def __init__(
        self,
        config: TrainConfig,
        data: RunData,
        step: TrainStep,
        run: RunDir,
        dist: Distributed,
        log: Callable[[str], None],
        progress: Progress,
        budget: TimeBudget | None,
    ) -> None:
        self.config, self.data, self.step, self.run = config, data, step, run
        self.dist, self.log, self.progress, self.budget = dist, log, progress, budget
        self.spec = ModelSpec.from_config(config)
        self.runtime: dict[str, Any] = {}  # config.json's "runtime"
        self.tracker: Tracker  # both opened by start(), once the run's opening lines are out
        self.monitor: StepMonitor
        self.saved_epoch: int | None = None  # the epoch last.pt holds, when it holds this run's

    def start(self, device: torch.device, precision: str, resume: ckpt.Checkpoint | None) -> None:
        """config.json, the run's opening lines, the tracker; a resumed run's folder as its
        checkpoint left it."""
        config, run = self.config, self.run
        # Rows past the checkpoint (all of them for a new run) belong to a killed process.
        run.truncate_metrics(after_epoch=self.progress.epoch)
        self.runtime = runtime = run_facts(config, device, precision, self.dist, self.data)
        if resume is not None:
            changed = {k: list(v) for k, v in resume_changes(resume.config, config).items()}
            runtime["resumed"] = {"epoch": resume.epoch, "step": resume.step, "changed": changed}
        if self.budget is not None:
            runtime["time_budget"] = self.budget.plan.to_dict()
        run.write_config(config, runtime)
        if self.dist.is_main:
            for line in self.budget.start_lines(config) if self.budget else []:
                self.log(line)
            self.log(start_line(config, device, precision, self.data, run))
            if not runtime["data_published"]:
                self.log(unpublished_data_line(self.data.source.directory))
            if resume is not None:
                self.log(resumed_line(runtime["resumed"]))
        self.tracker = open_tracker(
            run.path,
            enabled=config.tensorboard and self.dist.is_main,
            resumed_step=resume.step if resume else None,
            log=self.log,
        )
        self.monitor = StepMonitor(self.tracker, config.log_every, self.dist)
        if resume is not None and run.holds_checkpoint("last.pt"):
            self.saved_epoch = resume.epoch
            run.repair_best(resume.epoch, resume.best_epoch)

    def set_epochs(self, epochs: int, time_budget: dict[str, Any]) -> None:
        """Train to ``epochs`` from here (a time budget planned again): the schedule
        retargeted to the count, config.json rewritten with it and the plan."""
        if epochs != self.config.epochs:
            self.config = replace(self.config, {"epochs": epochs})
            retarget_schedule(self.step.scheduler, self.config, self.data.steps_per_epoch)
        self.runtime["time_budget"] = time_budget
        self.run.write_config(self.config, self.runtime)

    def fit(
        self, should_stop: ShouldStop | None, on_epoch: OnEpoch | None, test: bool
    ) -> TrainResult:
        """The epochs, then the test; every rank leaves together."""
        try:
            stopped = self.train_epochs(should_stop, on_epoch)
            self.dist.barrier()
            result = self.finish(test, stopped)
            # Ranks leave together: none tears down its Gloo connections while rank 0 still
            # writes the test figures (an error or Ctrl-C above leaves at once instead).
            self.dist.barrier()
            return result
        except NonFinite as exc:
            kept = (
                f"{self.run.checkpoints / 'last.pt'} keeps epoch {self.saved_epoch}, the last "
                "finite state"
                if self.saved_epoch is not None
                else "no checkpoint was written"
            )
            steps = self.data.steps_per_epoch
            raise TrainingDiverged(
                diverged_line(exc.what, exc.step, steps, kept, self.config)
            ) from None
        finally:
            self.tracker.close()

    def train_epochs(self, should_stop: ShouldStop | None, on_epoch: OnEpoch | None) -> str | None:
        """Epochs of training, validation and checkpoints; why training ended early, if it
        did."""
        progress = self.progress
        with StopOnSigint() as sigint:
            stop = stop_condition(sigint, should_stop)
            while progress.epoch < self.config.epochs:  # a time budget may change the count
                epoch, started = progress.epoch, time.perf_counter()
                stopped = early_stop_reason(progress, self.config.early_stop, self.config.min_delta)
                if stopped:  # a resumed run that had already stopped early
                    return stopped
                trained = self.train_one_epoch(epoch, stop)
                if trained is None:
                    last = self.save_last()
                    raise TrainingInterrupted(
                        f"interrupted at epoch {epoch + 1}, step {progress.step}; saved {last}; "
                        f"resume with: fmnist-alexnet train --resume {last}"
                    )
                val = self.validate() if len(self.data.val) else None
                if self.budget is not None:
                    self.budget.after_epoch(self, time.perf_counter() - started)
                stopped = self.end_epoch(trained, val, on_epoch)
                if stopped:
                    return stopped
        return None

    def train_one_epoch(self, epoch: int, stop: ShouldStop) -> dict[str, Any] | None:
        """Train ``epoch`` from where the progress stands; the epoch's training figures, or
        None when ``stop`` asked to stop before its end."""
        steps, progress, world = self.data.steps_per_epoch, self.progress, self.dist.world_size
        started = time.perf_counter()
        start_step = progress.step - epoch * steps
        self.step.model.train()
        self.monitor.start_epoch()
        images = 0
        batches = epoch_batches(
            self.data.train, self.config, self.spec, epoch, start_step, self.dist
        )
        with self._bar(epoch, start_step) as bar:
            for inputs, labels in batches:
                loss, logits = self.step(inputs, labels)
                progress.record_step(loss, logits, labels)
                images += len(labels) * world
                bar.update()
                last = progress.step == (epoch + 1) * steps
                shown = self.monitor.after_step(
                    progress.step,
                    loss,
                    self.step.grad_norm,
                    self.step.lr,
                    len(labels) * world,
                    last,
                )
                if shown:
                    rate = f"{shown['train/images_per_sec']:.0f}"
                    bar.set_postfix(progress.running(), img_s=rate)
                budget = self.budget
                if budget is not None and budget.after_step(self, time.perf_counter() - started):
                    bar.set_description(f"epoch {epoch + 1}/{self.config.epochs}")  # warm-up over
                if stop(progress.step):
                    return None
        seconds = time.perf_counter() - started
        return {**progress.finish_epoch(self.dist), "images_per_sec": images / seconds}

    def _bar(self, epoch: int, start_step: int) -> tqdm[NoReturn]:
        shown = self.config.progress and self.dist.is_main and sys.stderr.isatty()
        return tqdm(
            total=self.data.steps_per_epoch,
            initial=start_step,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            disable=not shown,
            leave=False,
            dynamic_ncols=True,
        )

    def end_epoch(
        self, trained: dict[str, Any], val: Metrics | None, on_epoch: OnEpoch | None
    ) -> str | None:
        """The epoch's row, checkpoint and line; why training stops here, if it does."""
        config, progress = self.config, self.progress
        is_best = progress.update_best(val.accuracy if val else None)
        progress.update_plateau(val.accuracy if val else None, config.min_delta)
        row = epoch_row(progress, trained, val, self.step.lr)
        stopped = early_stop_reason(progress, config.early_stop, config.min_delta)
        if not stopped and on_epoch is not None and progress.epoch < config.epochs:
            stopped = on_epoch(row)
        row["stop"] = stopped
        self.check_finite()
        # The row first, then the checkpoint: a crash between them leaves a row that the
        # resumed run drops and writes again, never an epoch with no row.
        self.run.append_metrics(row)
        self._write_last()
        if is_best:
            self.run.copy_checkpoint("last.pt", "best.pt")
        self.tracker.log_scalars(progress.step, epoch_scalars(row))
        if self.dist.is_main:
            self.log(epoch_line(row, config.epochs))
        return stopped

    def check_finite(self) -> None:
        """:class:`NonFinite` unless the pending losses and every weight are finite."""
        self.monitor.check(self.progress.step)
        if not weights_are_finite(self.step.model):
            raise NonFinite(self.progress.step, "the weights were not finite")

    def save_last(self) -> Path:
        """``last.pt``, only ever with finite weights: the pending losses and every weight
        are checked first (:class:`NonFinite` otherwise, and the previous file stays)."""
        self.check_finite()
        return self._write_last()

    def _write_last(self) -> Path:
        """``last.pt`` of the state :meth:`check_finite` has just passed."""
        self.run.save_checkpoint("last.pt", self.step.checkpoint(self.config, self.progress))
        self.saved_epoch = self.progress.epoch
        return self.run.checkpoints / "last.pt"

    def validate(self) -> Metrics:
        """Validation sees the weight average when ``--ema`` is on."""
        step = self.step
        with step.ema.applied(step.model) if step.ema else nullcontext():
            return self._evaluate(self.data.val)

    def finish(self, test: bool, stopped: str | None) -> TrainResult:
        """The one test of ``best.pt`` (unless skipped), its figures for the tracker, the
        result."""
        history = self.run.read_metrics()
        rates = sorted(row["images_per_sec"] for row in history)
        result = TrainResult(
            out=self.run.path,
            test=None,
            best_epoch=self.progress.best_epoch,
            best_val_accuracy=self.progress.best_val_acc,
            wall_s=self.progress.elapsed_s(),
            train_images_per_sec=rates[len(rates) // 2] if rates else 0.0,
            history=history,
            stopped=stopped,
        )
        if not test:
            return result
        result.test, best = self.final_test()
        if self.config.val_size and self.dist.is_main:
            self.calibrate(best)
        result.best_epoch, result.best_val_accuracy = best.best_epoch, best.best_val_acc
        result.wall_s = self.progress.elapsed_s()
        best_path = self.run.checkpoints / "best.pt"
        self.run.write_json("test_metrics.json", test_metrics(result, result.test, best_path))
        self.tracker.log_final(
            self.progress.step,
            hparams={k: v for k, v in self.config.to_dict().items() if k not in _NOT_HPARAMS},
            metrics={"test/accuracy": result.test.accuracy, "test/loss": result.test.loss},
            figures=lambda: self._final_figures(result.test),
        )
        return result

    def final_test(self) -> tuple[Metrics, ckpt.Checkpoint]:
        """Load ``best.pt`` (already the average when ``--ema`` is on) and test it, once."""
        path = self.run.checkpoints / "best.pt"
        best = ckpt.load_checkpoint(path, map_location=self.data.test.labels.device)
        ckpt.load_weights(self.step.model, best.model, path, self.spec.arch)
        return self._evaluate(self.data.test), best

    def calibrate(self, best: ckpt.Checkpoint) -> None:
        """Fit the temperature and the out-of-distribution threshold of ``best.pt`` (whose
        weights :meth:`final_test` loaded) on the validation split, as ``calibrate`` does."""
        step = self.step
        logits = split_logits(
            step.model,
            self.data.val,
            self.spec.preprocess(),
            batch_size=self.config.eval_batch_size,
            autocast=step.amp,
            channels_last=self.config.channels_last,
        )
        spec, figures = fitted_spec(best.spec, logits, self.data.val.labels.cpu(), DEFAULT_METHOD)
        calibrated = dataclasses.replace(best, spec=spec)
        if best.epoch == self.progress.epoch:  # best.pt is last.pt: they stay one file, so a
            self.run.save_checkpoint("last.pt", calibrated)  # resume's repair_best keeps T
            self.run.copy_checkpoint("last.pt", "best.pt")
        else:
            self.run.save_checkpoint("best.pt", calibrated)
        self.log(calibrated_line(figures, spec, len(logits)))

    def _evaluate(self, data: DeviceData) -> Metrics:
        return evaluate(
            model=self.step.model,
            data=data,
            preprocess=self.spec.preprocess(),
            batch_size=self.config.eval_batch_size,
            autocast=self.step.amp,
            num_classes=self.spec.num_classes,
            channels_last=self.config.channels_last,
            dist=self.dist,
        )

    def _final_figures(self, test: Metrics | None) -> dict[str, Any]:
        """The test confusion matrix and a grid of test images with their predictions; none
        without matplotlib (the ``report`` extra)."""
        try:
            from fmnist_alexnet.figures import SAMPLE_GRID, confusion_figure, pyplot, samples_figure

            pyplot()
        except ImportError:
            return {}
        assert test is not None
        names, step = self.spec.class_names, self.step
        sample = self.data.test.head(SAMPLE_GRID[0] * SAMPLE_GRID[1])
        with torch.no_grad(), step.amp:
            inputs = self.spec.preprocess()(sample.images, channels_last=self.config.channels_last)
            predictions = step.model.eval()(inputs).argmax(1).cpu().numpy()
        images, labels = sample.images[:, 0].cpu().numpy(), sample.labels.cpu().numpy()
        return {
            "test/confusion_matrix": confusion_figure(np.array(test.confusion_matrix), names),
            "test/samples": samples_figure(images, labels, predictions, names),
        }


def epoch_row(
    progress: Progress, trained: dict[str, Any], val: Metrics | None, lr: float
) -> dict[str, Any]:
    """One line of metrics.jsonl."""
    return {
        "epoch": progress.epoch,
        "step": progress.step,
        "train_loss": trained["train_loss"],
        "train_acc": trained["train_acc"],
        "val_loss": val.loss if val else None,
        "val_acc": val.accuracy if val else None,
        "lr": lr,
        "images_per_sec": trained["images_per_sec"],
        "elapsed_s": progress.elapsed_s(),
        "stop": None,
    }


_NOT_HPARAMS = NOT_RECIPE - {"preset"}  # the preset is part of the recipe TensorBoard shows


def epoch_scalars(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch/train_loss": row["train_loss"],
        "epoch/train_acc": row["train_acc"],
        "epoch/val_loss": row["val_loss"],
        "epoch/val_acc": row["val_acc"],
        "epoch/epoch": row["epoch"],
    }


def test_metrics(result: TrainResult, test: Metrics, best: Path) -> dict[str, Any]:
    """test_metrics.json."""
    return {
        "checkpoint": str(best),
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_accuracy,
        "wall_s": result.wall_s,
        "train_images_per_sec": result.train_images_per_sec,
        **test.to_dict(),
    }


def run_facts(
    config: TrainConfig, device: torch.device, precision: str, dist: Distributed, data: RunData
) -> dict[str, Any]:
    """config.json's "runtime": where and on what the run trains."""
    return {
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision,
        "world_size": dist.world_size,
        "torch": torch.__version__,
        "data_source": f"{data.source.origin}: {data.source.directory}",
        "data_published": is_published(data.source),  # the published files, by SHA-256
        "train_images": len(data.train),
        "val_images": len(data.val),
        "test_images": len(data.test),
        "steps_per_epoch": data.steps_per_epoch,
    }


def _print_now(line: str) -> None:
    print(line, flush=True)  # progress lines reach a pipe or `tee` as they happen
