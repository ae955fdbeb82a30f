"""A run's counters: position, best epoch so far, the epoch's running sums, wall time."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmnist_alexnet.checkpoint import Checkpoint

import time
from typing import Any

import torch

from fmnist_alexnet.runtime import Distributed


class Progress:
    def __init__(self, resumed: Checkpoint | None = None, started: float | None = None) -> None:
        """``resumed``: the checkpoint a run continues from; ``started``: when this process
        began the run (``time.perf_counter()``), so setup counts towards the wall time."""
        self.epoch = resumed.epoch if resumed else 0  # completed epochs
        self.step = resumed.step if resumed else 0  # completed optimizer steps
        self.best_val_acc: float | None = resumed.best_val_acc if resumed else None
        self.best_epoch = resumed.best_epoch if resumed else 0
        # early stopping: epochs since validation accuracy last rose by more than min_delta
        self.stale_epochs = resumed.stale_epochs if resumed else 0
        self.plateau_best: float | None = resumed.plateau_best if resumed else None
        self._elapsed_before = resumed.elapsed_s if resumed else 0.0
        self._started = time.perf_counter() if started is None else started
        # loss*n, correct, n of the epoch in progress; on the device while it runs
        self._sums = (
            resumed.epoch_sums.double().cpu()
            if resumed and resumed.epoch_sums is not None
            else torch.zeros(3, dtype=torch.float64)
        )
        self._device_sums: torch.Tensor | None = None

    def elapsed_s(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    def record_step(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds to the sums on the device: no host sync per step."""
        n = len(labels)
        batch = torch.stack(
            [
                loss.double() * n,
                (logits.argmax(1) == labels).sum().double(),
                torch.tensor(float(n), dtype=torch.float64, device=labels.device),
            ]
        )
        if self._device_sums is None:
            self._device_sums = self._sums.to(labels.device)
        self._device_sums += batch
        self.step += 1

    def epoch_sums(self) -> torch.Tensor:
        return self._sums if self._device_sums is None else self._device_sums.cpu()

    def running(self) -> dict[str, Any]:
        loss_sum, correct, n = self.epoch_sums().tolist()
        return {"loss": f"{loss_sum / max(n, 1):.3f}", "acc": f"{correct / max(n, 1):.3f}"}

    def finish_epoch(self, dist: Distributed) -> dict[str, Any]:
        sums = dist.all_reduce_sum(
            self._device_sums if self._device_sums is not None else self._sums.clone()
        )
        loss_sum, correct, n = sums.cpu().tolist()
        self._sums = torch.zeros(3, dtype=torch.float64)
        self._device_sums = None
        self.epoch += 1
        return {"train_loss": loss_sum / max(n, 1), "train_acc": correct / max(n, 1)}

    def update_best(self, accuracy: float | None) -> bool:
        """Select on validation accuracy; with no validation split (None) the last epoch is
        best."""
        if accuracy is None or self.best_val_acc is None or accuracy > self.best_val_acc:
            self.best_val_acc, self.best_epoch = accuracy, self.epoch
            return True
        return False

    def update_plateau(self, accuracy: float | None, min_delta: float) -> None:
        """Count epochs whose validation accuracy does not beat the best by ``min_delta``
        (Lightning's EarlyStopping rule); none without a validation split."""
        if accuracy is None:
            return
        if self.plateau_best is None or accuracy > self.plateau_best + min_delta:
            self.plateau_best, self.stale_epochs = accuracy, 0
        else:
            self.stale_epochs += 1
