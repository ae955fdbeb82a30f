"""Calibrated probabilities: temperature scaling (Guo et al., "On Calibration of Modern
Neural Networks", 2017), fitted on the validation split, never the test set.

One scalar T divides every logit before the softmax; it is the T that minimises the negative
log-likelihood of the held-out labels, so it changes no answer (the argmax stays), only how
sure each answer says it is. Expected calibration error (ECE, 15 equal-width confidence
bins, L1) is torchmetrics' ``multiclass_calibration_error``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fmnist_alexnet.checkpoint import load_checkpoint, loaded_model, model_file, save_checkpoint
from fmnist_alexnet.data.batches import DeviceData, validation_split
from fmnist_alexnet.data.sources import find_data, load_split
from fmnist_alexnet.errors import FmnistError

ECE_BINS = 15


@dataclass(frozen=True)
class Calibration:
    """How calibrated a model's probabilities are on some images, with and without T."""

    temperature: float
    ece: float
    ece_uncalibrated: float
    nll: float
    nll_uncalibrated: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the mean NLL of ``softmax(logits / T)``: L-BFGS over log T."""
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=0.5, max_iter=100, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.detach().exp())


def measure(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> Calibration:
    """ECE and NLL of ``logits`` at ``temperature`` and at 1."""
    logits, labels = logits.detach().float().cpu(), labels.cpu()
    return Calibration(
        temperature=temperature,
        ece=expected_calibration_error(logits / temperature, labels),
        ece_uncalibrated=expected_calibration_error(logits, labels),
        nll=float(F.cross_entropy(logits / temperature, labels)),
        nll_uncalibrated=float(F.cross_entropy(logits, labels)),
    )


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    from torchmetrics.functional.classification import multiclass_calibration_error

    probabilities = logits.softmax(1)
    return float(
        multiclass_calibration_error(
            probabilities, labels, num_classes=logits.shape[1], n_bins=ECE_BINS, norm="l1"
        )
    )


@dataclass(frozen=True)
class Calibrated:
    """What ``calibrate`` did: the checkpoint it wrote and the validation figures."""

    path: str
    images: int  # validation images the temperature was fitted on
    figures: Calibration

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "images": self.images, **self.figures.to_dict()}


def calibrate_checkpoint(
    path: str | Path,
    data_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 500,
) -> Calibrated:
    """Fit the temperature of a checkpoint (or a run folder's ``best.pt``) on the validation
    split its run held out, and write it into the checkpoint's spec (atomically)."""
    path = model_file(path)
    checkpoint = load_checkpoint(path)
    config = checkpoint.config
    if not config.val_size:
        raise FmnistError(
            f"{path}: trained with --val-size 0, so no validation split to calibrate on "
            "(the test set is never used for it)"
        )
    loaded = loaded_model(checkpoint, path, device)  # the file is read once
    source = find_data(data_dir or config.data_dir)
    full = DeviceData.from_numpy(*load_split(source, "train"), loaded.device)
    _, val = validation_split(full, config.val_size, config.split_seed)
    with torch.no_grad():
        logits = torch.cat(
            [
                loaded.logits(val.images[start : start + batch_size]).cpu()
                for start in range(0, len(val), batch_size)
            ]
        )
    temperature = fit_temperature(logits, val.labels)
    spec = dataclasses.replace(checkpoint.spec, temperature=temperature)
    save_checkpoint(path, dataclasses.replace(checkpoint, spec=spec))
    return Calibrated(str(path), len(val), measure(logits, val.labels, temperature))
