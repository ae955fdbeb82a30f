"""The one owner of what a checkpoint holds: capture, atomic save, safe load, the format
version, and loading a model for inference with its input contract.

A checkpoint file is a dict written by ``torch.save`` and read with ``weights_only=True``:

- ``format_version``: 3 (1 and 2 are still read: 1 had no ``spec``, which its config
  implies; 2 had no early-stopping counters, which start at zero);
- ``spec``: the :class:`ModelSpec` (architecture, classes, input contract, precision);
- ``config``: the run's resolved :class:`TrainConfig` as a dict;
- ``model``: the weights to evaluate, the moving average when ``--ema`` is on; then
  ``train_model`` and ``ema_updates`` hold the weights being trained;
- ``optimizer``, ``scheduler``, ``rng`` and ``epoch_sums``: what an exact resume needs;
- ``epoch``, ``step`` (completed), ``best_epoch``, ``best_val_acc``, ``elapsed_s``;
- ``stale_epochs``, ``plateau_best``: where early stopping stands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmnist_alexnet.train.ema import WeightEma
    from fmnist_alexnet.train.progress import Progress

import dataclasses
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmnist_alexnet.atomic import atomic_write
from fmnist_alexnet.config import TrainConfig
from fmnist_alexnet.data.batches import Preprocess
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.pickles import foreign_imports
from fmnist_alexnet.runtime import autocast, resolve_device, resolve_precision
from fmnist_alexnet.spec import ModelSpec

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


@dataclass
class Checkpoint:
    spec: ModelSpec
    config: TrainConfig
    model: dict[str, torch.Tensor]
    epoch: int = 0
    step: int = 0
    best_epoch: int = 0
    best_val_acc: float | None = None
    elapsed_s: float = 0.0
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    train_model: dict[str, torch.Tensor] | None = None
    ema_updates: int = 0
    epoch_sums: torch.Tensor | None = None  # loss*n, correct, n of the epoch in progress
    rng: dict[str, Any] | None = None
    stale_epochs: int = 0
    plateau_best: float | None = None

    def to_state(self) -> dict[str, Any]:
        state = {
            "format_version": FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "config": self.config.to_dict(),
            **{name: getattr(self, name) for name in _STORED_AS_IS},
        }
        if self.train_model is None:  # as format 1 did: no EMA keys without EMA
            del state["train_model"], state["ema_updates"]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], path: Path) -> Checkpoint:
        if not isinstance(state, dict) or "model" not in state or "config" not in state:
            raise FmnistError(f"{path}: not an fmnist-alexnet checkpoint (no model/config)")
        version = state.get("format_version")
        if version not in READABLE_VERSIONS:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise FmnistError(
                f"{path}: checkpoint format {version!r} is not one this version of "
                f"fmnist-alexnet reads ({', '.join(map(str, READABLE_VERSIONS))}); "
                + (
                    "a newer fmnist-alexnet wrote it: upgrade to load it"
                    if newer
                    else "no fmnist-alexnet writes that format"
                )
            )
        try:
            config = state["config"]
            spec_values = state["spec"] if version >= 2 else _spec_of_format_1(config)
            checkpoint = cls(
                spec=ModelSpec.from_dict(spec_values, str(path)),
                config=TrainConfig.from_dict(config),
                **{key: value for key, value in state.items() if key in _STORED_AS_IS},
            )
        except FmnistError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise FmnistError(
                f"{path}: not an fmnist-alexnet checkpoint (bad spec or config: {exc})"
            ) from None
        if not isinstance(checkpoint.model, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.model.items()
        ):
            raise FmnistError(f"{path}: not an fmnist-alexnet checkpoint (no weights in it)")
        return checkpoint


_STORED_AS_IS = tuple(
    f.name for f in dataclasses.fields(Checkpoint) if f.name not in ("spec", "config")
)


def _spec_of_format_1(config: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept the contract in the config (and trained only 10-class models)."""
    return {"num_classes": 10, "precision": "auto", **config}


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    state = checkpoint.to_state()
    return atomic_write(path, lambda handle: torch.save(state, handle))


def model_file(path: str | Path) -> Path:
    """The checkpoint a user names: a file as given, or a run folder's ``checkpoints/best.pt``."""
    path = Path(path)
    if not path.is_dir():
        return path
    best = path / "checkpoints" / "best.pt"
    if not best.is_file():
        raise FmnistError(f"{path}: a folder without checkpoints/best.pt (not a run folder)")
    return best


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise FmnistError(f"{path}: checkpoint not found")
    if path.suffix.lower() == ".onnx":
        raise FmnistError(
            f"{path}: an ONNX export, not a checkpoint (predict, evaluate and serve run it; "
            "the other commands need the .pt it was exported from)"
        )
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a file that is not torch.save's zip can fail anywhere in pickle
        refused = isinstance(exc, pickle.UnpicklingError) and _refused_object(exc, path)
        if refused:
            raise FmnistError(
                f"{path}: not loaded: it holds code or objects ({refused}) "
                "that an fmnist-alexnet checkpoint never holds, and unpickling them could "
                "run code; only weights, numbers and strings are read from a checkpoint"
            ) from None
        raise FmnistError(
            f"{path}: not a readable checkpoint ({_why_unreadable(exc, path)})"
        ) from None
    return Checkpoint.from_state(state, path)


def _why_unreadable(exc: BaseException, path: Path) -> str:
    """One short reason: torch's own first line is often advice about ``weights_only``."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if not _is_zip(path):
        with open(path, "rb") as handle:
            if handle.read(4) == b"PK\x03\x04":
                return "a damaged or truncated zip archive"
        return "not a zip archive, the format torch.save has written since PyTorch 1.6"
    text = str(exc).strip()
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    text = detail.group(1) if detail else text.split(". This is an internal miniz error")[0]
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # it raises on some damaged ends, e.g. "span multiple disks"
        return False


def _refused_object(exc: BaseException, path: Path) -> str | None:
    """What torch's safe unpickler refused to import, build or call (``posix.system``, a
    class), or None when the file is only damaged (an unknown opcode, a short string)."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return found.group(1)
    foreign = foreign_imports(path)  # e.g. a protocol-4 pickle, refused before its imports
    if foreign:
        return ", ".join(foreign[:3])
    for marker in ("call reduce for", "create new object", "Can only build"):
        if marker in text:
            return "a pickled object"
    return None


def load_weights(model: nn.Module, weights: dict[str, Any], path: str | Path, arch: str) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise FmnistError(
            f"{path}: its weights do not fit architecture {arch!r} "
            "(a checkpoint of another architecture or class count)"
        ) from None


def capture(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: WeightEma | None,
    config: TrainConfig,
    progress: Progress,
) -> Checkpoint:
    """Everything an exact resume needs. ``model`` holds the weights being trained; with EMA
    the average becomes ``model`` (what is evaluated) and they travel as ``train_model``."""
    return Checkpoint(
        spec=ModelSpec.from_config(config),
        config=config,
        model=ema.state_dict() if ema else model.state_dict(),
        train_model=model.state_dict() if ema else None,
        ema_updates=ema.updates if ema else 0,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        epoch=progress.epoch,
        step=progress.step,
        best_epoch=progress.best_epoch,
        best_val_acc=progress.best_val_acc,
        elapsed_s=progress.elapsed_s(),
        epoch_sums=progress.epoch_sums().clone(),
        stale_epochs=progress.stale_epochs,
        plateau_best=progress.plateau_best,
        rng={
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    )


def restore(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: WeightEma | None,
    device: torch.device,
) -> None:
    """The inverse of :func:`capture` for the model, optimizer, schedule, EMA and RNG."""
    model.load_state_dict(checkpoint.train_model or checkpoint.model)
    if ema is not None:
        if checkpoint.train_model is None:
            raise FmnistError("--ema: the checkpoint to resume was trained without EMA")
        ema.load_state_dict(checkpoint.model, checkpoint.ema_updates)
    if checkpoint.optimizer is None or checkpoint.scheduler is None:
        raise FmnistError("the checkpoint holds weights only (no optimizer state) to resume from")
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    rng = checkpoint.rng or {"torch": torch.get_rng_state(), "cuda": []}  # capture() sets it
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] and device.type == "cuda":
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


@dataclass
class LoadedModel:
    """A checkpoint's evaluation weights on a device, ready for inference."""

    model: nn.Module
    spec: ModelSpec
    preprocess: Preprocess
    device: torch.device
    precision: str
    config: TrainConfig  # the recipe it was trained with
    epoch: int
    best_epoch: int
    best_val_acc: float | None

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 1, 28, 28] -> float32 logits [B, classes]."""
        inputs = self.preprocess(images.to(self.device), channels_last=True)
        with autocast(self.device, self.precision):
            logits: torch.Tensor = self.model(inputs)
            return logits.float()


def load_model(path: str | Path, device: str = "auto", precision: str = "auto") -> LoadedModel:
    """A checkpoint (or a run folder's ``best.pt``) ready for inference, with the
    preprocessing it was trained with.

    ``precision="auto"`` runs in the precision the checkpoint was trained with, as resolved
    on this device (bf16 autocast where native); ``"fp32"`` gives the exact float32 logits
    that exported models are compared against.
    """
    path = model_file(path)
    return loaded_model(load_checkpoint(path), path, device, precision)


def loaded_model(
    checkpoint: Checkpoint, path: Path, device: str = "auto", precision: str = "auto"
) -> LoadedModel:
    """:func:`load_model` of a checkpoint already read from ``path`` (named in errors)."""
    spec = checkpoint.spec
    device_ = resolve_device(device)
    model = spec.build_model()
    load_weights(model, checkpoint.model, path, spec.arch)
    model = model.to(device_).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.eval()
    precision = resolve_precision(spec.precision if precision == "auto" else precision, device_)
    return LoadedModel(
        model=model,
        spec=spec,
        preprocess=spec.preprocess(),
        device=device_,
        precision=precision,
        config=checkpoint.config,
        epoch=checkpoint.epoch,
        best_epoch=checkpoint.best_epoch,
        best_val_acc=checkpoint.best_val_acc,
    )
