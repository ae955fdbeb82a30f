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
from fmnist_alexnet.data.sources import find_data, is_published, load_split
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.runtime import Distributed, autocast

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

    def to_dict(self) -> dict[str, Any]:
        """``evaluate --json``'s object."""
        values = asdict(self)
        del values["data_directory"]
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
    if tta not in TTA_CHOICES:
        raise FmnistError(f"unknown test-time augmentation {tta!r}; choose one of {TTA_CHOICES}")
    dist = dist or Distributed()
    was_training = model.training
    model.eval()
    device = data.labels.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    batches = eval_batches(data, batch_size, preprocess, dist.rank, dist.world_size, channels_last)
    for inputs, labels in batches:
        with autocast:
            logits = model(inputs).float()
            if tta == "flip":
                mirrored = model(inputs.flip(-1)).float()
        if tta == "flip":
            probabilities = (logits.softmax(1) + mirrored.softmax(1)) / 2
            scores = probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()
            loss_sum += F.nll_loss(scores, labels, reduction="sum").double()
        else:
            scores = logits
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        predictions = scores.argmax(1)
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    dist.all_reduce_sum(loss_sum)
    dist.all_reduce_sum(confusion)
    model.train(was_training)
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = int(confusion.sum())
    return Metrics(
        n=n,
        loss=float(loss_sum) / max(n, 1),
        accuracy=float(confusion.diagonal().sum()) / max(n, 1),
        confusion_matrix=confusion.tolist(),
    )


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
    result = evaluate(
        loaded.model,
        data,
        loaded.preprocess,
        batch_size=batch_size,
        autocast=autocast(loaded.device, loaded.precision),
        num_classes=loaded.spec.num_classes,
        channels_last=True,
        tta=tta,
    )
    return Evaluation(
        split=split,
        tta=tta,
        n=result.n,
        accuracy=result.accuracy,
        loss=result.loss,
        per_class=per_class_accuracy(result.confusion_matrix, loaded.spec.class_names),
        confusion_matrix=result.confusion_matrix,
        data_published=is_published(source),
        data_directory=str(source.directory),
    )
