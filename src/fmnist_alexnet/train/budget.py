"""``--time-budget``: size a new run's epochs to a wall-clock budget.

A one-cycle or cosine schedule must know its length in advance, so the budget cannot simply
stop training when time runs out (as Lightning's ``max_time`` does): the run would end at a
high learning rate. Instead a few real training steps of a throwaway copy of the model, a
few evaluation batches and one checkpoint write measure this machine's speed; the run then
takes as many epochs as fit in the budget, at most ``--epochs``, and trains them exactly as
if that count had been given. The global RNG is reseeded when the real model is built, so
the probe changes no draw. A few timed steps on a shared machine can be well off, so the
count is planned again from the run's own steps (:func:`replan`) as late as the learning
rates allow without depending on the count (:func:`replan_step`): after the first epoch
when its rates ignore the total, else when a shorter warm-up ends. The ``wsd`` schedule
holds its peak rate until its final decay, so there the count is planned again after every
epoch that ends before the decay starts (:func:`replan_late`), each time from the pace of
all the epochs after the first, with the margin kept on the time still to run.

With ``--budget-sizes`` the probe also chooses the resolution: it times each size, smallest
first, and the run takes the largest at which ``--budget-epochs`` epochs fit (else the
smallest, with what fits there), so one preset serves a fast and a slow machine alike.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fmnist_alexnet.checkpoint import Checkpoint
from fmnist_alexnet.config import TrainConfig, budget_sizes, epoch_size, replace
from fmnist_alexnet.data.batches import DeviceData, eval_batches
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.runtime import Distributed, synchronize
from fmnist_alexnet.spec import ModelSpec
from fmnist_alexnet.train.data import RunData, epoch_batches
from fmnist_alexnet.train.optim import steps_ignoring_total
from fmnist_alexnet.train.progress import Progress
from fmnist_alexnet.train.step import TrainStep, build_train_step

# Plan to use this share of the budget: later epochs on a shared machine can run slower than
# the first one the plan is scaled by (docs/training.md#time-budget).
SAFETY = 0.88
FINISH_S = 20.0  # kept for the process's start, loading best.pt again and the figures
WARMUP_STEPS = 2  # untimed: the first steps build kernels and allocate
TIMED_STEPS = {"cpu": 5, "cuda": 20}  # the same count on every rank (DDP steps are collective)
EVAL_BATCHES = 2  # timed after one untimed batch


@dataclass(frozen=True)
class Speeds:
    """Measured seconds per training step at each training resolution, per evaluated image
    (this rank's share) and per ``last.pt`` write, plus the warm-up steps' extra time."""

    step_s: dict[int, float]
    eval_image_s: float
    save_s: float
    warmup_extra_s: float


@dataclass(frozen=True)
class BudgetPlan:
    budget_s: float
    epochs: int
    epoch_s: list[float]  # the estimate for each planned epoch: steps, validation, save
    test_s: float  # the final test's pass over the test set
    report_s: float  # the report's own pass over it (after `train`, unless --no-report)
    spent_s: float  # setup and probe, before the first epoch
    warmup_s: float  # the first steps' extra time, as the probe's warm-up steps took
    train_images_per_sec: float  # at --image-size, all ranks together
    eval_images_per_sec: float
    save_s: float = 0.0  # one last.pt write, part of each epoch's estimate
    finish_s: float = FINISH_S
    # after the run's first steps: what they took, what changed
    replanned: dict[str, Any] | None = None
    # wsd: the latest plan after a later epoch, and how many there were
    late: dict[str, Any] | None = None
    sizes: dict[int, int] | None = None  # --budget-sizes: the epochs that fit at each size timed
    costs: list[float] = field(default_factory=list, repr=False)  # every epoch to the cap
    first_steps_s: float = field(default=0.0, repr=False)  # the first epoch's steps alone
    steps_per_epoch: int = field(default=1, repr=False)

    @property
    def estimate_s(self) -> float:
        after = self.test_s + self.report_s + self.finish_s
        return self.spent_s + self.warmup_s + sum(self.epoch_s) + after

    def to_dict(self) -> dict[str, Any]:
        hidden = ("costs", "first_steps_s", "steps_per_epoch")
        values = {k: v for k, v in asdict(self).items() if k not in hidden}
        return {**values, "estimate_s": round(self.estimate_s, 1)}


def fit_epochs(
    config: TrainConfig,
    speeds: Speeds,
    spent_s: float,
    steps_per_epoch: int,
    val_images: int,
    test_images: int,
    world_size: int = 1,
) -> BudgetPlan:
    """As many epochs as fit in ``SAFETY`` of the budget after ``spent_s``, with the final
    test, at most ``config.epochs``; :class:`FmnistError` when not even one fits."""
    val_s = val_images * speeds.eval_image_s / world_size
    test_s = test_images * speeds.eval_image_s / world_size
    reserved = spent_s + speeds.warmup_extra_s + 2 * test_s + FINISH_S
    costs = [
        steps_per_epoch * speeds.step_s[epoch_size(config, epoch)] + val_s + speeds.save_s
        for epoch in range(config.epochs)
    ]
    epochs = _fitting(costs, SAFETY * config.time_budget - reserved)
    if not epochs:
        need = (reserved + costs[0]) / SAFETY
        raise FmnistError(
            f"--time-budget {config.time_budget:g}s fits no epoch on this machine: setup took "
            f"{spent_s:.0f} s and one epoch with validation and the test would take about "
            f"{costs[0] + test_s:.0f} s more; give at least {math.ceil(need)}s, or train on less "
            "(--limit-train, a smaller --image-size)"
        )
    size = config.image_size
    batch_images = config.batch_size  # the global batch: every rank's share together
    return BudgetPlan(
        budget_s=config.time_budget,
        epochs=epochs,
        epoch_s=[round(cost, 1) for cost in costs[:epochs]],
        test_s=round(test_s, 1),
        report_s=round(test_s, 1),
        spent_s=round(spent_s, 1),
        warmup_s=round(speeds.warmup_extra_s, 1),
        train_images_per_sec=round(batch_images / speeds.step_s[size], 1),
        eval_images_per_sec=round(world_size / speeds.eval_image_s, 1),
        save_s=round(speeds.save_s, 1),
        costs=costs,
        first_steps_s=steps_per_epoch * speeds.step_s[epoch_size(config, 0)],
        steps_per_epoch=steps_per_epoch,
    )


def _fitting(costs: list[float], available: float) -> int:
    """How many of ``costs``, taken in order, fit in ``available`` seconds."""
    total = 0.0
    for count, cost in enumerate(costs):
        total += cost
        if total > available:
            return count
    return len(costs)


def replan_step(config: TrainConfig, steps_per_epoch: int) -> int | None:
    """After how many steps the count can be planned again with the run still exactly the
    run of its final count: the last step whose learning rates are the same whatever the
    total. That is the first epoch's end for a constant schedule or a warm-up of at least
    an epoch (then validation and the save are measured too), the end of a shorter warm-up
    (quick's 0.3 epochs), and never without a warm-up (the first rates anneal by the total).
    """
    fixed = steps_ignoring_total(config, steps_per_epoch)
    return int(min(fixed, steps_per_epoch)) if fixed > 0 else None


def replan(
    plan: BudgetPlan, elapsed_s: float, took_s: float, steps: int, least: int = 1
) -> BudgetPlan:
    """The plan again once the first ``steps`` of the run have taken ``took_s`` (with the
    first epoch's validation and save when they complete it), ending at ``elapsed_s``: every
    estimate scaled by that time against the probe's estimate for the same work, and as many
    epochs as then fit, at least the one under way (``least``: ``wsd``'s count whose decay
    would start after these steps)."""
    validation_and_save = plan.costs[0] - plan.first_steps_s
    steps_to_go = plan.first_steps_s * (1 - steps / plan.steps_per_epoch)
    rest_of_epoch = steps_to_go + (validation_and_save if steps < plan.steps_per_epoch else 0.0)
    estimated = plan.warmup_s + plan.costs[0] - rest_of_epoch
    factor = took_s / estimated
    later = [cost * factor for cost in plan.costs[1:]]
    after = (plan.test_s + plan.report_s) * factor + plan.finish_s
    available = SAFETY * plan.budget_s - elapsed_s - rest_of_epoch * factor - after
    epochs = min(len(plan.costs), max(least, 1 + _fitting(later, available)))
    first_epoch_s = took_s + rest_of_epoch * factor
    return dataclasses.replace(
        plan,
        epochs=epochs,
        epoch_s=[round(first_epoch_s, 1)] + [round(cost, 1) for cost in later[: epochs - 1]],
        test_s=round(plan.test_s * factor, 1),
        report_s=round(plan.report_s * factor, 1),
        warmup_s=0.0,  # inside the measured time now
        spent_s=round(elapsed_s - took_s, 1),
        replanned={
            "steps": steps,
            "took_s": round(took_s, 1),
            "estimated_s": round(estimated, 1),
            "factor": round(factor, 3),
            "epochs_before": plan.epochs,
        },
    )


def replan_late(
    plan: BudgetPlan, elapsed_s: float, epochs_done: int, since_first_s: float, least: int
) -> BudgetPlan:
    """The plan again at the end of epoch ``epochs_done`` (at least 2), ending at
    ``elapsed_s``, the epochs after the first having taken ``since_first_s`` (with their
    validations and saves): every later epoch's estimate scaled by that time against the
    probe's for the same epochs, and as many epochs as fit in ``SAFETY`` of what is left
    after the test; never fewer than ``least`` (a count whose decay would have started
    already) nor more than the cap."""
    estimated = sum(plan.costs[1:epochs_done])
    factor = since_first_s / estimated
    later = [cost * factor for cost in plan.costs[epochs_done:]]
    after = plan.test_s + plan.report_s + plan.finish_s
    available = SAFETY * (plan.budget_s - elapsed_s - after)
    epochs = min(len(plan.costs), max(least, epochs_done + _fitting(later, available)))
    done_s = [plan.epoch_s[0]] + [round(since_first_s / (epochs_done - 1), 1)] * (epochs_done - 1)
    return dataclasses.replace(
        plan,
        epochs=epochs,
        epoch_s=done_s + [round(cost, 1) for cost in later[: epochs - epochs_done]],
        late={
            "after_epoch": epochs_done,
            "took_s": round(since_first_s, 1),
            "estimated_s": round(estimated, 1),
            "factor": round(factor, 3),
            "epochs_before": plan.epochs,
            "plans": (plan.late or {}).get("plans", 0) + 1,
        },
    )


def plan_budget(
    config: TrainConfig,
    device: torch.device,
    precision: str,
    data: RunData,
    dist: Distributed,
    started: float,
    save: Callable[[Checkpoint], float],
) -> tuple[TrainConfig, BudgetPlan]:
    """Probe this machine's speed and return ``config`` with the epochs that fit (and, with
    ``--budget-sizes``, the resolution chosen), timed on training's own batches.
    ``save(checkpoint)`` writes one as each epoch will and returns the seconds it took."""
    evaluated = data.val if len(data.val) else data.train
    sizes = budget_sizes(config) or [config.image_size]
    plans: dict[int, BudgetPlan | None] = {}
    save_s = None
    for size in sizes:  # smallest first: stop at the first size too slow to choose
        sized = replace(config, {"image_size": size})
        speeds = probe(sized, device, precision, data.train, evaluated, dist, save, save_s)
        save_s = speeds.save_s
        gc.collect()  # the probe's model and optimizer go before the next ones are built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        spent_s = dist.mean([time.perf_counter() - started])[0]  # every rank plans alike
        fitted = _fit_or_none(sized, speeds, spent_s, data, dist.world_size, size == sizes[0])
        plans[size] = fitted
        if fitted is None or fitted.epochs < config.budget_epochs:
            break
    size = choose_size(plans, config.budget_epochs)
    plan = plans[size]
    assert plan is not None  # a size that fits, or the first, which fits or raised
    if len(sizes) > 1:  # the sizes timed, whether or not all of --budget-sizes were
        plan = dataclasses.replace(
            plan, sizes={s: (p.epochs if p else 0) for s, p in plans.items()}
        )
    return replace(config, {"image_size": size, "epochs": plan.epochs}), plan


def _fit_or_none(
    config: TrainConfig,
    speeds: Speeds,
    spent_s: float,
    data: RunData,
    world_size: int,
    must_fit: bool,
) -> BudgetPlan | None:
    """:func:`fit_epochs`, or None where no epoch fits at this size (an error at the first)."""
    try:
        return fit_epochs(
            config,
            speeds,
            spent_s=spent_s,
            steps_per_epoch=data.steps_per_epoch,
            val_images=len(data.val),
            test_images=len(data.test),
            world_size=world_size,
        )
    except FmnistError:
        if must_fit:
            raise
        return None


def choose_size(plans: dict[int, BudgetPlan | None], need: int) -> int:
    """The largest size whose plan fits ``need`` epochs, else the smallest size timed."""
    fitting = [size for size, plan in plans.items() if plan is not None and plan.epochs >= need]
    return max(fitting) if fitting else min(plans)


def probe(
    config: TrainConfig,
    device: torch.device,
    precision: str,
    train: DeviceData,
    evaluated: DeviceData,
    dist: Distributed,
    save: Callable[[Checkpoint], float],
    save_s: float | None = None,
) -> Speeds:
    """Time real steps of a throwaway model on the run's own batches, then free it. Every
    rank reports the mean over ranks, so all of them plan the same epochs. ``save_s``, when
    known, is used instead of timing another save."""
    spec = ModelSpec.from_config(config)
    step = build_train_step(config, device, precision, steps_per_epoch=1, dist=dist)
    timed = TIMED_STEPS.get(device.type, TIMED_STEPS["cpu"])
    step_s, warmup_extra = {}, 0.0
    for size in sorted({epoch_size(config, e) for e in range(config.epochs)}):
        sized = replace(config, {"image_size": size, "start_epochs": 0, "start_size": 0})
        batches = itertools.chain.from_iterable(
            epoch_batches(train, sized, ModelSpec.from_config(sized), epoch, dist=dist)
            for epoch in itertools.count()
        )
        warm = _steps_s(step, batches, WARMUP_STEPS, device)
        step_s[size] = _steps_s(step, batches, timed, device) / timed
        warmup_extra += max(0.0, warm - WARMUP_STEPS * step_s[size])
    eval_image_s = _eval_image_s(step, evaluated, spec, config, device)
    *steps, eval_image_s, warmup_extra = dist.mean([*step_s.values(), eval_image_s, warmup_extra])
    if save_s is None:
        save_s = save(step.checkpoint(config, Progress())) if dist.is_main else 0.0  # rank 0
        save_s = dist.all_reduce_sum(torch.tensor([save_s], dtype=torch.float64)).item()
    return Speeds(dict(zip(step_s, steps, strict=True)), eval_image_s, save_s, warmup_extra)


@torch.no_grad()
def _eval_image_s(
    step: TrainStep, data: DeviceData, spec: ModelSpec, config: TrainConfig, device: torch.device
) -> float:
    """Seconds per image of validation's forward pass, timed after one untimed batch (on
    that batch again when the data holds only one)."""
    step.model.eval()
    batches = list(
        eval_batches(
            data.head(config.eval_batch_size * (EVAL_BATCHES + 1)),
            config.eval_batch_size,
            spec.preprocess(),
            channels_last=config.channels_last,
        )
    )
    timed = batches[1:] or batches

    def forward(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        with step.amp:
            step.model(batch[0]).argmax(1)

    forward(batches[0])

    def forward_all() -> None:
        for batch in timed:
            forward(batch)

    seconds = _time(device, forward_all)
    step.model.train()
    return seconds / sum(len(batch[1]) for batch in timed)


def _steps_s(
    step: TrainStep,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    count: int,
    device: torch.device,
) -> float:
    def steps() -> None:
        for _ in range(count):
            step(*next(batches))

    return _time(device, steps)


def _time(device: torch.device, fn: Callable[[], None]) -> float:
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started
