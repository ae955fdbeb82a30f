"""Metrics: loss, accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fmnist_alexnet.checkpoint import load_model
from fmnist_alexnet.data.batches import DeviceData, Preprocess, eval_batches, validation_split
from fmnist_alexnet.data.sources import DataSource, find_data, is_published, load_split
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.calibration import Calibration, measure
from fmnist_alexnet.infer.engines import load_classifier, pick_engine
from fmnist_alexnet.infer.predict import Classifier
from fmnist_alexnet.runtime import Distributed, autocast
from fmnist_alexnet.spec import ModelSpec

TTA_CHOICES = ("none", "flip")


@dataclass(frozen=True)
class Metrics:
    """Loss, accuracy and confusion matrix (rows: true class) over ``n`` images."""

    n: int
    loss: float
    accuracy: float
    confusion_matrix: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint evaluated on a split: what ``evaluate`` prints."""

    split: str
    tta: str
    n: int
    accuracy: float
    loss: float
    per_class: dict[str, float]
    confusion_matrix: list[list[int]]
    data_published: bool  # the files are the published Fashion-MNIST (by SHA-256)
    data_directory: str
    calibration: Calibration | None = None  # of the plain logits, at the model's temperature

    def to_dict(self) -> dict[str, Any]:
        """``evaluate --json``'s object."""
        values = asdict(self)
        del values["data_directory"]
        if self.calibration is None:
            del values["calibration"]
        return values


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DeviceData,
    preprocess: Preprocess,
    *,
    batch_size: int,
    autocast: AbstractContextManager[object],
    num_classes: int,
    channels_last: bool = False,
    dist: Distributed | None = None,
    tta: str = "none",
) -> Metrics:
    """Loss, accuracy and confusion matrix over all of ``data`` (summed across ranks).

    ``tta="flip"`` scores each image by the mean of the softmax over it and over its
    horizontal mirror; the loss is then the negative log of that mean probability.
    """
    dist = dist or Distributed()
    tally = _Tally(num_classes, data.labels.device)
    _run(model, data, preprocess, batch_size, autocast, channels_last, dist, tta, tally)
    return tally.metrics(dist)


@torch.no_grad()
def _run(
    model: nn.Module,
    data: DeviceData,
    preprocess: Preprocess,
    batch_size: int,
    autocast: AbstractContextManager[object],
    channels_last: bool,
    dist: Distributed,
    tta: str,
    tally: _Tally,
) -> None:
    _check_tta(tta)
    was_training = model.training
    model.eval()
    batches = eval_batches(data, batch_size, preprocess, dist.rank, dist.world_size, channels_last)
    for inputs, labels in batches:
        with autocast:
            logits = model(inputs).float()
            mirrored = model(inputs.flip(-1)).float() if tta == "flip" else None
        tally.add(logits, mirrored, labels)
    model.train(was_training)


@torch.no_grad()
def split_logits(
    model: nn.Module,
    data: DeviceData,
    preprocess: Preprocess,
    *,
    batch_size: int,
    autocast: AbstractContextManager[object],
    channels_last: bool = False,
) -> torch.Tensor:
    """The float32 logits of all of ``data``, in order, on the CPU, from this process alone
    (what calibration fits on)."""
    was_training = model.training
    model.eval()
    kept = []
    for inputs, _ in eval_batches(data, batch_size, preprocess, channels_last=channels_last):
        with autocast:
            kept.append(model(inputs).float().cpu())
    model.train(was_training)
    return torch.cat(kept)


@torch.no_grad()
def _run_classifier(
    model: Classifier, data: DeviceData, batch_size: int, tta: str, tally: _Tally
) -> None:
    """:func:`_run` for any engine's classifier (an ``.onnx`` export too): each batch of
    uint8 images through ``model.logits``, which prepares them as its contract says. The
    mirror of ``tta="flip"`` is taken of the 28x28 image, before the resize (which commutes
    with it)."""
    _check_tta(tta)
    for start in range(0, len(data), batch_size):
        images = data.images[start : start + batch_size]
        logits = model.logits(images).float()
        mirrored = model.logits(images.flip(-1)).float() if tta == "flip" else None
        tally.add(logits, mirrored, data.labels[start : start + batch_size])


class _Tally:
    """Summed loss and the confusion matrix of the batches seen so far."""

    def __init__(self, num_classes: int, device: torch.device, keep: bool = False) -> None:
        self.num_classes = num_classes
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if keep else None
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)

    def add(
        self, logits: torch.Tensor, mirrored: torch.Tensor | None, labels: torch.Tensor
    ) -> None:
        if mirrored is not None:
            probabilities = (logits.softmax(1) + mirrored.softmax(1)) / 2
            scores = probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()
            self.loss_sum += F.nll_loss(scores, labels, reduction="sum").double()
        else:
            scores = logits
            self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        if self.kept is not None:  # the plain logits, for calibration figures
            self.kept.append((logits.cpu(), labels.cpu()))
        predictions = scores.argmax(1)
        k = self.num_classes
        self.confusion += torch.bincount(labels * k + predictions, minlength=k**2)

    def metrics(self, dist: Distributed) -> Metrics:
        dist.all_reduce_sum(self.loss_sum)
        dist.all_reduce_sum(self.confusion)
        confusion = self.confusion.view(self.num_classes, self.num_classes).cpu()
        n = int(confusion.sum())
        return Metrics(
            n=n,
            loss=float(self.loss_sum) / max(n, 1),
            accuracy=float(confusion.diagonal().sum()) / max(n, 1),
            confusion_matrix=confusion.tolist(),
        )


def _check_tta(tta: str) -> None:
    if tta not in TTA_CHOICES:
        raise FmnistError(f"unknown test-time augmentation {tta!r}; choose one of {TTA_CHOICES}")


def per_class_accuracy(confusion: list[list[int]], class_names: Sequence[str]) -> dict[str, float]:
    return {
        name: (row[i] / sum(row) if sum(row) else 0.0)
        for i, (name, row) in enumerate(zip(class_names, confusion, strict=True))
    }


def evaluate_checkpoint(
    path: str | Path,
    *,
    split: str = "test",
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int = 500,
    precision: str = "auto",
    tta: str = "none",
    limit: int = 0,
) -> Evaluation:
    """Evaluate a checkpoint on the test set or on the validation split it was selected on
    (its first ``limit`` images when given, as ``--limit-eval`` does in training).

    ``precision="auto"`` evaluates in the precision the run trained with, as training's own
    final test evaluation did; ``"fp32"`` or ``"bf16"`` override it. ``tta="flip"`` also
    scores each image's mirror (see :func:`evaluate`); its number is not the plain one.
    """
    if batch_size <= 0:
        raise FmnistError(f"--batch-size must be > 0, got {batch_size}")
    if limit < 0:
        raise FmnistError(f"--limit-eval must be >= 0, got {limit}")
    if pick_engine(path) == "onnx":
        return _evaluate_export(path, split, data_dir, batch_size, tta, limit)
    loaded = load_model(path, device, precision)
    if split == "val" and not loaded.config.val_size:
        raise FmnistError(f"{path}: this run held out no validation split (--val-size 0)")
    source = find_data(data_dir)
    if split == "test":
        data = DeviceData.from_numpy(*load_split(source, "test"), loaded.device)
    else:
        full = DeviceData.from_numpy(*load_split(source, "train"), loaded.device)
        _, data = validation_split(full, loaded.config.val_size, loaded.config.split_seed)
    data = data.head(limit)
    tally = _Tally(loaded.spec.num_classes, data.labels.device, keep=True)
    amp = autocast(loaded.device, loaded.precision)
    _run(loaded.model, data, loaded.preprocess, batch_size, amp, True, Distributed(), tta, tally)
    return _evaluation(tally, split, tta, loaded.spec, source)


def _evaluate_export(
    path: str | Path, split: str, data_dir: str | None, batch_size: int, tta: str, limit: int
) -> Evaluation:
    """An ``.onnx`` export (float32 or int8) on the test set, run by ONNX Runtime."""
    if split != "test":
        raise FmnistError(f"{path}: an export carries no validation split; use --split test")
    model, _ = load_classifier(path, "onnx")
    source = find_data(data_dir)
    data = DeviceData.from_numpy(*load_split(source, "test"), "cpu").head(limit)
    tally = _Tally(model.spec.num_classes, data.labels.device, keep=True)
    _run_classifier(model, data, batch_size, tta, tally)
    return _evaluation(tally, split, tta, model.spec, source)


def _evaluation(
    tally: _Tally, split: str, tta: str, spec: ModelSpec, source: DataSource
) -> Evaluation:
    result, kept = tally.metrics(Distributed()), tally.kept or []
    logits = torch.cat([k[0] for k in kept]) if kept else torch.zeros(0, spec.num_classes)
    labels = torch.cat([k[1] for k in kept]) if kept else torch.zeros(0, dtype=torch.int64)
    class_names = spec.class_names
    return Evaluation(
        split=split,
        tta=tta,
        n=result.n,
        accuracy=result.accuracy,
        loss=result.loss,
        per_class=per_class_accuracy(result.confusion_matrix, class_names),
        confusion_matrix=result.confusion_matrix,
        data_published=is_published(source),
        data_directory=str(source.directory),
        calibration=measure(logits, labels, spec.temperature) if len(labels) else None,
    )
