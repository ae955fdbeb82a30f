"""Calibrated probabilities: temperature scaling (Guo et al., "On Calibration of Modern
Neural Networks", 2017), fitted on the validation split, never the test set; with it, the
out-of-distribution threshold (``infer/ood.py``) on the same images.

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
from fmnist_alexnet.infer.ood import DEFAULT_METHOD, fit_threshold, ood_scores
from fmnist_alexnet.infer.predict import batched_logits
from fmnist_alexnet.spec import ModelSpec

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


MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the mean NLL of ``softmax(logits / T)``: L-BFGS over log T,
    kept within [0.01, 100] (a network at chance level would drive T to infinity; at 100 its
    probabilities are already as good as uniform)."""
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
    return min(max(float(log_t.detach().exp()), MIN_TEMPERATURE), MAX_TEMPERATURE)


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
    """What ``calibrate`` did: the checkpoint it wrote, the validation figures and the
    out-of-distribution threshold fitted with them."""

    path: str
    images: int  # validation images the temperature was fitted on
    figures: Calibration
    ood_method: str
    ood_threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "images": self.images,
            **self.figures.to_dict(),
            "ood_method": self.ood_method,
            "ood_threshold": self.ood_threshold,
        }


def fitted_spec(
    spec: ModelSpec, val_logits: torch.Tensor, val_labels: torch.Tensor, ood_method: str
) -> tuple[ModelSpec, Calibration]:
    """``spec`` with the temperature and the out-of-distribution threshold fitted on the
    validation logits, and the validation figures at that temperature."""
    temperature = fit_temperature(val_logits, val_labels)
    threshold = fit_threshold(ood_scores(val_logits, ood_method, temperature))
    spec = dataclasses.replace(
        spec, temperature=temperature, ood_method=ood_method, ood_threshold=threshold
    )
    return spec, measure(val_logits, val_labels, temperature)


def calibrate_checkpoint(
    path: str | Path,
    data_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 500,
    ood_method: str = DEFAULT_METHOD,
) -> Calibrated:
    """Fit the temperature and the out-of-distribution threshold of a checkpoint (or a run
    folder's ``best.pt``) on the validation split its run held out, and write them into the
    checkpoint's spec (atomically)."""
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
    logits = batched_logits(loaded, val.images, batch_size)
    spec, figures = fitted_spec(checkpoint.spec, logits, val.labels, ood_method)
    save_checkpoint(path, dataclasses.replace(checkpoint, spec=spec))
    assert spec.ood_threshold is not None
    return Calibrated(str(path), len(val), figures, spec.ood_method, spec.ood_threshold)
