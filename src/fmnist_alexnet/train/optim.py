"""Optimizer and learning-rate schedule factories."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from fmnist_alexnet.config import TrainConfig

ONECYCLE_START = 1 / 25  # one-cycle starts at lr/25 (torch's OneCycleLR div_factor)
ONECYCLE_DEFAULT_WARMUP = 0.3  # fraction of the run when no --warmup-epochs is given


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only, not on biases (timm's and torchvision's default)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused kernels update the 57M weights in one pass instead of one kernel per operation.
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    return torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        fused=True,
    )


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, schedule: str, cooldown_steps: int = 0
) -> float:
    """The multiple of the peak learning rate at ``step`` (0-based). ``wsd`` (warm-up,
    stable, decay) holds the peak until its last ``cooldown_steps``, which anneal as the
    cosine schedule does."""
    if schedule == "onecycle":
        warmup_steps = warmup_steps or round(ONECYCLE_DEFAULT_WARMUP * total_steps)
        if step < warmup_steps:
            return ONECYCLE_START + (1 - ONECYCLE_START) * step / warmup_steps
    elif step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        start = total_steps - cooldown_steps
        if step < start:
            return 1.0
        progress = (step - start) / max(1, cooldown_steps)
    else:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _factor(config, steps_per_epoch))


def _factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = config.epochs * steps_per_epoch
    warmup = _warmup_steps(config, steps_per_epoch)
    cooldown = total - cooldown_start(config, steps_per_epoch)
    return lambda step: lr_factor(step, total, warmup, config.schedule, cooldown)


def cooldown_start(config: TrainConfig, steps_per_epoch: int, epochs: int | None = None) -> int:
    """The first step of ``wsd``'s final decay for a run of ``epochs`` (``config.epochs``
    when not given): its last ``--cooldown`` share of the steps. Other schedules: the end."""
    total = (epochs or config.epochs) * steps_per_epoch
    if config.schedule != "wsd":
        return total
    return total - round(config.cooldown * total)


def least_epochs(config: TrainConfig, steps_per_epoch: int, steps: int) -> int:
    """The fewest epochs whose rates for the first ``steps`` are the ones they took: with
    ``wsd``, those whose decay starts no earlier; else 1 (the epoch under way)."""
    counts = itertools.count(1)
    return next(n for n in counts if cooldown_start(config, steps_per_epoch, n) >= steps)


def _warmup_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """``--warmup-epochs`` in steps; 0 when none is given (one-cycle then warms up for
    ``ONECYCLE_DEFAULT_WARMUP`` of the whole run)."""
    return round(config.warmup_epochs * steps_per_epoch)


def steps_ignoring_total(config: TrainConfig, steps_per_epoch: int) -> float:
    """How many leading steps take the same learning rates whatever the run's length: all
    of them (``inf``) on a constant schedule, those before ``wsd``'s decay (for any length
    whose decay starts no earlier), else those of an explicit warm-up (0 without one:
    one-cycle's default warm-up and every annealing depend on the total)."""
    if config.schedule == "constant":
        return math.inf
    if config.schedule == "wsd":
        return max(_warmup_steps(config, steps_per_epoch), cooldown_start(config, steps_per_epoch))
    return _warmup_steps(config, steps_per_epoch)


def retarget_schedule(
    scheduler: torch.optim.lr_scheduler.LambdaLR, config: TrainConfig, steps_per_epoch: int
) -> None:
    """The schedule of ``config.epochs`` from here on, the next step's rate included (a
    ``--time-budget`` run whose count changed after its first epoch)."""
    scheduler.lr_lambdas = [_factor(config, steps_per_epoch)] * len(scheduler.base_lrs)
    _set_current_rates(scheduler)


def _set_current_rates(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Each group's rate at the schedule's position, from its (possibly new) base rates and
    lambdas: what the next step uses."""
    groups = scheduler.optimizer.param_groups
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]


def apply_resumed_settings(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    saved: TrainConfig,
    config: TrainConfig,
) -> None:
    """Restoring a checkpoint brings back its optimizer settings; a resumed run that changes
    them (``plan.RESUME_APPLIES``) takes the new values from here on. Unchanged settings are
    left exactly as restored, so an unchanged resume stays bit-identical."""
    groups = optimizer.param_groups
    if config.lr != saved.lr:
        # The schedule goes on from its position, scaled to the new peak.
        scheduler.base_lrs = [config.lr] * len(groups)
        for group in groups:
            group["initial_lr"] = config.lr
        _set_current_rates(scheduler)
    if config.weight_decay != saved.weight_decay:
        groups[0]["weight_decay"] = config.weight_decay  # the group with weights, not biases
    if config.optimizer == "sgd" and (config.momentum, config.nesterov) != (
        saved.momentum,
        saved.nesterov,
    ):
        for group in groups:
            group["momentum"] = config.momentum
            group["nesterov"] = config.nesterov and config.momentum > 0
