"""IDX parsing and validation, nothing else. Every error names the file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from fmnist_alexnet.errors import FmnistError

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
NUM_CLASSES = 10


def read_bytes(path: Path) -> bytes:
    """The file's decompressed bytes (``.gz`` by name or by its magic number)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise FmnistError(f"{path}: file not found") from None
    except OSError as exc:
        raise FmnistError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] != b"\x1f\x8b":
        if str(path).endswith(".gz"):
            raise FmnistError(f"{path}: not a gzip file")
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise FmnistError(f"{path}: truncated gzip data") from None
    except (OSError, zlib.error) as exc:
        raise FmnistError(f"{path}: corrupt gzip data ({exc})") from None


def parse_idx(data: bytes, path: Path | str, magic: int) -> np.ndarray:
    """Parse one IDX file's bytes, checking magic, dimensions and exact length."""
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found is not None and found != magic:
        raise FmnistError(f"{path}: bad IDX magic 0x{found:08x}, expected 0x{magic:08x}")
    if len(data) < header_len:
        raise FmnistError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and dims[1:] != (28, 28):
        raise FmnistError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise FmnistError(
            f"{path}: length {len(data)} bytes, expected {expected} for dimensions {dims} "
            f"({'truncated' if len(data) < expected else 'trailing data'})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_images(path: Path) -> np.ndarray:
    """uint8 images [N, 28, 28]."""
    return parse_idx(read_bytes(path), path, IMAGES_MAGIC)


def read_labels(path: Path) -> np.ndarray:
    """uint8 labels [N], each 0..9."""
    labels = parse_idx(read_bytes(path), path, LABELS_MAGIC)
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise FmnistError(
            f"{path}: label {int(labels[bad])} at index {bad} is outside 0..{NUM_CLASSES - 1}"
        )
    return labels


def read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_images(images_path)
    labels = read_labels(labels_path)
    if len(images) != len(labels):
        raise FmnistError(
            f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels
