"""Hyperparameter search: Optuna drives ordinary training runs.

Optuna's TPE sampler proposes recipes; each trial is a run folder under ``OUT/trials``; its
per-epoch validation accuracy feeds a median pruner; the study lives in a database (SQLite in
``OUT`` by default, any ``--storage`` URL otherwise), so running the command again adds
trials and several processes or machines pointed at one database work on one study. Trials
are selected on validation accuracy only; the test set is evaluated once per command, on the
best trial, at the end.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.trial import FrozenTrial

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist_alexnet.config import TrainConfig
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.tune.quota import StudyQuota, counted
from fmnist_alexnet.tune.space import DEFAULT_SPACE, trial_config
from fmnist_alexnet.tune.storage import default_storage, open_storage


@dataclass
class TuneSettings:
    out: Path
    trials: int = 20
    timeout: float | None = None  # seconds; stop starting trials after it
    storage: str | None = None  # default: sqlite:///OUT/study.db; journal:PATH for a file
    study_trials: int | None = None  # the workers of the study together stop at this many
    heartbeat: int = 10  # seconds; a database storage fails a trial silent 3x this long
    study: str = "fmnist-alexnet"
    space: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    startup_trials: int = 5  # TPE samples at random until this many trials exist
    prune_startup: int = 3  # completed trials before the pruner prunes
    prune_warmup: int = 1  # epochs a trial trains before it can be pruned
    sampler_seed: int | None = None


def tune(
    preset: str,
    fixed: dict[str, Any],
    settings: TuneSettings,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``settings.trials`` more trials of the study (or, with ``study_trials``, until the
    study has that many, whichever worker runs them); report, recipe and plots in OUT."""
    started = time.perf_counter()
    optuna = _import_optuna()
    space = {k: v for k, v in settings.space.items() if k not in fixed}
    if settings.trials <= 0:
        raise FmnistError(f"--trials must be > 0, got {settings.trials}")
    if not space:
        raise FmnistError("nothing to search: every setting of the space is fixed by a flag")
    base = trial_config(preset, fixed, {}, settings.out / "trials" / "check")
    if not base.val_size:
        raise FmnistError("tune selects on validation accuracy: it needs --val-size > 0")
    if fixed.keys() & settings.space.keys():
        names = sorted(fixed.keys() & settings.space.keys())
        log("fixed by flags, not searched: " + ", ".join(names))
    settings.out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = _open_study(optuna, preset, fixed, space, settings)
        if not study.trials:
            _enqueue_preset(study, base, space, log)
        quota = StudyQuota(settings.study_trials) if settings.study_trials else None
        objective = _Objective(optuna, preset, fixed, space, settings.out, log, quota)
        _optimize(study, objective, settings, quota, log)
    from fmnist_alexnet.tune.report import write_tune_report

    return write_tune_report(study, preset, fixed, settings, time.perf_counter() - started, log)


def _optimize(
    study: Study,
    objective: _Objective,
    settings: TuneSettings,
    quota: StudyQuota | None,
    log: Callable[[str], None],
) -> None:
    """``--trials`` more trials; or, with a quota, trials until the study has its count,
    then wait for the other workers' (running one again whose worker died)."""
    callbacks: list[Callable[[Study, FrozenTrial], None]] = [
        lambda study, trial: log(_trial_line(trial))
    ]
    if quota is None:
        study.optimize(objective, settings.trials, settings.timeout, callbacks=callbacks)
        return
    from optuna.trial import TrialState

    deadline = time.monotonic() + (settings.timeout or math.inf)
    while time.monotonic() < deadline:
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if waiting or len(counted(trials)) < quota.total:
            left = max(deadline - time.monotonic(), 1e-3) if settings.timeout else None
            study.optimize(objective, None, left, callbacks=[*callbacks, quota])
        if not quota.wait_for_others(study, log):
            return


class _Objective:
    """One trial: sample a recipe, train it as an ordinary run without testing, report each
    epoch's validation accuracy to the pruner; the value is the best validation accuracy."""

    def __init__(
        self,
        optuna: ModuleType,
        preset: str,
        fixed: dict[str, Any],
        space: dict[str, Any],
        out: Path,
        log: Callable[[str], None],
        quota: StudyQuota | None = None,
    ) -> None:
        self.optuna, self.preset, self.fixed, self.space = optuna, preset, fixed, space
        self.out, self.log, self.quota = out, log, quota

    def __call__(self, trial: Trial) -> float:
        from fmnist_alexnet.train import TrainingDiverged, train

        params = {name: _suggest(trial, name, spec) for name, spec in self.space.items()}
        if self.quota and (why := self.quota.surplus(trial.study, trial, params)):
            trial.set_user_attr("error", why)
            return math.nan
        run_dir = self.out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("out", str(run_dir))
        try:
            config = trial_config(self.preset, self.fixed, params, run_dir)
        except FmnistError as exc:  # e.g. a sampled size this architecture cannot take
            trial.set_user_attr("error", str(exc))
            return math.nan

        def on_epoch(row: dict[str, Any]) -> str | None:
            trial.report(row["val_acc"], row["epoch"])
            if trial.should_prune():
                return f"pruned by tune at epoch {row['epoch']}: below the median of trials"
            return None

        def trial_log(line: str) -> None:
            self.log(f"  trial {trial.number}: {line}")

        try:
            result = train(config, log=trial_log, on_epoch=on_epoch, test=False)
        except (FmnistError, TrainingDiverged) as exc:
            # a failed trial (Optuna marks a NaN value so), said in one line, not a traceback
            trial.set_user_attr("error", str(exc))
            return math.nan
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("wall_s", result.wall_s)
        if result.stopped and result.stopped.startswith("pruned"):
            raise self.optuna.TrialPruned(result.stopped)
        best = result.best_val_accuracy
        return math.nan if best is None else best


def _suggest(trial: Trial, name: str, spec: dict[str, Any]) -> Any:
    if spec["type"] == "categorical":
        return trial.suggest_categorical(name, list(spec["choices"]))
    suggest = trial.suggest_int if spec["type"] == "int" else trial.suggest_float
    return suggest(name, spec["low"], spec["high"], log=bool(spec.get("log", False)))


def _open_study(
    optuna: ModuleType,
    preset: str,
    fixed: dict[str, Any],
    space: dict[str, Any],
    settings: TuneSettings,
) -> Study:
    """Create or load the study; a loaded one must have been run with the same preset,
    fixed settings and space (its trials would not be comparable otherwise)."""
    storage = settings.storage or default_storage(settings.out)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets its own line
    try:
        study = optuna.create_study(
            study_name=settings.study,
            storage=open_storage(optuna, storage, settings.heartbeat),
            direction="maximize",
            sampler=optuna.samplers.TPESampler(
                n_startup_trials=settings.startup_trials, seed=settings.sampler_seed
            ),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=settings.prune_startup, n_warmup_steps=settings.prune_warmup
            ),
            load_if_exists=True,
        )
    except (ImportError, ValueError) as exc:  # a bad URL, a database driver not installed
        raise FmnistError(f"--storage {storage}: {exc}") from None
    setup = {"preset": preset, "fixed": fixed, "space": space}
    stored = _jsonable(setup)  # as the storage gives it back
    saved = {key: study.user_attrs.get(key) for key in setup}
    if not study.trials and saved["preset"] is None:
        for key, value in setup.items():
            study.set_user_attr(key, value)
    elif saved != stored:
        differs = ", ".join(k for k in setup if saved[k] != stored[k])
        raise FmnistError(
            f"study {settings.study!r} in {storage} was run with another {differs} "
            f"({saved}); pass the same flags to add trials, or another --study/--out"
        )
    opened: Study = study
    return opened


def _jsonable(value: object) -> Any:
    """What the storage gives back for ``value`` (JSON: tuples become lists)."""
    import json

    return json.loads(json.dumps(value))


def _enqueue_preset(
    study: Study, base: TrainConfig, space: dict[str, Any], log: Callable[[str], None]
) -> None:
    """Trial 0 is the preset's own recipe at the same budget when it lies in the space: the
    baseline every other trial is compared with."""
    params = {name: getattr(base, name) for name in space}
    for name, spec in space.items():
        value = params[name]
        inside = (
            value in spec["choices"]
            if spec["type"] == "categorical"
            else spec["low"] <= value <= spec["high"]
        )
        if not inside:
            log(f"the {base.preset} preset's {name} {value} lies outside the space: no baseline")
            return
    study.enqueue_trial(params, user_attrs={"baseline": base.preset})
    log(f"trial 0 is the {base.preset} preset's own recipe (the baseline)")


def _trial_line(trial: FrozenTrial) -> str:
    state = trial.state.name.lower()
    value = f"val acc {trial.value:.4f}" if trial.value is not None else state
    if state == "pruned":
        value = f"pruned at epoch {trial.user_attrs.get('epochs', '?')}"
    elif state == "fail":
        value = "failed: " + trial.user_attrs.get("error", "see the log above")
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    return f"trial {trial.number}: {value} ({params})"


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _import_optuna() -> ModuleType:
    try:
        import optuna
    except ImportError:
        raise FmnistError("tune needs optuna: pip install 'fmnist-alexnet[tune]'") from None
    return optuna
