"""Where the Fashion-MNIST files are, their checksums, and downloading them."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist_alexnet.atomic import atomic_write_bytes
from fmnist_alexnet.data.idx import read_split, sha256
from fmnist_alexnet.errors import FmnistError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_ROOT = Path("data")  # the seed notebook's torchvision root: ./data/FashionMNIST/raw
OFFICIAL_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
ENV_VAR = "FMNIST_DATA"

# SHA-256 of the decompressed IDX bytes: the same whichever gzip wrapped them.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FILE_NAMES = tuple(SHA256)
FIX_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` or fetch it with "
    "`fmnist-alexnet data download --to DIR` and pass --data-dir DIR"
)


@dataclass(frozen=True)
class DataSource:
    directory: Path
    origin: str  # which rule found it: --data-dir, $FMNIST_DATA, Debian package, torchvision root
    files: dict[str, Path]


def _files_in(directory: Path) -> dict[str, Path] | None:
    """The four files in ``directory`` or its torchvision layout, ``.gz`` or raw; else None."""
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        found = {}
        for name in FILE_NAMES:
            for candidate in (folder / f"{name}.gz", folder / name):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(FILE_NAMES):
            return found
    return None


def find_data(data_dir: str | Path | None = None) -> DataSource:
    """Find the files: ``--data-dir``, ``$FMNIST_DATA``, Debian's package, a torchvision root.

    A location the user named explicitly must hold the data: it is never silently skipped.
    """
    explicit = [("--data-dir", data_dir), (f"${ENV_VAR}", os.environ.get(ENV_VAR) or None)]
    for origin, value in explicit:
        if value is None:
            continue
        directory = Path(value).expanduser()
        files = _files_in(directory)
        if files is None:
            raise FmnistError(
                f"{origin} {directory}: no Fashion-MNIST files there "
                f"(need {', '.join(FILE_NAMES)}, raw or .gz); {FIX_HINT}"
            )
        return DataSource(directory, origin, files)
    defaults = [
        ("Debian package dataset-fashion-mnist", DEBIAN_DIR),
        ("torchvision root", TORCHVISION_ROOT),
    ]
    for origin, directory in defaults:
        files = _files_in(directory)
        if files is not None:
            return DataSource(directory, origin, files)
    looked = ", ".join(str(d) for _, d in defaults)
    raise FmnistError(f"no Fashion-MNIST data found (looked in {looked}); {FIX_HINT}")


SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_split(source: DataSource, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's ``(images, labels)`` as uint8 arrays; only its two files are read."""
    images, labels = SPLIT_FILES[name]
    return read_split(source.files[images], source.files[labels])


def load_splits(source: DataSource) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": (images, labels)}`` as uint8 arrays."""
    return {name: load_split(source, name) for name in SPLIT_FILES}


def verify(source: DataSource) -> dict[str, bool]:
    """Whether each file's decompressed bytes have the published SHA-256."""
    return {name: sha256(path) == SHA256[name] for name, path in source.files.items()}


_PUBLISHED: dict[tuple[object, ...], bool] = {}  # file states already hashed in this process


def is_published(source: DataSource) -> bool:
    """Whether all four files hold the published Fashion-MNIST bytes (by SHA-256; about a
    third of a second). Remembered per path, size and mtime, so a process that trains or
    evaluates many times, as tune and the tests do, hashes each file state once."""
    key = tuple(
        (str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in source.files.values()
    )
    if key not in _PUBLISHED:
        _PUBLISHED[key] = all(verify(source).values())
    return _PUBLISHED[key]


def download(
    to_dir: str | Path, mirror: str = OFFICIAL_MIRROR, timeout: float = 60.0
) -> list[tuple[str, str]]:
    """Fetch the four ``.gz`` files into ``to_dir`` and verify them; returns what was done.

    A file already there with the right checksum is kept. Nothing unverified is left behind.
    """
    to_dir = Path(to_dir)
    try:
        to_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FmnistError(f"{to_dir}: cannot create folder ({exc.strerror or exc})") from None
    done = []
    for name in FILE_NAMES:
        target = to_dir / f"{name}.gz"
        if target.is_file() and _sha256_of_gz(target) == SHA256[name]:
            done.append((name, "already present"))
            continue
        url = mirror.rstrip("/") + f"/{name}.gz"
        payload = _fetch(url, timeout)
        try:
            content = gzip.decompress(payload)
        except (OSError, EOFError) as exc:
            raise FmnistError(f"{url}: not valid gzip data ({exc})") from None
        digest = hashlib.sha256(content).hexdigest()
        if digest != SHA256[name]:
            raise FmnistError(f"{url}: SHA-256 {digest[:16]}... does not match the dataset's")
        atomic_write_bytes(target, payload)
        done.append((name, "downloaded"))
    return done


def _sha256_of_gz(path: Path) -> str | None:
    try:
        return sha256(path)
    except FmnistError:
        return None


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload: bytes = response.read()
            return payload
    except urllib.error.HTTPError as exc:
        raise FmnistError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FmnistError(f"cannot download {url}: {reason}") from None
