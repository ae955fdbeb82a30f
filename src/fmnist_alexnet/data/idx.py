"""IDX parsing and validation, nothing else. Every error names the file."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from fmnist_alexnet.errors import FmnistError

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
NUM_CLASSES = 10


MAX_IDX_BYTES = 1 << 28  # 256 MiB: 342,000 28x28 images; the largest real file holds 47 MB


def sha256(path: Path, limit: int = MAX_IDX_BYTES) -> str:
    """SHA-256 of the file's decompressed bytes (``.gz`` by name or by its magic number),
    streamed in 1 MiB pieces; refused past ``limit`` bytes (a gzip bomb stops there)."""
    digest, seen = hashlib.sha256(), 0
    with _open(path) as stream:
        while chunk := _read(stream, path, 1 << 20):
            seen += len(chunk)
            if seen > limit:
                raise FmnistError(f"{path}: more than {limit:,} bytes of data: not an IDX file")
            digest.update(chunk)
    return digest.hexdigest()


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file, checked as it streams: magic, dimensions, then exactly the bytes the
    dimensions imply. A header claiming more than :data:`MAX_IDX_BYTES` is refused before
    any of its data is read."""
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    with _open(path) as stream:
        header = _read(stream, path, header_len)
        found = int.from_bytes(header[:4], "big") if len(header) >= 4 else None
        if found is not None and found != magic:
            raise FmnistError(f"{path}: bad IDX magic 0x{found:08x}, expected 0x{magic:08x}")
        if len(header) < header_len:
            raise FmnistError(f"{path}: too short for an IDX header ({len(header)} bytes)")
        dims = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        if ndim == 3 and dims[1:] != (28, 28):
            raise FmnistError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
        size = int(np.prod(dims, dtype=np.int64))
        if size > MAX_IDX_BYTES:
            raise FmnistError(
                f"{path}: its header claims {dims[0]:,} items ({size:,} bytes), more than "
                f"the {MAX_IDX_BYTES:,} this reader accepts: not a Fashion-MNIST file"
            )
        body = _read(stream, path, size + 1)
    if len(body) != size:
        raise FmnistError(
            f"{path}: length {header_len + len(body)}{'+' if len(body) > size else ''} bytes, "
            f"expected {header_len + size} for dimensions {dims} "
            f"({'truncated' if len(body) < size else 'trailing data'})"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_images(path: Path) -> np.ndarray:
    """uint8 images [N, 28, 28]."""
    return read_idx(path, IMAGES_MAGIC)


def read_labels(path: Path) -> np.ndarray:
    """uint8 labels [N], each 0..9."""
    labels = read_idx(path, LABELS_MAGIC)
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


@contextlib.contextmanager
def _open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary stream of the file's data, decompressing gzip (by magic number)."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise FmnistError(f"{path}: file not found") from None
    except OSError as exc:
        raise FmnistError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        magic = _read(raw, path, 2)
        raw.seek(0)
        if magic != b"\x1f\x8b":
            if str(path).endswith(".gz"):
                raise FmnistError(f"{path}: not a gzip file")
            yield raw
        else:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield cast(BinaryIO, unzipped)
    finally:
        raw.close()


def _read(stream: BinaryIO, path: str | Path, n: int) -> bytes:
    """Up to ``n`` bytes, with gzip and disk errors as one line naming the file."""
    try:
        return stream.read(n)
    except EOFError:
        raise FmnistError(f"{path}: truncated gzip data") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise FmnistError(f"{path}: corrupt gzip data ({exc})") from None
    except OSError as exc:
        raise FmnistError(f"{path}: cannot read ({exc.strerror or exc})") from None
