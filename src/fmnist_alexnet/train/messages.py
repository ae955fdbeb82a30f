"""The lines a training run prints: its start, a resume, each epoch, a divergence, the end,
its calibration."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from fmnist_alexnet.config import TrainConfig
    from fmnist_alexnet.infer.calibration import Calibration
    from fmnist_alexnet.spec import ModelSpec
    from fmnist_alexnet.train.budget import BudgetPlan
    from fmnist_alexnet.train.data import RunData
    from fmnist_alexnet.train.loop import TrainResult
    from fmnist_alexnet.train.rundir import RunDir

from typing import Any


def start_line(
    config: TrainConfig, device: torch.device, precision: str, data: RunData, run: RunDir
) -> str:
    sizes = f"{config.image_size} px"
    if config.start_epochs:
        sizes = f"{config.start_size} px for {config.start_epochs} epochs then {sizes}"
    return (
        f"training {config.arch} ({config.preset} preset) on {device} in {precision}, "
        f"{sizes}, {len(data.train)} train / {len(data.val)} val images, "
        f"{config.epochs} epoch{'s' * (config.epochs != 1)} of {data.steps_per_epoch} steps "
        f"-> {run.path}"
    )


def budget_line(plan: BudgetPlan, image_size: int, need: int = 1) -> str:
    """What ``--time-budget`` measured and planned (``budget.BudgetPlan``), and with
    ``--budget-sizes`` which resolution it chose and why."""
    each = plan.epoch_s[-1]
    return (
        f"time budget {plan.budget_s:.0f} s: {_size_choice(plan, image_size, need)}"
        f"{plan.epochs} epoch{'s' * (plan.epochs != 1)} "
        f"fit, about {each:.0f} s each "
        f"with validation ({plan.train_images_per_sec:.0f} train and "
        f"{plan.eval_images_per_sec:.0f} eval img/s measured at {image_size} px), "
        f"{plan.estimate_s:.0f} s planned in all"
    )


def _size_choice(plan: BudgetPlan, image_size: int, need: int) -> str:
    if not plan.sizes:
        return ""
    fits = ", ".join(f"{n} at {size} px" for size, n in plan.sizes.items())
    enough = f"{need} epoch{'s' * (need != 1)}"
    if plan.epochs >= need:
        why = f"the largest that fits {enough}"
    elif len(plan.sizes) == 1:
        why = f"the smallest; it fits fewer than {enough}, so no larger size was timed"
    else:
        why = f"no size fits {enough}"
    return f"{image_size} px chosen ({why}; epochs that fit: {fits}); "


# At most this many planned epochs, `hour`'s heavily regularised recipe, meant for three
# times as many, is behind quick's lighter one (docs/results.md#hour).
FEW_HOUR_EPOCHS = 5


def few_epochs_line(config: TrainConfig, plan: BudgetPlan) -> str | None:
    """A note when ``--preset hour`` fits so few epochs that ``quick``'s recipe does better."""
    if config.preset != "hour" or plan.epochs > FEW_HOUR_EPOCHS:
        return None
    return (
        f"note: only {plan.epochs} epoch{'s' * (plan.epochs != 1)} of the hour preset's recipe "
        "fit on this machine, and it is meant for about 15; where few fit, quick's lighter "
        f"recipe does better: try --preset quick --time-budget {plan.budget_s:g}s"
    )


def replan_line(plan: BudgetPlan, steps_per_epoch: int, schedule: str = "onecycle") -> str:
    """What the first steps of a ``--time-budget`` run changed (a plan from ``replan``)."""
    again = plan.replanned
    if again is None:
        raise ValueError("replan_line: the plan was not planned again")
    which = "before the decay" if schedule == "wsd" else "the warm-up"
    done = (
        "epoch 1"
        if again["steps"] == steps_per_epoch
        else f"the first {again['steps']} step{'s' * (again['steps'] != 1)} ({which})"
    )
    return (
        f"time budget: {done} took {again['took_s']:.0f} s against "
        f"{again['estimated_s']:.0f} s estimated; {plan.epochs} "
        f"epoch{'s' * (plan.epochs != 1)} fit now (planned {again['epochs_before']}), "
        f"{plan.estimate_s:.0f} s in all"
    )


def late_replan_line(plan: BudgetPlan) -> str:
    """What a ``wsd`` run's later plan changed (``budget.replan_late``)."""
    late = plan.late
    if late is None:
        raise ValueError("late_replan_line: the plan was not planned again late")
    done = "epoch 2" if late["after_epoch"] == 2 else f"epochs 2-{late['after_epoch']}"
    return (
        f"time budget: {done} took {late['took_s']:.0f} s against "
        f"{late['estimated_s']:.0f} s estimated; {plan.epochs} epochs fit now (planned "
        f"{late['epochs_before']}), {plan.estimate_s:.0f} s in all"
    )


def resumed_line(resumed: dict[str, Any]) -> str:
    changed = [
        f"{name} {old} -> {new}"
        for name, (old, new) in resumed["changed"].items()
        if name not in ("out", "progress")
    ]
    applied = f"; from here on: {', '.join(changed)}" if changed else ""
    return f"resuming after epoch {resumed['epoch']}, step {resumed['step']}{applied}"


def epoch_line(row: dict[str, Any], epochs: int) -> str:
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
    scored = f"test accuracy {test.accuracy:.4f} on {test.n} images " if test else "not tested "
    stopped = f" | {result.stopped}" if result.stopped else ""
    return (
        f"{scored}(best.pt from epoch {result.best_epoch}) | wall {result.wall_s:.1f} s | "
        f"{result.train_images_per_sec:.0f} train img/s{stopped} | run {result.out}"
    )


def diverged_line(
    what: str, step: int, steps_per_epoch: int, kept: str, config: TrainConfig
) -> str:
    epoch = (step - 1) // steps_per_epoch + 1
    clip = "" if config.grad_clip else " or --grad-clip 1.0"
    return (
        f"training diverged: {what} at step {step} (epoch {epoch}); stopped without "
        f"saving it: {kept}; try a --lr below {config.lr:g}{clip}"
    )


def unpublished_data_line(directory: str | Path) -> str:
    """The warning for files that are not the published dataset (their numbers are not
    Fashion-MNIST's): said once at the start of a train or evaluate command."""
    return (
        f"warning: the files in {directory} are not the published Fashion-MNIST "
        f"(their SHA-256 differ; `fmnist-alexnet data info --data-dir {directory}` "
        "says which): accuracies on them cannot be compared with published ones"
    )


def calibrated_line(figures: Calibration, spec: ModelSpec, images: int) -> str:
    """What fitting ``best.pt``'s temperature and out-of-distribution threshold gave."""
    return (
        f"calibrated best.pt on {images} validation images: temperature "
        f"{figures.temperature:.4f} (ECE {figures.ece_uncalibrated:.4f} -> {figures.ece:.4f}); "
        f"not a garment above {spec.ood_method} score {spec.ood_threshold:.4f}"
    )
