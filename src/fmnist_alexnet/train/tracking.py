"""Where a run's live figures go: TensorBoard event files in ``RUN/tensorboard``, behind one
small interface that training calls (and that does nothing when tracking is off).

Every point is indexed by the optimizer step, epoch figures included, so that a resumed run's
``purge_step`` (the checkpoint's step + 1) hides whatever the interrupted process wrote after
its checkpoint: the curves continue without duplicate or backward points.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class Tracker:
    """Tracking switched off: every call does nothing."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def log_final(
        self,
        step: int,
        hparams: dict[str, Any],
        metrics: dict[str, Any],
        figures: Callable[[], dict[str, Any]],
    ) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)

    def log_final(
        self,
        step: int,
        hparams: dict[str, Any],
        metrics: dict[str, Any],
        figures: Callable[[], dict[str, Any]],
    ) -> None:
        """The test figures with the recipe as hparams (in this run's own event file, not
        ``add_hparams``' extra sub-run), and ``figures()`` (matplotlib) as images."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        values = {key: _hparam_value(value) for key, value in hparams.items()}
        writer: Any = self.writer.file_writer  # torch annotates it as None until opened
        for summary in hparams_summary(values, metrics):  # type: ignore[no-untyped-call]
            writer.add_summary(summary, step)
        self.log_scalars(step, metrics)
        for tag, figure in figures().items():
            self.writer.add_figure(tag, figure, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tracker(
    run_path: Path,
    *,
    enabled: bool,
    resumed_step: int | None,
    log: Callable[[str], None],
) -> Tracker:
    """A TensorBoard tracker for rank 0 of a run that wants one, else the silent one. A
    missing ``tensorboard`` package is said once; the run goes on without it."""
    if not enabled:
        return Tracker()
    if not tensorboard_installed():
        log(
            "no TensorBoard logging: the tensorboard package is not installed "
            "(pip install 'fmnist-alexnet[tensorboard]'); training goes on without it"
        )
        return Tracker()
    purge_step = None if resumed_step is None else resumed_step + 1
    return TensorBoardTracker(run_path / "tensorboard", purge_step=purge_step)


def tensorboard_installed() -> bool:
    """Whether the ``tensorboard`` package that ``torch.utils.tensorboard`` needs is here."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _hparam_value(value: object) -> bool | int | float | str:
    """TensorBoard's hparams take numbers, strings and booleans only."""
    if value is None:
        return "none"
    return value if isinstance(value, bool | int | float | str) else str(value)
