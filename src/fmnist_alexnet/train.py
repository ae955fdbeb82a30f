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

import numpy as np
import torch
from tqdm import tqdm

from fmnist_alexnet import checkpoint as ckpt
from fmnist_alexnet.budget import BudgetPlan, plan_budget, replan, replan_late, replan_step
from fmnist_alexnet.config import TrainConfig, epoch_size, replace
from fmnist_alexnet.data.batches import (
    Augment,
    DeviceData,
    Preprocess,
    steps_per_epoch,
    train_batches,
    validation_split,
)
from fmnist_alexnet.data.sources import DataSource, find_data, is_published, load_splits
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.evaluate import evaluate
from fmnist_alexnet.messages import (
    budget_line,
    diverged_line,
    epoch_line,
    few_epochs_line,
    late_replan_line,
    replan_line,
    resumed_line,
    start_line,
    unpublished_data_line,
)
from fmnist_alexnet.monitor import NonFinite, StepMonitor, weights_are_finite
from fmnist_alexnet.optim import cooldown_start, least_epochs, retarget_schedule
from fmnist_alexnet.plan import resume_changes
from fmnist_alexnet.progress import Progress
from fmnist_alexnet.recipe import NOT_RECIPE
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
from fmnist_alexnet.stopping import StopOnSigint, early_stop_reason, stop_condition
from fmnist_alexnet.tracking import open_tracker


class TrainingInterrupted(Exception):
    """Ctrl-C (or ``should_stop``) during training: ``last.pt`` was saved; the message says
    how to resume."""


class TrainingDiverged(Exception):
    """A loss, gradient norm or weight became NaN or infinite. Nothing non-finite was saved:
    ``last.pt`` and ``best.pt`` hold the last finite state. The message is one line."""


@dataclass
class TrainResult:
    out: Path
    test: dict | None  # None when the run was asked not to test (tune's trials)
    best_epoch: int
    best_val_accuracy: float | None
    wall_s: float
    train_images_per_sec: float
    history: list[dict] = field(default_factory=list)
    stopped: str | None = None  # why training ended before --epochs, if it did


@dataclass
class RunData:
    train: DeviceData
    val: DeviceData
    test: DeviceData
    source: DataSource
    steps_per_epoch: int


@dataclass
class Session:
    """What one process's run works with, built once by :func:`train`."""

    config: TrainConfig
    spec: ModelSpec
    data: RunData
    step: TrainStep
    run: RunDir
    progress: Progress
    monitor: StepMonitor
    dist: Distributed
    log: Callable[[str], None]
    runtime: dict = field(default_factory=dict)  # config.json's "runtime"
    budget: BudgetPlan | None = None  # a new run sized by --time-budget
    replan_at: int | None = None  # with a budget: the step after which it is planned again
    first_epoch_end_s: float | None = None  # with a budget: when epoch 1 ended, its save included
    saved_epoch: int | None = None  # the epoch last.pt holds, when it holds this run's


def train(
    config: TrainConfig,
    resume: ckpt.Checkpoint | None = None,
    dist: Distributed | None = None,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
    on_epoch: Callable[[dict], str | None] | None = None,
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
            config, budget = plan_budget(
                config, device, precision, data, dist, started, epoch_batches, run.time_save
            )
        step = build_train_step(config, device, precision, data.steps_per_epoch, dist, resume)
        progress = Progress(resume, started)
        # Rows past the checkpoint (all of them for a new run) belong to a killed process.
        run.truncate_metrics(after_epoch=progress.epoch)
        runtime = _runtime(config, device, precision, dist, data)
        if resume is not None:
            changed = {k: list(v) for k, v in resume_changes(resume.config, config).items()}
            runtime["resumed"] = {"epoch": resume.epoch, "step": resume.step, "changed": changed}
        if budget is not None:
            runtime["time_budget"] = budget.to_dict()
        run.write_config(config, runtime)
        if dist.is_main:
            if budget is not None:
                log(budget_line(budget, config.image_size, config.budget_epochs))
                if note := few_epochs_line(config, budget):
                    log(note)
            log(start_line(config, device, precision, data, run))
            if not runtime["data_published"]:
                log(unpublished_data_line(data.source.directory))
            if resume is not None:
                log(resumed_line(runtime["resumed"]))
        tracker = open_tracker(
            run.path,
            enabled=config.tensorboard and dist.is_main,
            resumed_step=resume.step if resume else None,
            log=log,
        )
        monitor = StepMonitor(tracker, config.log_every, dist)
        spec = ModelSpec.from_config(config)
        session = Session(
            config, spec, data, step, run, progress, monitor, dist, log, runtime, budget
        )
        if budget is not None:
            session.replan_at = replan_step(config, data.steps_per_epoch)
        if resume is not None and (run.checkpoints / "last.pt").is_file():
            session.saved_epoch = resume.epoch
            if resume.best_epoch == resume.epoch and resume.epoch > 0:
                # killed between last.pt and its copy to best.pt: best.pt is one behind
                run.copy_checkpoint("last.pt", "best.pt")
        try:
            stopped = train_epochs(session, should_stop, on_epoch)
            dist.barrier()
            result = finish(session, test, stopped)
            # Ranks leave together: none tears down its Gloo connections while rank 0 still
            # writes the test figures (an error or Ctrl-C above leaves at once instead).
            dist.barrier()
            return result
        except NonFinite as exc:
            kept = (
                f"{run.checkpoints / 'last.pt'} keeps epoch {session.saved_epoch}, the last "
                "finite state"
                if session.saved_epoch is not None
                else "no checkpoint was written"
            )
            raise TrainingDiverged(
                diverged_line(exc.what, exc.step, data.steps_per_epoch, kept, config)
            ) from None
        finally:
            tracker.close()


def train_epochs(s: Session, should_stop=None, on_epoch=None) -> str | None:
    """Epochs of training, validation and checkpoints; why training ended early, if it did."""
    progress = s.progress
    with StopOnSigint() as sigint:
        stop = stop_condition(sigint, should_stop)
        while progress.epoch < s.config.epochs:  # a time budget may change the count
            epoch, config, started = progress.epoch, s.config, time.perf_counter()
            stopped = early_stop_reason(progress, config.early_stop, config.min_delta)
            if stopped:  # a resumed run that had already stopped early
                return stopped
            trained = train_one_epoch(s, epoch, stop)
            config = s.config  # a budget planned again at a warm-up's end changed the count
            if trained is None:
                last = save_last(s)
                raise TrainingInterrupted(
                    f"interrupted at epoch {epoch + 1}, step {progress.step}; saved {last}; "
                    f"resume with: fmnist-alexnet train --resume {last}"
                )
            val = validate(s.step, s.data.val, s.spec, config, s.dist) if len(s.data.val) else None
            if progress.step == s.replan_at:  # the end of epoch 1 (set only with a budget)
                config = replan_budget(s, time.perf_counter() - started, progress.step)
            elif late_replan_due(s):
                config = replan_budget_late(s)
            if s.budget is not None and progress.epoch == 1:
                s.first_epoch_end_s = budget_elapsed_s(s)  # where later plans' pace starts
            is_best = progress.update_best(val)
            progress.update_plateau(val, config.min_delta)
            row = _epoch_row(progress, trained, val, s.step.lr)
            stopped = early_stop_reason(progress, config.early_stop, config.min_delta)
            if not stopped and on_epoch is not None and progress.epoch < config.epochs:
                stopped = on_epoch(row)
            row["stop"] = stopped
            check_finite(s)
            # The row first, then the checkpoint: a crash between them leaves a row that the
            # resumed run drops and writes again, never an epoch with no row.
            s.run.append_metrics(row)
            _write_last(s)
            if is_best:
                s.run.copy_checkpoint("last.pt", "best.pt")
            s.monitor.tracker.log_scalars(progress.step, _epoch_scalars(row))
            if s.dist.is_main:
                s.log(epoch_line(row, config.epochs))
            if stopped:
                return stopped
    return None


def replan_budget(s: Session, took_s: float, steps: int) -> TrainConfig:
    """The epochs that fit by what a budgeted run's first ``steps`` really took (``took_s``;
    with the first epoch's validation when they complete it, and then the save about to
    be written); the run's config from here on. Called at ``budget.replan_step``, while the
    learning rates do not yet depend on the count, so the run stays exactly the run of its
    final count."""
    save_s = s.budget.save_s if steps == s.data.steps_per_epoch else 0.0
    elapsed, took = s.dist.mean([s.progress.elapsed_s() + save_s, took_s + save_s])
    least = least_epochs(s.config, s.data.steps_per_epoch, steps)
    _adopt_plan(s, replan(s.budget, elapsed, took, steps, least))  # every rank: same figures
    if s.dist.is_main:
        s.log(replan_line(s.budget, s.data.steps_per_epoch, s.config.schedule))
    return s.config


def _adopt_plan(s: Session, plan: BudgetPlan) -> bool:
    """Train to ``plan`` from here: its count, the schedule retargeted to it, config.json
    rewritten with it; True when the count changed."""
    changed = plan.epochs != s.config.epochs
    s.budget = plan
    if changed:
        s.config = replace(s.config, {"epochs": plan.epochs})
        retarget_schedule(s.step.scheduler, s.config, s.data.steps_per_epoch)
    s.runtime["time_budget"] = plan.to_dict()
    s.run.write_config(s.config, s.runtime)
    return changed


def budget_elapsed_s(s: Session) -> float:
    """The run's time so far with the save about to be written, the same on every rank."""
    return s.dist.mean([s.progress.elapsed_s() + s.budget.save_s])[0]


def late_replan_due(s: Session) -> bool:
    """A budgeted ``wsd`` run, past epoch 1, whose decay has not started: its rates so far
    are those of any count whose decay starts no earlier, so the count may change again."""
    return (
        s.first_epoch_end_s is not None
        and s.config.schedule == "wsd"
        and s.progress.epoch >= 2
        and s.progress.step <= cooldown_start(s.config, s.data.steps_per_epoch)
    )


def replan_budget_late(s: Session) -> TrainConfig:
    """The count planned again from the pace of the epochs after the first (their
    validations and saves, the save about to be written included), at least the count
    whose decay starts here; the run stays exactly the run of its final count."""
    least = least_epochs(s.config, s.data.steps_per_epoch, s.progress.step)
    elapsed = budget_elapsed_s(s)
    since_first = elapsed - s.first_epoch_end_s
    plan = replan_late(s.budget, elapsed, s.progress.epoch, since_first, least)
    if _adopt_plan(s, plan) and s.dist.is_main:
        s.log(late_replan_line(s.budget))
    return s.config


def check_finite(s: Session) -> None:
    """:class:`NonFinite` unless the pending losses and every weight are finite."""
    s.monitor.check(s.progress.step)
    if not weights_are_finite(s.step.model):
        raise NonFinite(s.progress.step, "the weights were not finite")


def save_last(s: Session) -> Path:
    """``last.pt``, only ever with finite weights: the pending losses and every weight are
    checked first (:class:`NonFinite` otherwise, and the previous file stays)."""
    check_finite(s)
    return _write_last(s)


def _write_last(s: Session) -> Path:
    """``last.pt`` of the state :func:`check_finite` has just passed."""
    s.run.save_checkpoint("last.pt", s.step.checkpoint(s.config, s.progress))
    s.saved_epoch = s.progress.epoch
    return s.run.checkpoints / "last.pt"


def finish(s: Session, test: bool, stopped: str | None) -> TrainResult:
    """The one test of ``best.pt`` (unless skipped), its figures for the tracker, the result."""
    history = s.run.read_metrics()
    rates = sorted(row["images_per_sec"] for row in history)
    result = TrainResult(
        out=s.run.path,
        test=None,
        best_epoch=s.progress.best_epoch,
        best_val_accuracy=s.progress.best_val_acc,
        wall_s=s.progress.elapsed_s(),
        train_images_per_sec=rates[len(rates) // 2] if rates else 0.0,
        history=history,
        stopped=stopped,
    )
    if not test:
        return result
    result.test, best = final_test(s)
    result.best_epoch, result.best_val_accuracy = best.best_epoch, best.best_val_acc
    result.wall_s = s.progress.elapsed_s()
    s.run.write_json("test_metrics.json", _test_metrics(result, s.run.checkpoints / "best.pt"))
    s.monitor.tracker.log_final(
        s.progress.step,
        hparams={k: v for k, v in s.config.to_dict().items() if k not in _NOT_HPARAMS},
        metrics={"test/accuracy": result.test["accuracy"], "test/loss": result.test["loss"]},
        figures=lambda: _final_figures(s, result.test),
    )
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
    if not config.drop_last and dist.world_size > 1:
        raise FmnistError(
            "--no-drop-last needs one process: a last batch smaller than the global batch "
            f"cannot be split evenly across {dist.world_size}"
        )
    if config.batch_size % dist.world_size:
        raise FmnistError(
            f"--batch-size {config.batch_size} must divide evenly across "
            f"{dist.world_size} processes"
        )
    steps = steps_per_epoch(len(train_part), config.batch_size, config.drop_last)
    if steps == 0:
        raise FmnistError(
            f"--batch-size {config.batch_size} is larger than the {len(train_part)} training images"
        )
    return RunData(train_part, val, test, source, steps)


def train_one_epoch(s: Session, epoch: int, stop: Callable[[int], bool]) -> dict | None:
    """Train ``epoch`` from where the progress stands; the epoch's training figures, or None
    when ``stop`` asked to stop before its end."""
    steps, progress, world = s.data.steps_per_epoch, s.progress, s.dist.world_size
    started = time.perf_counter()
    start_step = progress.step - epoch * steps
    bar = tqdm(
        total=steps,
        initial=start_step,
        desc=f"epoch {epoch + 1}/{s.config.epochs}",
        disable=not (s.config.progress and s.dist.is_main and sys.stderr.isatty()),
        leave=False,
        dynamic_ncols=True,
    )
    s.step.model.train()
    s.monitor.start_epoch()
    images = 0
    with bar:
        batches = epoch_batches(s.data.train, s.config, s.spec, epoch, start_step, s.dist)
        for inputs, labels in batches:
            loss, logits = s.step(inputs, labels)
            progress.record_step(loss, logits, labels)
            images += len(labels) * world
            bar.update()
            last = progress.step == (epoch + 1) * steps
            shown = s.monitor.after_step(
                progress.step, loss, s.step.grad_norm, s.step.lr, len(labels) * world, last
            )
            if shown:
                bar.set_postfix(progress.running(), img_s=f"{shown['train/images_per_sec']:.0f}")
            if progress.step == s.replan_at < steps:
                replan_budget(s, time.perf_counter() - started, progress.step)  # warm-up over
                bar.set_description(f"epoch {epoch + 1}/{s.config.epochs}")
            if stop(progress.step):
                return None
    seconds = time.perf_counter() - started
    return {**progress.finish_epoch(s.dist), "images_per_sec": images / seconds}


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
        augment=Augment(config.flip, config.translate, config.erase, config.zoom, config.rotate),
        seed=config.seed,
        epoch=epoch,
        start_step=start_step,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=config.channels_last,
        drop_last=config.drop_last,
    )


def validate(
    step: TrainStep, data: DeviceData, spec: ModelSpec, config: TrainConfig, dist: Distributed
) -> dict:
    """Validation sees the weight average when ``--ema`` is on."""
    with step.ema.applied(step.model) if step.ema else nullcontext():
        return _evaluate(step, data, spec, config, dist)


def final_test(s: Session):
    """Load ``best.pt`` (already the average when ``--ema`` is on) and test it, once."""
    path = s.run.checkpoints / "best.pt"
    best = ckpt.load_checkpoint(path, map_location=s.data.test.labels.device)
    ckpt.load_weights(s.step.model, best.model, path, s.spec.arch)
    return _evaluate(s.step, s.data.test, s.spec, s.config, s.dist), best


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
    return dataclasses.replace(spec.preprocess(), image_size=epoch_size(config, epoch))


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
        "stop": None,
    }


_NOT_HPARAMS = NOT_RECIPE - {"preset"}  # the preset is part of the recipe TensorBoard shows


def _epoch_scalars(row: dict) -> dict:
    return {
        "epoch/train_loss": row["train_loss"],
        "epoch/train_acc": row["train_acc"],
        "epoch/val_loss": row["val_loss"],
        "epoch/val_acc": row["val_acc"],
        "epoch/epoch": row["epoch"],
    }


def _final_figures(s: Session, test: dict) -> dict:
    """The test confusion matrix and a grid of test images with their predictions; none
    without matplotlib (the ``report`` extra)."""
    try:
        from fmnist_alexnet.figures import SAMPLE_GRID, confusion_figure, pyplot, samples_figure

        pyplot()
    except ImportError:
        return {}
    names = s.spec.class_names
    sample = s.data.test.head(SAMPLE_GRID[0] * SAMPLE_GRID[1])
    with torch.no_grad(), s.step.amp:
        inputs = s.spec.preprocess()(sample.images, channels_last=s.config.channels_last)
        predictions = s.step.model.eval()(inputs).argmax(1).cpu().numpy()
    images, labels = sample.images[:, 0].cpu().numpy(), sample.labels.cpu().numpy()
    return {
        "test/confusion_matrix": confusion_figure(np.array(test["confusion_matrix"]), names),
        "test/samples": samples_figure(images, labels, predictions, names),
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
        "data_published": is_published(data.source),  # the published files, by SHA-256
        "train_images": len(data.train),
        "val_images": len(data.val),
        "test_images": len(data.test),
        "steps_per_epoch": data.steps_per_epoch,
    }


def _print_now(line: str) -> None:
    print(line, flush=True)  # progress lines reach a pipe or `tee` as they happen
