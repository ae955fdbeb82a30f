"""The on-device batch pipeline: sample, gather, augment, normalise, resize, warp.

The whole uint8 dataset lives on the training device (47 MB for 60k images). Every step is
a handful of batched tensor ops there: no per-sample Python, no PIL, no worker processes.
Randomness comes from generators seeded by (seed, epoch) for the order and by
(seed, epoch, step) for augmentation, so any step can be replayed exactly on resume, and
every rank of a distributed run draws from the same global order and slices its shard.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fmnist_alexnet.data.pil_resize import pil_bilinear

# torch interpolate modes on normalised floats, and Pillow's bilinear on the uint8 image
# (what torchvision's Resize does to a PIL image, as d2l and the seed notebook feed it)
RESIZE_MODES = ("bilinear", "bicubic", "nearest", "pil-bilinear")
IMAGE_SIDE = 28


@dataclass
class DeviceData:
    images: torch.Tensor  # uint8 [N, 1, 28, 28] on the device
    labels: torch.Tensor  # int64 [N] on the device

    @classmethod
    def from_numpy(
        cls, images: np.ndarray, labels: np.ndarray, device: torch.device | str
    ) -> DeviceData:
        return cls(
            torch.from_numpy(images.copy()).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE).to(device),
            torch.from_numpy(labels.astype(np.int64)).to(device),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> DeviceData:
        indices = indices.to(self.labels.device)
        return DeviceData(self.images[indices], self.labels[indices])

    def head(self, n: int) -> DeviceData:
        """The first ``n`` images (all when ``n`` is 0), without copying."""
        return self if not n else DeviceData(self.images[:n], self.labels[:n])


def split_train_val(
    n: int, val_size: int, split_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold ``val_size`` images out of the training set, the same ones for every run seed."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def validation_split(
    train: DeviceData, val_size: int, split_seed: int = 0
) -> tuple[DeviceData, DeviceData]:
    """The training set less its held-out validation images, and those images."""
    train_idx, val_idx = split_train_val(len(train), val_size, split_seed)
    return train.subset(train_idx), train.subset(val_idx)


def generator(device: torch.device, *keys: int) -> torch.Generator:
    """A generator on ``device`` seeded by mixing the integer keys."""
    seed = 0x9E3779B9
    for key in keys:
        seed = (seed * 1_000_003 + int(key) + 1) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing contract a checkpoint records: uint8 28x28 -> normalised float SxS."""

    image_size: int
    mean: float
    std: float
    resize_mode: str = "bilinear"

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        if self.resize_mode == "pil-bilinear" and self.image_size != images.shape[-1]:
            images = pil_bilinear(images, self.image_size)  # rounds to uint8, as Pillow does
        # Normalising before resizing is exact for (bi)linear resizing and 64x cheaper at 224 px.
        x = images.float().div_(255.0).sub_(self.mean).div_(self.std)
        if self.image_size != x.shape[-1]:
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode=self.resize_mode,
                **({} if self.resize_mode == "nearest" else {"align_corners": False}),
            )
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def background(self) -> float:
        """What a black (0) pixel becomes: the fill of a warp's empty border."""
        return -self.mean / self.std

    def describe(self) -> str:
        """The steps in words, for reports and model cards."""
        scale = f"x/255, (x - {self.mean}) / {self.std}"
        if self.resize_mode == "pil-bilinear":
            return f"Pillow's bilinear resize of the uint8 image (8-bit rounding), then {scale}"
        return f"{scale}, then {self.resize_mode} resize (align_corners=False)"


ERASE_SCALE = (0.02, 0.33)  # area fraction of an erased box (torchvision's RandomErasing)
ERASE_RATIO = (0.3, 3.3)  # its aspect ratio, drawn log-uniformly


@dataclass(frozen=True)
class AugmentDraw:
    flip: torch.Tensor  # bool [B]
    shift: torch.Tensor  # int64 [B, 2]: (dy, dx) in 28-px pixels
    erase: torch.Tensor | None = None  # bool [B, 28, 28]: pixels replaced by noise
    noise: torch.Tensor | None = None  # uint8 [B, 1, 28, 28]
    warp: torch.Tensor | None = None  # float32 [B, 2, 3]: affine_grid's theta per sample

    def shard(self, start: int, stop: int) -> AugmentDraw:
        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop]

        return AugmentDraw(
            self.flip[start:stop],
            self.shift[start:stop],
            part(self.erase),
            part(self.noise),
            part(self.warp),
        )


@dataclass(frozen=True)
class Augment:
    """Per-sample random horizontal flip, translation (a zero-padded random crop), random
    erasing (a box of random noise, Zhong et al. 2017) on the uint8 28x28 images, and a
    random zoom and rotation (one affine warp) of the resized float batch, all batched."""

    flip: bool = False
    translate: int = 0  # largest shift in pixels of the 28x28 image
    erase: float = 0.0  # probability that a sample gets an erased box
    zoom: float = 0.0  # largest relative zoom in or out: 0.1 draws 0.9x to 1.1x
    rotate: float = 0.0  # largest rotation either way, in degrees

    @property
    def enabled(self) -> bool:
        return self.flip or self.translate > 0 or self.erase > 0 or self.warps

    @property
    def warps(self) -> bool:
        return self.zoom > 0 or self.rotate > 0

    def draw(self, batch_size: int, gen: torch.Generator) -> AugmentDraw:
        device = gen.device
        flip = torch.rand(batch_size, generator=gen, device=device) < 0.5
        shift = torch.randint(
            -self.translate, self.translate + 1, (batch_size, 2), generator=gen, device=device
        )
        # Each later kind is drawn after the earlier ones, so a run without it keeps the
        # draws it had before that kind existed.
        erase, noise = self._draw_erase(batch_size, gen) if self.erase > 0 else (None, None)
        warp = self._draw_warp(batch_size, gen) if self.warps else None
        return AugmentDraw(flip, shift, erase, noise, warp)

    def _draw_warp(self, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        """theta maps output to input coordinates: input = R(angle) @ output / zoom."""
        u = torch.rand(batch_size, 2, generator=gen, device=gen.device) * 2 - 1
        zoom = 1 + self.zoom * u[:, 0]
        angle = torch.deg2rad(self.rotate * u[:, 1])
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        zero = torch.zeros_like(cos)
        return torch.stack([cos, -sin, zero, sin, cos, zero], 1).view(batch_size, 2, 3)

    def _draw_erase(
        self, batch_size: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device, side = gen.device, IMAGE_SIDE
        u = torch.rand(batch_size, 5, generator=gen, device=device)
        area = side * side * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * u[:, 0])
        low, high = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
        ratio = torch.exp(low + (high - low) * u[:, 1])
        h = (area * ratio).sqrt().round().clamp(1, side).long()
        w = (area / ratio).sqrt().round().clamp(1, side).long()
        y = (u[:, 2] * (side - h + 1)).floor().long()
        x = (u[:, 3] * (side - w + 1)).floor().long()
        ramp = torch.arange(side, device=device)
        rows = (ramp >= y[:, None]) & (ramp < (y + h)[:, None])
        cols = (ramp >= x[:, None]) & (ramp < (x + w)[:, None])
        chosen = u[:, 4] < self.erase
        erase = rows[:, :, None] & cols[:, None, :] & chosen[:, None, None]
        noise = torch.randint(
            0, 256, (batch_size, 1, side, side), generator=gen, device=device, dtype=torch.uint8
        )
        return erase, noise

    def apply(self, images: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
        """``images``: uint8 [B, 1, 28, 28] -> augmented uint8 of the same shape."""
        if self.translate > 0:
            t = self.translate
            padded = F.pad(images, (t, t, t, t))
            side = images.shape[-1]
            ramp = torch.arange(side, device=images.device)
            rows = (draw.shift[:, 0:1] + t) + ramp  # [B, side]
            cols = (draw.shift[:, 1:2] + t) + ramp
            batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
            images = padded[batch, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
        if self.flip:
            images = torch.where(draw.flip[:, None, None, None], images.flip(-1), images)
        if draw.erase is not None and draw.noise is not None:
            images = torch.where(draw.erase[:, None], draw.noise, images)
        return images

    @staticmethod
    def warp(x: torch.Tensor, draw: AugmentDraw, fill: float) -> torch.Tensor:
        """Zoom and rotate the resized float batch ``x`` [B, 1, S, S] about its centre; the
        border it uncovers is ``fill`` (black). Bilinear, as the resize before it."""
        if draw.warp is None:
            raise ValueError("the draw has no warp: the augmentation drew none")
        grid = F.affine_grid(draw.warp.to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x - fill, grid, mode="bilinear", align_corners=False)
        return out.add_(fill)


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Training drops the last incomplete batch so every step has the same global batch,
    unless ``drop_last`` is False (a DataLoader's default; one process only)."""
    return n // batch_size if drop_last else -(-n // batch_size)


def train_batches(
    data: DeviceData,
    batch_size: int,
    preprocess: Preprocess,
    augment: Augment,
    seed: int,
    epoch: int,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
    drop_last: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this rank's (inputs, labels) for each step of ``epoch`` from ``start_step`` on.

    ``batch_size`` is the global batch; each rank takes its contiguous slice of it. With
    ``drop_last`` False the last step takes the images left over (one process only).
    """
    device = data.labels.device
    order = torch.randperm(len(data), generator=generator(device, seed, epoch), device=device)
    local = batch_size // world_size
    lo, hi = rank * local, (rank + 1) * local
    for step in range(start_step, steps_per_epoch(len(data), batch_size, drop_last)):
        batch = order[step * batch_size : (step + 1) * batch_size]
        index = batch[lo:hi]
        images = data.images[index]
        if not augment.enabled:
            yield preprocess(images, channels_last), data.labels[index]
            continue
        draw = augment.draw(len(batch), generator(device, seed, epoch, step)).shard(lo, hi)
        x = preprocess(augment.apply(images, draw), channels_last and draw.warp is None)
        if draw.warp is not None:
            x = augment.warp(x, draw, preprocess.background)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        yield x, data.labels[index]


def eval_batches(
    data: DeviceData,
    batch_size: int,
    preprocess: Preprocess,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every image once, in order; rank r takes every world_size-th batch."""
    for start in range(rank * batch_size, len(data), batch_size * world_size):
        stop = start + batch_size
        yield preprocess(data.images[start:stop], channels_last), data.labels[start:stop]
