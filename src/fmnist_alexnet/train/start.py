"""What a ``train`` command means: a new run's config, or a resumed run's config and the
checkpoint it continues from.

Settings come, strongest first, from the flags, then a recipe file (``--config``), then the
preset (new run) or the checkpoint's own config (resumed run). A resumed run applies each
changed setting for the rest of the run and records it, or refuses it: never records a
value it does not use.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fmnist_alexnet.checkpoint import Checkpoint, load_checkpoint
from fmnist_alexnet.config import TrainConfig, replace, resolve
from fmnist_alexnet.errors import FmnistError

# What a resumed run can change and does use from then on. Everything else (the data
# split, the order of batches, the model's shape and input contract, the optimizer's kind
# and the schedule's shape) is fixed by the checkpoint.
RESUME_APPLIES = frozenset(
    {
        "epochs",  # the total: the schedule stretches to it
        "lr",  # the peak: the schedule goes on from where it was, scaled to it
        "weight_decay",
        "momentum",
        "nesterov",
        "label_smoothing",
        "grad_clip",
        "dropout",
        "ema",  # the decay; switching the average on or off is refused
        "eval_batch_size",
        "flip",
        "translate",
        "erase",
        "zoom",
        "rotate",
        "precision",
        "channels_last",
        "compile",
        "device",
        "data_dir",
        "out",
        "progress",
        "log_every",
        "tensorboard",
        "early_stop",
        "min_delta",
        "time_budget",  # only to 0: the planned epochs stop binding, --epochs applies
    }
)


class RunComplete(Exception):
    """``--resume auto`` found the run already trained and tested: nothing to do (exit 0)."""


def plan_run(
    preset: str | None,
    overrides: dict[str, Any],
    resume: str | None,
    recipe: dict[str, Any] | None = None,
) -> tuple[TrainConfig, Checkpoint | None]:
    """A new run takes the preset (the recipe's, else ``quick``), the recipe and the
    explicit flags. A resumed run takes the checkpoint's own config, the recipe and the
    flags (``--epochs`` is the total). ``--resume auto`` with no ``OUT/checkpoints/last.pt``
    yet starts a new run there, so one command serves a job's first start and every
    restart after a crash or preemption."""
    recipe = dict(recipe or {})
    recipe_preset = recipe.pop("preset", None)
    preset = preset or recipe_preset
    settings = {**recipe, **{k: v for k, v in overrides.items() if v is not None}}
    if resume is None:
        config = resolve(preset or "quick", settings)
        if config.out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            config = replace(config, {"out": str(Path("runs") / f"{stamp}-{config.preset}")})
        return config, None
    if resume == "auto":
        if not settings.get("out"):
            raise FmnistError("--resume auto needs --out DIR (the run folder to continue)")
        path = Path(settings["out"]) / "checkpoints" / "last.pt"
        if not path.is_file():  # nothing to continue yet: the same command starts the run
            return plan_run(preset, settings, None)
    else:
        path = Path(resume)
    checkpoint = load_checkpoint(path)
    saved = checkpoint.config
    if preset is not None and preset != saved.preset:
        raise FmnistError(
            f"--preset {preset} differs from the checkpoint's {saved.preset} ({path})"
        )
    settings = {**settings, "out": settings.get("out") or str(path.parent.parent)}
    settings = keep_planned_epochs(saved, settings, path, requeued=resume == "auto")
    check_resume_changes(saved, settings, path)
    config = replace(saved, settings)
    if checkpoint.epoch >= config.epochs and resume == "auto":
        tested = Path(settings["out"]) / "test_metrics.json"
        if tested.is_file():  # a requeued job whose run had already ended
            raise RunComplete(f"{config.out} is complete ({tested}); nothing to do")
        return config, checkpoint  # killed after its last epoch: the run goes on to its test
    if checkpoint.epoch >= config.epochs:
        raise FmnistError(
            f"{path} has already trained {checkpoint.epoch} of {config.epochs} epochs; "
            f"pass --epochs N with N > {checkpoint.epoch} to train further"
        )
    return config, checkpoint


def keep_planned_epochs(
    saved: TrainConfig, settings: dict[str, Any], path: Path, requeued: bool
) -> dict[str, Any]:
    """A run sized by ``--time-budget`` keeps the epochs it planned. The same command
    requeued (``--resume auto``) may repeat its ``--epochs`` cap: it is set aside. Any other
    ``--epochs`` needs ``--time-budget 0``, which lifts the plan."""
    budget = settings.get("time_budget", saved.time_budget)
    if not saved.time_budget or not budget or settings.get("epochs") in (None, saved.epochs):
        return settings
    if requeued:
        return {k: v for k, v in settings.items() if k != "epochs"}
    raise FmnistError(
        f"--epochs {settings['epochs']}: {path} planned {saved.epochs} "
        f"epoch{'s' * (saved.epochs != 1)} to its "
        f"--time-budget of {saved.time_budget:g}s; add --time-budget 0 to train it further"
    )


def resume_changes(saved: TrainConfig, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Each setting a resumed run changes: name -> (checkpoint's value, new value)."""
    old, new = saved.to_dict(), config.to_dict()
    return {name: (old[name], new[name]) for name in new if old.get(name) != new[name]}


def check_resume_changes(saved: TrainConfig, settings: dict[str, Any], path: Path) -> None:
    """Refuse, naming the flag, any change a resumed run could not honour."""
    old_values = saved.to_dict()
    for name, new in settings.items():
        old = old_values.get(name)
        if new is None or new == old:
            continue
        flag = "--" + name.replace("_", "-")
        if name not in RESUME_APPLIES:
            raise FmnistError(
                f"{flag} {new} differs from the checkpoint's {old} ({path}): a resumed run "
                "cannot change it; start a new run (another --out) to train with it"
            )
        if name == "time_budget" and new:
            raise FmnistError(
                f"--time-budget {new:g}: a resumed run keeps the epochs its start planned; "
                "only --time-budget 0 (lift the plan, then --epochs applies) can change it"
            )
        if name == "ema" and ((old or 0) > 0) != (new > 0):
            state = "with" if old else "without"
            raise FmnistError(
                f"--ema {new}: the checkpoint ({path}) was trained {state} a weight average; "
                "a resumed run cannot switch it on or off, only change its decay"
            )
