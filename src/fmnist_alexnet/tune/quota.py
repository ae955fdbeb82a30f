"""``--study-trials N``: the workers of one study together run exactly N trials.

Optuna's ``n_trials`` counts per process, so two workers asked for 10 each run 20. Here the
count is the study's own, read from the storage:

- a trial counts unless it failed and was retried (its parameters then run again under a new
  number, which counts instead) or was a surplus start (below);
- before training, a trial with N counted trials numbered below it is a surplus start: two
  workers took the N-th place at the same moment. It trains nothing, is marked failed with
  ``surplus`` set, and its worker stops. So is a trial whose parameters an earlier counted
  one already has (two workers that opened a new study at once both enqueue its baseline);
- after each trial a worker stops once N trials count, running or finished.

Trial numbers are handed out one by one by the storage, so the two racing workers always
agree on which of them is the surplus.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.trial import FrozenTrial

SURPLUS = "surplus"


def counted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards N (see the module's docstring)."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():  # experimental since Optuna 2.8, unchanged since
        warnings.simplefilter("ignore", ExperimentalWarning)
        retried = {RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    return [t for t in trials if t.number not in retried and not t.user_attrs.get(SURPLUS)]


class StudyQuota:
    def __init__(self, total: int) -> None:
        self.total = total

    def surplus(self, study: Study, trial: Trial, params: dict[str, Any]) -> str | None:
        """Why ``trial`` (started, its ``params`` drawn) must not train, or None: it would
        be the study's N+1-th (this worker then stops), or an earlier trial that counts has
        its very parameters (two workers enqueued the preset's baseline at once)."""
        before = [t for t in counted(study.get_trials(deepcopy=False)) if t.number < trial.number]
        why = None
        if len(before) >= self.total:
            why = f"not run: the study already has its {self.total} trials"
            study.stop()
        elif twin := next((t for t in before if t.params == params), None):
            why = f"not run: trial {twin.number} has the same parameters"
        if why:
            trial.set_user_attr(SURPLUS, True)
        return why

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        """Optuna's per-trial callback: stop once N trials count."""
        if len(counted(study.get_trials(deepcopy=False))) >= self.total:
            study.stop()

    def wait_for_others(
        self, study: Study, log: Callable[[str], None], poll_s: float = 1.0
    ) -> bool:
        """Wait while other workers' trials run, so the report sees the whole study. True
        when a trial is waiting to be run again (its worker died): this worker runs it.

        A storage with a heartbeat fails a dead worker's trial by itself. Without one (a
        journal file), a trial running over 3 times as long as the longest finished one,
        and at least a minute, is taken for dead and no longer waited for."""
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        said = False
        while True:
            fail_stale_trials(study)  # a dead worker's trial: failed, its retry enqueued
            trials = study.get_trials(deepcopy=False)
            if any(t.state == TrialState.WAITING for t in trials):
                return True
            running = [t for t in trials if t.state == TrialState.RUNNING]
            alive = [t for t in running if _age_s(t) < _patience_s(trials)]
            if not alive:
                if running:
                    numbers = ", ".join(str(t.number) for t in running)
                    log(f"not waiting for trial(s) {numbers}: running far longer than any other")
                return False
            if not said:
                log(f"waiting for {len(alive)} trial(s) of other workers to end")
                said = True
            time.sleep(poll_s)


def _age_s(trial: FrozenTrial) -> float:
    start = trial.datetime_start
    return 0.0 if start is None else time.time() - start.timestamp()


def _patience_s(trials: Sequence[FrozenTrial]) -> float:
    took = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    ]
    return max(60.0, 3 * max(took, default=0.0))
