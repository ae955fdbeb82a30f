"""``--time-budget`` inside a run: one object that training's loop calls at fixed points
(before training, after each step, after each epoch), as Lightning's callbacks keep side
concerns out of its loop. The probe and the arithmetic of each plan are :mod:`budget`'s."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fmnist_alexnet.config import TrainConfig
from fmnist_alexnet.runtime import Distributed
from fmnist_alexnet.train.budget import BudgetPlan, plan_budget, replan, replan_late, replan_step
from fmnist_alexnet.train.data import RunData
from fmnist_alexnet.train.messages import (
    budget_line,
    few_epochs_line,
    late_replan_line,
    replan_line,
)
from fmnist_alexnet.train.optim import cooldown_start, least_epochs
from fmnist_alexnet.train.rundir import RunDir

if TYPE_CHECKING:
    from fmnist_alexnet.train.loop import Trainer


class TimeBudget:
    """A new run sized to ``--time-budget``: its plan, planned again from the run's own pace
    where the learning rates allow (see :mod:`budget`)."""

    def __init__(self, plan: BudgetPlan, config: TrainConfig, steps_per_epoch: int) -> None:
        self.plan = plan
        self.steps_per_epoch = steps_per_epoch
        self.replan_at = replan_step(config, steps_per_epoch)  # the step planned again after
        self.first_epoch_end_s: float | None = None  # where later plans' pace starts

    @classmethod
    def before_training(
        cls,
        config: TrainConfig,
        device: torch.device,
        precision: str,
        data: RunData,
        dist: Distributed,
        started: float,
        run: RunDir,
    ) -> tuple[TrainConfig, TimeBudget]:
        """Probe this machine; ``config`` with the epochs (and size) that fit, and the budget."""
        config, plan = plan_budget(config, device, precision, data, dist, started, run.time_save)
        return config, cls(plan, config, data.steps_per_epoch)

    def start_lines(self, config: TrainConfig) -> list[str]:
        """What the run says of its plan before it starts."""
        lines = [budget_line(self.plan, config.image_size, config.budget_epochs)]
        if note := few_epochs_line(config, self.plan):
            lines.append(note)
        return lines

    def after_step(self, trainer: Trainer, epoch_took_s: float) -> bool:
        """Plan again where a warm-up shorter than an epoch ends; True when it did."""
        step = trainer.progress.step
        if step != self.replan_at or step >= self.steps_per_epoch:
            return False
        self._replan(trainer, epoch_took_s, step)
        return True

    def after_epoch(self, trainer: Trainer, epoch_took_s: float) -> None:
        """Plan again after epoch 1 (its validation in ``epoch_took_s``), or after a later
        ``wsd`` epoch before the decay; note where epoch 1 ended."""
        if trainer.progress.step == self.replan_at:
            self._replan(trainer, epoch_took_s, trainer.progress.step)
        elif self._late_replan_due(trainer):
            self._replan_late(trainer)
        if trainer.progress.epoch == 1:
            self.first_epoch_end_s = self._elapsed_s(trainer)

    def _replan(self, trainer: Trainer, took_s: float, steps: int) -> None:
        """The epochs that fit by what the first ``steps`` really took (with the first
        epoch's validation when they complete it, and then the save about to be written),
        while the learning rates do not yet depend on the count, so the run stays exactly
        the run of its final count."""
        save_s = self.plan.save_s if steps == self.steps_per_epoch else 0.0
        dist, progress = trainer.dist, trainer.progress
        elapsed, took = dist.mean([progress.elapsed_s() + save_s, took_s + save_s])
        least = least_epochs(trainer.config, self.steps_per_epoch, steps)
        self._adopt(trainer, replan(self.plan, elapsed, took, steps, least))  # same on every rank
        if dist.is_main:
            trainer.log(replan_line(self.plan, self.steps_per_epoch, trainer.config.schedule))

    def _late_replan_due(self, trainer: Trainer) -> bool:
        """A ``wsd`` run past epoch 1 whose decay has not started: its rates so far are those
        of any count whose decay starts no earlier, so the count may change again."""
        config, progress = trainer.config, trainer.progress
        return (
            self.first_epoch_end_s is not None
            and config.schedule == "wsd"
            and progress.epoch >= 2
            and progress.step <= cooldown_start(config, self.steps_per_epoch)
        )

    def _replan_late(self, trainer: Trainer) -> None:
        """The count planned again from the pace of the epochs after the first (their
        validations and saves, the save about to be written included)."""
        assert self.first_epoch_end_s is not None
        progress = trainer.progress
        least = least_epochs(trainer.config, self.steps_per_epoch, progress.step)
        elapsed = self._elapsed_s(trainer)
        since_first = elapsed - self.first_epoch_end_s
        plan = replan_late(self.plan, elapsed, progress.epoch, since_first, least)
        if self._adopt(trainer, plan) and trainer.dist.is_main:
            trainer.log(late_replan_line(self.plan))

    def _adopt(self, trainer: Trainer, plan: BudgetPlan) -> bool:
        """Train to ``plan`` from here; True when its count differs."""
        changed = plan.epochs != trainer.config.epochs
        self.plan = plan
        trainer.set_epochs(plan.epochs, time_budget=plan.to_dict())
        return changed

    def _elapsed_s(self, trainer: Trainer) -> float:
        """The run's time so far with the save about to be written, the same on every rank."""
        return trainer.dist.mean([trainer.progress.elapsed_s() + self.plan.save_s])[0]
