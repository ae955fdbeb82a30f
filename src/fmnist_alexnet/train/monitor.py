"""What the step loop watches, at no extra device sync: every ``log_every`` steps (and at an
epoch's last step) one sync reads the interval's losses, checks that they and the gradient
norms are finite, and hands the interval's loss, learning rate and images/s to the tracker.

A non-finite value raises :class:`NonFinite` naming the first step that produced it, before
anything is saved; :func:`weights_are_finite` is the last check before a checkpoint write.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from fmnist_alexnet.runtime import Distributed
from fmnist_alexnet.train.tracking import Tracker


class NonFinite(Exception):
    """A loss, gradient norm or weight became NaN or infinite."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"{what} at step {step}")
        self.step, self.what = step, what


class StepMonitor:
    def __init__(self, tracker: Tracker, log_every: int, dist: Distributed | None = None):
        self.tracker, self.log_every, self.dist = tracker, log_every, dist or Distributed()
        self._losses: list[torch.Tensor] = []
        self._norms: list[torch.Tensor] = []
        self._images = 0
        self._since = time.perf_counter()

    def start_epoch(self) -> None:
        """Validation between epochs is not training time."""
        self._since, self._images = time.perf_counter(), 0

    def after_step(
        self,
        step: int,
        loss: torch.Tensor,
        grad_norm: torch.Tensor | None,
        lr: float,
        images: int,
        last_of_epoch: bool = False,
    ) -> dict[str, Any] | None:
        """Keep ``step``'s loss (a device tensor: no sync); at a logging step, check and
        report the interval. Returns what was logged, or None between logging steps."""
        self._losses.append(loss)
        if grad_norm is not None:
            self._norms.append(grad_norm)
        self._images += images
        if step % self.log_every and not last_of_epoch:
            return None
        losses = self.check(step)
        if losses is None:
            return None
        now = time.perf_counter()
        shown = {
            "train/loss": float(losses.mean()),
            "train/lr": lr,
            "train/images_per_sec": self._images / max(now - self._since, 1e-9),
        }
        self._since, self._images = now, 0
        self.tracker.log_scalars(step, shown)
        return shown

    def check(self, step: int) -> torch.Tensor | None:
        """The sync: the losses since the last check (on the host), or :class:`NonFinite`
        naming the first bad step. Every rank agrees before any of them raises."""
        if not self._losses:
            return None
        losses = torch.stack(self._losses).float()
        norms = torch.stack(self._norms).float() if self._norms else losses[:0]
        bad = 0.0
        if self.dist.enabled:  # every rank learns whether any rank saw a bad value
            flags = torch.cat([~torch.isfinite(losses), ~torch.isfinite(norms)])
            bad = self.dist.all_reduce_sum(flags.sum().reshape(1)).item()
        losses, norms = losses.cpu(), norms.cpu()
        first = step - len(losses) + 1
        self._losses, self._norms = [], []
        for index in range(len(losses)):
            if not torch.isfinite(losses[index]):
                raise NonFinite(first + index, f"the loss was {losses[index].item()}")
            if index < len(norms) and not torch.isfinite(norms[index]):
                raise NonFinite(first + index, f"the gradient norm was {norms[index].item()}")
        if bad:
            raise NonFinite(step, "another process's loss or gradient norm was not finite")
        return losses


def weights_are_finite(model: nn.Module) -> bool:
    """One pass over the weights: checked before every checkpoint write."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all())
