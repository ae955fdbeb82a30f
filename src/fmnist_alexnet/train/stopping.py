"""Stopping a run cleanly: Ctrl-C, or any condition a caller passes as ``should_stop``."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fmnist_alexnet.train.progress import Progress


class StopOnSigint:
    """The first Ctrl-C asks the loop to stop after the current step (so the checkpoint is
    consistent); a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None  # the handler to restore: a callable or a signal constant

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr)

    def __enter__(self) -> StopOnSigint:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def stop_condition(
    sigint: StopOnSigint, should_stop: Callable[[int], bool] | None
) -> Callable[[int], bool]:
    """Asked after every optimizer step with the number of steps done so far."""
    if should_stop is None:
        return lambda step: sigint.requested
    return lambda step: sigint.requested or bool(should_stop(step))


def early_stop_reason(progress: Progress, patience: int, min_delta: float) -> str | None:
    """Why to stop now: ``patience`` epochs in a row without a validation gain above
    ``min_delta`` (``--early-stop``); None to go on, or when early stopping is off."""
    if not patience or progress.stale_epochs < patience:
        return None
    gain = f"by more than {min_delta:g} " if min_delta else ""
    epochs = f"{progress.stale_epochs} epoch" + ("s" if progress.stale_epochs > 1 else "")
    return (
        f"early stop at epoch {progress.epoch}: validation accuracy did not rise {gain}for "
        f"{epochs} (best {progress.best_val_acc:.4f} at epoch {progress.best_epoch})"
    )
