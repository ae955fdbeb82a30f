"""What a ``train`` command means: a new run's config, or a resumed run's config and the
checkpoint it continues from."""

from __future__ import annotations

import time
from pathlib import Path

from fmnist_alexnet.checkpoint import Checkpoint, load_checkpoint
from fmnist_alexnet.config import TrainConfig, replace, resolve
from fmnist_alexnet.errors import FmnistError


def plan_run(
    preset: str | None, overrides: dict, resume: str | None
) -> tuple[TrainConfig, Checkpoint | None]:
    """A new run takes the preset (``quick`` when none is named) and the explicit flags. A
    resumed run takes the checkpoint's own config and the explicit flags (``--epochs`` is the
    total)."""
    if resume is None:
        config = resolve(preset or "quick", overrides)
        if config.out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            config = replace(config, {"out": str(Path("runs") / f"{stamp}-{config.preset}")})
        return config, None
    if resume == "auto":
        if not overrides.get("out"):
            raise FmnistError("--resume auto needs --out DIR (the run folder to continue)")
        path = Path(overrides["out"]) / "checkpoints" / "last.pt"
    else:
        path = Path(resume)
    checkpoint = load_checkpoint(path)
    saved = checkpoint.config
    if overrides.get("arch") is not None and overrides["arch"] != saved.arch:
        raise FmnistError(
            f"--arch {overrides['arch']} differs from the checkpoint's {saved.arch} ({path})"
        )
    if preset is not None and preset != saved.preset:
        raise FmnistError(
            f"--preset {preset} differs from the checkpoint's {saved.preset} ({path})"
        )
    config = replace(saved, {**overrides, "out": overrides.get("out") or str(path.parent.parent)})
    if checkpoint.epoch >= config.epochs:
        raise FmnistError(
            f"{path} has already trained {checkpoint.epoch} of {config.epochs} epochs; "
            f"pass --epochs N with N > {checkpoint.epoch} to train further"
        )
    return config, checkpoint
