"""One training step, built from a resolved TrainConfig: the model, its optimizer and
schedule, the weight average, precision and DDP. Training and ``bench`` both run this."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmnist_alexnet.train.progress import Progress

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fmnist_alexnet import checkpoint as ckpt
from fmnist_alexnet.config import TrainConfig
from fmnist_alexnet.model import initialize
from fmnist_alexnet.runtime import Distributed, autocast
from fmnist_alexnet.spec import ModelSpec
from fmnist_alexnet.train.ema import WeightEma
from fmnist_alexnet.train.optim import apply_resumed_settings, build_optimizer, build_scheduler


@dataclass
class TrainStep:
    model: nn.Module  # the plain module: its weights are checkpointed, averaged, evaluated
    # what a step calls: the model, compiled and/or DDP-wrapped
    step_model: Callable[[torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: WeightEma | None
    amp: AbstractContextManager[object]
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    grad_norm: torch.Tensor | None = None  # the last step's, when clipping computes it

    def forward_loss(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self.amp:
            logits = self.step_model(inputs)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return loss, logits

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]

    def update(self) -> None:
        """Clip, step the optimizer and the schedule, then the weight average."""
        if self.grad_clip:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.grad_clip
            ).detach()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema:
            self.ema.update(self.model)

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns the (detached) loss and logits."""
        loss, logits = self.forward_loss(inputs, labels)
        self.backward(loss)
        self.update()
        return loss.detach(), logits.detach()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def checkpoint(self, config: TrainConfig, progress: Progress) -> ckpt.Checkpoint:
        return ckpt.capture(self.model, self.optimizer, self.scheduler, self.ema, config, progress)


def build_train_step(
    config: TrainConfig,
    device: torch.device,
    precision: str,
    steps_per_epoch: int,
    dist: Distributed | None = None,
    resume: ckpt.Checkpoint | None = None,
) -> TrainStep:
    """The model and everything that updates it, on ``device``, from ``resume`` if given."""
    dist = dist or Distributed()
    torch.manual_seed(config.seed)
    model = ModelSpec.from_config(config).build_model(config.dropout)
    model = initialize(model, config.init).to(device)
    # Every rank starts from the same weights (DDP also broadcasts them); dropout then
    # draws differently on each rank, and rank 0 exactly as a single process would.
    torch.manual_seed(config.seed + dist.rank)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    ema = WeightEma(model, config.ema) if config.ema else None
    if resume is not None:
        ckpt.restore(resume, model, optimizer, scheduler, ema, device)
        apply_resumed_settings(optimizer, scheduler, resume.config, config)
        if dist.rank > 0:  # the checkpoint holds rank 0's RNG; others need streams of their own
            torch.manual_seed(config.seed + dist.rank + 1_000_003 * resume.step)
    step_model: Callable[[torch.Tensor], torch.Tensor]
    step_model = torch.compile(model) if config.compile else model
    if dist.enabled:
        step_model = DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return TrainStep(
        model=model,
        step_model=step_model,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        amp=autocast(device, precision),
        label_smoothing=config.label_smoothing,
        grad_clip=config.grad_clip,
    )
