"""The model's input contract: what a network expects and what its outputs mean.

Written into every checkpoint and export, read back by evaluation, reports, prediction and
export, so a model never meets inputs prepared differently from how it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from fmnist_alexnet.data import CLASS_NAMES
from fmnist_alexnet.data.batches import Preprocess
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import build_model

# What an export's metadata carries; a run's precision is a training setting, not an input.
EXPORT_FIELDS = ("arch", "num_classes", "image_size", "mean", "std", "resize_mode")


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    image_size: int  # uint8 28x28 -> (x/255 - mean) / std -> resized to image_size
    mean: float
    std: float
    resize_mode: str
    class_names: tuple[str, ...] = CLASS_NAMES
    precision: str = "auto"  # what the run trained in: auto | bf16 | fp32

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_config(cls, config) -> ModelSpec:
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
    def from_dict(cls, values: dict, where: str) -> ModelSpec:
        """From a checkpoint's or an export's stored contract; ``where`` names it in errors."""
        missing = [key for key in EXPORT_FIELDS if key not in values]
        if missing:
            raise FmnistError(f"{where}: its model contract lacks {', '.join(missing)}")
        names = tuple(values.get("class_names") or CLASS_NAMES[: values["num_classes"]])
        if len(names) != values["num_classes"]:
            raise FmnistError(
                f"{where}: {values['num_classes']} classes but {len(names)} class names"
            )
        return cls(
            arch=values["arch"],
            image_size=int(values["image_size"]),
            mean=float(values["mean"]),
            std=float(values["std"]),
            resize_mode=values["resize_mode"],
            class_names=names,
            precision=values.get("precision", "auto"),
        )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
        }

    def export_contract(self) -> dict:
        values = self.to_dict()
        return {key: values[key] for key in (*EXPORT_FIELDS, "class_names")}

    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.mean, self.std, self.resize_mode)

    def build_model(self, dropout: float = 0.5) -> nn.Module:
        return build_model(self.arch, self.num_classes, dropout)
