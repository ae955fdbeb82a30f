"""Pillow's bilinear resize of uint8 images, bit for bit, as batched tensor ops on any device.

torchvision's ``Resize`` on a PIL image (what d2l and the seed notebook feed their networks)
runs Pillow's ``ImagingResample``: fixed-point weights with 22 fraction bits, a horizontal
pass rounded to uint8, then a vertical pass rounded to uint8. This module computes Pillow's
weights the way ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` in Pillow's
``Resample.c`` do and applies them as two float64 matrix products, which are exact here
(every sum is an integer below 2**53), so the result equals ``Image.resize(...,
Image.BILINEAR)`` for every pixel, on the CPU or a GPU, a whole batch at a time.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point fraction bits for 8-bit images
BILINEAR_SUPPORT = 1.0


def _triangle(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


@lru_cache(maxsize=16)
def pil_weights(in_size: int, out_size: int) -> tuple[tuple[int, ...], ...]:
    """Pillow's integer bilinear weights: row ``i`` weighs the inputs of output pixel ``i``."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = BILINEAR_SUPPORT * filterscale
    rows = []
    for out in range(out_size):
        center = (out + 0.5) * scale
        low = max(int(center - support + 0.5), 0)  # C's (int) truncates, as int() does
        high = min(int(center + support + 0.5), in_size)
        weights = [_triangle((x - center + 0.5) / filterscale) for x in range(low, high)]
        total = 0.0
        for w in weights:  # summed in order, as Pillow does
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        row = [0] * in_size
        for x, w in zip(range(low, high), weights, strict=True):
            row[x] = math.trunc(w * (1 << PRECISION_BITS) + (0.5 if w >= 0 else -0.5))
        rows.append(tuple(row))
    return tuple(rows)


@lru_cache(maxsize=16)
def _matrix(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """The weights as a float64 [out, in] matrix on ``device``, built once per size."""
    return torch.tensor(pil_weights(in_size, out_size), dtype=torch.float64, device=device)


def _round_to_uint8(sums: torch.Tensor) -> torch.Tensor:
    """Pillow's ``clip8``: add half, shift right by the fraction bits, clamp to 0..255."""
    return torch.floor((sums + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp_(0, 255)


def pil_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images``: uint8 [B, C, H, W] -> uint8 [B, C, size, size], equal to Pillow's bilinear
    ``Image.resize`` of each image (horizontal pass first, as Pillow runs it)."""
    height, width = images.shape[-2:]
    x = images.to(torch.float64)
    if width != size:
        x = _round_to_uint8(x @ _matrix(width, size, images.device).T)
    if height != size:
        x = _round_to_uint8(_matrix(height, size, images.device) @ x)
    return x.to(torch.uint8)
