"""People's own image files -> Fashion-MNIST-style 28x28 arrays -> a model's top-k classes.

Fashion-MNIST was made from product photos by trimming the background, scaling the longest
edge to 28, centring on 28x28, negating (light objects on black) and converting to 8-bit
grayscale. ``prepare_image`` does the same to a user's file, so a photo of a garment on a
white background lands where the model expects it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fmnist_alexnet.data.batches import IMAGE_SIDE
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.ood import ood_scores
from fmnist_alexnet.spec import ModelSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
MAX_PIXELS = 40_000_000  # larger images are refused before they are decoded
MAX_SIDE = 20_000
WORK_SIDE = 2048  # larger images are box-averaged to this before any float copy


class ImageError(FmnistError):
    """One file could not be turned into an input; the others still are."""


@dataclass(frozen=True)
class ClassScore:
    """One of an image's top classes: its index, its name and the softmax probability."""

    label: int
    class_name: str
    prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "class": self.class_name, "prob": self.prob}


@dataclass(frozen=True)
class Answer:
    """What the model says of one image: its top classes, best first, and whether the image
    looks like a Fashion-MNIST item at all (``ood``: True when its out-of-distribution score
    is above the model's threshold; None when the model has none fitted)."""

    top: list[ClassScore]
    ood_score: float
    ood: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "top": [score.to_dict() for score in self.top],
            "ood": self.ood,
            "ood_score": self.ood_score,
        }


@dataclass(frozen=True)
class Prediction:
    """One file's :class:`Answer`, or why it could not be read (``error``)."""

    path: str
    answer: Answer | None = None
    error: str | None = None
    explanation: str | None = None  # the heatmap PNG written for it (``--explain DIR``)

    @property
    def top(self) -> list[ClassScore]:
        return self.answer.top if self.answer else []

    def to_dict(self) -> dict[str, Any]:
        """``predict --json``'s object: ``path`` with ``top``, ``ood`` and ``ood_score``, or
        with ``error``."""
        if self.answer is None:
            return {"path": self.path, "error": self.error or "not run"}
        explained = {} if self.explanation is None else {"explanation": self.explanation}
        return {"path": self.path, **self.answer.to_dict(), **explained}


class Classifier(Protocol):
    """A checkpoint's :class:`~fmnist_alexnet.checkpoint.LoadedModel` or an exported model."""

    spec: ModelSpec

    @property
    def precision(self) -> str:
        """What the forward pass runs in: ``fp32``, ``bf16`` (autocast) or ``int8``."""

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 1, 28, 28] -> float32 logits [B, classes]."""


@torch.no_grad()
def batched_logits(model: Classifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``model.logits`` of uint8 [N, 1, 28, 28] in batches, on the CPU, in order."""
    return torch.cat(
        [model.logits(images[i : i + batch_size]).cpu() for i in range(0, len(images), batch_size)]
    )


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (a pipe too: ``<(curl ...)``); folders searched recursively for files
    with an image suffix, sorted, less what is there but not a regular file (a FIFO would
    block the read forever); a broken link is kept, to be reported."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            images = (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            found.extend(sorted(p for p in images if p.is_file() or not p.exists()))
        else:
            found.append(path)
    return found


def prepare_image(
    source: str | Path | bytes, invert: str = "auto", name: str | None = None
) -> np.ndarray:
    """One image -> uint8 [28, 28], light object on black, as in Fashion-MNIST.

    ``source`` is a path, or the bytes of an image file (then ``name`` labels its errors).
    """
    gray = _read_grayscale(source, name)  # float in [0, 1]
    if invert == "yes" or (invert == "auto" and _border_is_light(gray)):
        gray = 1.0 - gray
    if gray.shape != (IMAGE_SIDE, IMAGE_SIDE):  # a 28x28 image keeps its framing
        gray = _fit_to_square(_trim(gray), IMAGE_SIDE)
    return np.asarray(np.clip(np.rint(gray * 255), 0, 255), dtype=np.uint8)


def top_classes(
    logits: torch.Tensor, class_names: Sequence[str], top_k: int, temperature: float = 1.0
) -> list[list[ClassScore]]:
    """Per row of logits, the ``top_k`` classes, best first, with the probabilities of
    ``softmax(logits / temperature)`` (the model's calibration; 1: the raw softmax)."""
    top = torch.softmax(logits.float() / temperature, dim=1).topk(top_k, dim=1)
    return [
        [
            ClassScore(int(label), class_names[int(label)], float(value))
            for value, label in zip(values, labels, strict=True)
        ]
        for values, labels in zip(top.values, top.indices, strict=True)
    ]


def answers(
    logits: torch.Tensor, spec: ModelSpec, top_k: int, calibrated: bool = True
) -> list[Answer]:
    """Per row of ``logits``: its top classes (calibrated by the spec's temperature unless
    ``calibrated=False``) and its out-of-distribution verdict. The score always uses the
    fitted temperature: the threshold was fitted with it."""
    temperature = spec.temperature if calibrated else 1.0
    tops = top_classes(logits, spec.class_names, top_k, temperature)
    scores = ood_scores(logits, spec.ood_method, spec.temperature).tolist()
    threshold = spec.ood_threshold
    return [
        Answer(top, score, None if threshold is None else score > threshold)
        for top, score in zip(tops, scores, strict=True)
    ]


def predict_images(
    model: Classifier,
    paths: Iterable[str | Path],
    *,
    top_k: int = 3,
    invert: str = "auto",
    batch_size: int = 64,
    calibrated: bool = True,
    explain: str | Path | None = None,
) -> list[Prediction]:
    """A :class:`Prediction` per file (its top classes, or its error), in the order of
    ``paths``; files are prepared, then run through ``model`` in batches. Probabilities are
    calibrated by the model's temperature unless ``calibrated=False`` (the raw softmax).
    ``explain``: a folder that gets, per image, a PNG of what drove its top class
    (:mod:`~fmnist_alexnet.infer.explain`)."""
    names = model.spec.class_names
    if not 1 <= top_k <= len(names):
        raise FmnistError(f"--top-k must be in 1..{len(names)}, got {top_k}")
    if batch_size < 1:
        raise FmnistError(f"--batch-size must be > 0, got {batch_size}")
    results: list[Prediction] = []
    ready: list[tuple[int, np.ndarray]] = []
    for path in find_images(paths):
        try:
            ready.append((len(results), prepare_image(path, invert)))
            results.append(Prediction(str(path)))
        except ImageError as exc:
            results.append(Prediction(str(path), error=str(exc)))
    files = _explanation_files(results, explain)
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        images = torch.from_numpy(np.stack([image for _, image in chunk]))[:, None]
        said = answers(model.logits(images), model.spec, top_k, calibrated)
        written = _explain(model, images, said, [files.get(i) for i, _ in chunk])
        for (index, _), answer, png in zip(chunk, said, written, strict=True):
            results[index] = Prediction(results[index].path, answer, explanation=png)
    return results


def _explanation_files(results: list[Prediction], folder: str | Path | None) -> dict[int, Path]:
    """Where each readable image's heatmap goes: ``<folder>/<file stem>.png``, with ``-2``,
    ``-3``... when files share a stem; the folder is created."""
    if folder is None:
        return {}
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FmnistError(
            f"--explain {folder}: cannot create the folder ({exc.strerror})"
        ) from None
    files: dict[int, Path] = {}
    taken: set[str] = set()
    for index, result in enumerate(results):
        if result.error is None:
            stem = name = Path(result.path).stem
            n = 1
            while name in taken:
                n += 1
                name = f"{stem}-{n}"
            taken.add(name)
            files[index] = folder / f"{name}.png"
    return files


def _explain(
    model: Classifier, images: torch.Tensor, said: list[Answer], files: list[Path | None]
) -> list[str | None]:
    """Write each image's heatmap of its top class to its file; the paths written (Nones
    when not asked)."""
    if not any(files):
        return [None] * len(files)
    from fmnist_alexnet.atomic import atomic_write_bytes
    from fmnist_alexnet.infer.explain import heatmap_pngs

    pngs = heatmap_pngs(model, images, [answer.top[0].label for answer in said])
    written: list[str | None] = []
    for png, file in zip(pngs, files, strict=True):
        assert file is not None
        written.append(str(atomic_write_bytes(file, png)))
    return written


def _read_grayscale(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    path: str | Path
    opened: Path | io.BytesIO
    if isinstance(source, bytes):
        path, opened = name or "upload", io.BytesIO(source)
    else:
        path = opened = Path(source)
        if not opened.exists():
            raise ImageError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # Pillow warns (two raw lines on stderr) about metadata it cannot read, such as
            # a corrupt EXIF block, and still decodes the pixels; the image is then used as
            # stored, unrotated, as browsers show it. Pixel errors still raise below.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            with Image.open(opened) as image:
                if image.width * image.height > MAX_PIXELS or max(image.size) > MAX_SIDE:
                    raise ImageError(
                        f"{path}: {image.width}x{image.height} is too large to be a photo "
                        f"(limit {MAX_PIXELS:,} pixels)"
                    )
                image.seek(0)  # first frame of a GIF or multi-page TIFF
                image.load()
                image = ImageOps.exif_transpose(image) or image
                return _to_gray_array(_shrink(image))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{path}: too large: refused as a possible decompression bomb "
            f"(limit {MAX_PIXELS:,} pixels)"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file this tool can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{path}: cannot read the image ({exc})") from None


def _shrink(image: PILImage) -> PILImage:
    """Box-average an image whose longest side is over :data:`WORK_SIDE` down to at most
    that, before any float copy is made: the result is 28x28 anyway, and a 36 Mpx photo
    then costs tens of MB instead of most of a GB."""
    factor = -(-max(image.size) // WORK_SIDE)
    if factor <= 1:
        return image
    if image.mode in ("P", "PA", "1"):
        image = image.convert("RGBA" if image.mode != "1" else "L")
    try:
        return image.reduce(factor)
    except ValueError:  # a mode reduce() does not take (e.g. I;16): float first
        return image.convert("F").reduce(factor)


def _to_gray_array(image: PILImage) -> np.ndarray:
    """Any PIL mode -> float grayscale in [0, 1], alpha flattened onto white."""
    from PIL import Image

    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("L")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float64) / 65535.0
    if image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        return np.clip(values / top, 0.0, 1.0)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        return np.clip(values / top, 0.0, 1.0)
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def _border_is_light(gray: np.ndarray) -> bool:
    return float(np.median(_border(gray))) > 0.5


def _trim(gray: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Cut away the background border (the object is light on a dark background here)."""
    background = float(np.median(_border(gray)))
    mask = np.abs(gray - background) > threshold
    if not mask.any():
        return gray
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _fit_to_square(gray: np.ndarray, side: int) -> np.ndarray:
    """Scale the longest edge to ``side`` (antialiased) and centre on a black square."""
    from PIL import Image

    height, width = gray.shape
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(gray.astype(np.float32), mode="F")
    image = image.resize(size, Image.Resampling.LANCZOS)
    small = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    out = np.zeros((side, side))
    top, left = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out
