"""The model's input contract: what a network expects and what its outputs mean.

Written into every checkpoint and export, read back by evaluation, reports, prediction and
export, so a model never meets inputs prepared differently from how it was trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmnist_alexnet.config import TrainConfig

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from fmnist_alexnet.data import CLASS_NAMES
from fmnist_alexnet.data.batches import RESIZE_MODES, Preprocess
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.ood import DEFAULT_METHOD, OOD_METHODS
from fmnist_alexnet.model import ARCHS, build_model, check_image_size
from fmnist_alexnet.runtime import PRECISIONS

# What an export's metadata carries; a run's precision is a training setting, not an input.
EXPORT_FIELDS = ("arch", "num_classes", "image_size", "mean", "std", "resize_mode")
MAX_CLASSES = 1000


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    image_size: int  # uint8 28x28 -> (x/255 - mean) / std -> resized to image_size
    mean: float
    std: float
    resize_mode: str
    class_names: tuple[str, ...] = CLASS_NAMES
    precision: str = "auto"  # what the run trained in: auto | bf16 | fp32
    # softmax(logits / temperature): fitted on the validation split by `calibrate` (1: not)
    temperature: float = 1.0
    # an out-of-distribution score above ood_threshold: not a Fashion-MNIST item (infer/ood.py);
    # fitted with the temperature (None: not fitted, nothing is flagged)
    ood_method: str = DEFAULT_METHOD
    ood_threshold: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_config(cls, config: TrainConfig) -> ModelSpec:
        """The contract a :class:`TrainConfig` trains to."""
        return cls(
            arch=config.arch,
            image_size=config.image_size,
            mean=config.mean,
            std=config.std,
            resize_mode=config.resize_mode,
            precision=config.precision,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> ModelSpec:
        """From a checkpoint's or an export's stored contract; ``where`` names it in errors."""
        missing = [key for key in EXPORT_FIELDS if key not in values]
        if missing:
            raise FmnistError(f"{where}: its model contract lacks {', '.join(missing)}")
        try:
            spec = cls(
                arch=values["arch"],
                image_size=_whole(values["image_size"]),
                mean=float(values["mean"]),
                std=float(values["std"]),
                resize_mode=values["resize_mode"],
                class_names=_class_names(values),
                precision=values.get("precision", "auto"),
                temperature=float(values.get("temperature", 1.0)),
                ood_method=values.get("ood_method", DEFAULT_METHOD),
                ood_threshold=_optional_float(values.get("ood_threshold")),
            )
            spec.check()
        except (FmnistError, TypeError, ValueError, OverflowError) as exc:
            raise FmnistError(f"{where}: its model contract is not valid ({exc})") from None
        return spec

    def check(self) -> None:
        """Every field within what a model of this package can be (a damaged or hostile
        file could otherwise ask for a 2**40-class layer or a 10^6 px input)."""
        if self.arch not in ARCHS:
            raise FmnistError(f"unknown architecture {self.arch!r}")
        check_image_size(self.arch, self.image_size)
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise FmnistError(f"mean {self.mean} and std {self.std} must be finite, std > 0")
        if self.resize_mode not in RESIZE_MODES:
            raise FmnistError(f"unknown resize mode {self.resize_mode!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise FmnistError(f"temperature {self.temperature} must be finite and > 0")
        if self.ood_method not in OOD_METHODS:
            raise FmnistError(f"unknown out-of-distribution score {self.ood_method!r}")
        if self.ood_threshold is not None and not math.isfinite(self.ood_threshold):
            raise FmnistError(f"out-of-distribution threshold {self.ood_threshold} is not finite")
        if self.precision not in PRECISIONS:
            raise FmnistError(f"unknown precision {self.precision!r}")
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise FmnistError(f"{self.num_classes} classes (1..{MAX_CLASSES})")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
        }

    def export_contract(self) -> dict[str, Any]:
        values = self.to_dict()
        fitted = ("temperature", "ood_method", "ood_threshold")  # by `calibrate`
        return {key: values[key] for key in (*EXPORT_FIELDS, "class_names", *fitted)}

    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.mean, self.std, self.resize_mode)

    def build_model(self, dropout: float = 0.5) -> nn.Module:
        return build_model(self.arch, self.num_classes, dropout)


def _whole(value: Any) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"not a whole number: {value!r}")
    return int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _class_names(values: dict[str, Any]) -> tuple[str, ...]:
    count = _whole(values["num_classes"])  # its range: ModelSpec.check
    names = values.get("class_names")
    names = CLASS_NAMES[:count] if names is None else names
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ValueError("class names are not a list of strings")
    if len(names) != count:
        raise ValueError(f"{count} classes but {len(names)} class names")
    return tuple(names)
