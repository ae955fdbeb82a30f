"""Training's input path: the files read once, the validation split held out, everything on
the device, and each epoch's augmented, resized batches. ``bench`` times this same path."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fmnist_alexnet.config import TrainConfig, epoch_size
from fmnist_alexnet.data.batches import (
    Augment,
    DeviceData,
    Preprocess,
    steps_per_epoch,
    train_batches,
    validation_split,
)
from fmnist_alexnet.data.sources import DataSource, find_data, load_splits
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.runtime import Distributed
from fmnist_alexnet.spec import ModelSpec


@dataclass(frozen=True)
class RunData:
    train: DeviceData
    val: DeviceData
    test: DeviceData
    source: DataSource
    steps_per_epoch: int


def load_data(config: TrainConfig, device: torch.device, dist: Distributed) -> RunData:
    """Find and read the files, hold out the validation split, move everything to ``device``."""
    source = find_data(config.data_dir)
    splits = load_splits(source)
    train_part, val = validation_split(
        DeviceData.from_numpy(*splits["train"], device), config.val_size, config.split_seed
    )
    train_part, val = train_part.head(config.limit_train), val.head(config.limit_eval)
    test = DeviceData.from_numpy(*splits["test"], device).head(config.limit_eval)
    if not config.drop_last and dist.world_size > 1:
        raise FmnistError(
            "--no-drop-last needs one process: a last batch smaller than the global batch "
            f"cannot be split evenly across {dist.world_size}"
        )
    if config.batch_size % dist.world_size:
        raise FmnistError(
            f"--batch-size {config.batch_size} must divide evenly across "
            f"{dist.world_size} processes"
        )
    steps = steps_per_epoch(len(train_part), config.batch_size, config.drop_last)
    if steps == 0:
        raise FmnistError(
            f"--batch-size {config.batch_size} is larger than the {len(train_part)} training images"
        )
    return RunData(train_part, val, test, source, steps)


def epoch_batches(
    data: DeviceData,
    config: TrainConfig,
    spec: ModelSpec,
    epoch: int,
    start_step: int = 0,
    dist: Distributed | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's augmented, resized (inputs, labels) of ``epoch`` from ``start_step`` on."""
    dist = dist or Distributed()
    return train_batches(
        data,
        batch_size=config.batch_size,
        preprocess=train_preprocess(config, spec, epoch),
        augment=Augment(config.flip, config.translate, config.erase, config.zoom, config.rotate),
        seed=config.seed,
        epoch=epoch,
        start_step=start_step,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=config.channels_last,
        drop_last=config.drop_last,
    )


def train_preprocess(config: TrainConfig, spec: ModelSpec, epoch: int) -> Preprocess:
    """Progressive resizing: the first ``start_epochs`` epochs train at ``start_size``."""
    return dataclasses.replace(spec.preprocess(), image_size=epoch_size(config, epoch))
