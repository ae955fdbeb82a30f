"""Real pictures that are not clothing, with no download: what the out-of-distribution score
is measured on (``report``'s table, ``benchmarks/ood_check.py``, the tests).

- ``digits``: scikit-learn's bundled handwritten digits (1,797 images of 8x8);
- ``photos``: square crops of scikit-image's bundled sample photographs;
- ``noise``: uniform noise.

Every picture goes through :func:`~fmnist_alexnet.infer.predict.prepare_image` as a PNG file,
the path a user's upload takes (inverted if its border is light, trimmed, its longest edge
scaled to 28), so a set is scored as the page would score it. The ``ood-sets`` extra brings
scikit-learn and scikit-image.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.ood import OodCheck, check_scores, ood_scores
from fmnist_alexnet.infer.predict import Classifier, batched_logits, prepare_image

OOD_SETS = ("digits", "photos", "noise")
SET_NAMES = {
    "digits": "handwritten digits (scikit-learn)",
    "photos": "photo crops (scikit-image)",
    "noise": "uniform noise",
}
# scikit-image's bundled photographs (its synthetic images, and those it would download, left out)
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
CROPS_PER_PHOTO = 64
NOISE_IMAGES = 1000


@dataclass(frozen=True)
class OodTable:
    """A model's out-of-distribution score on each set against the test set, and the share
    of the test set its threshold flags."""

    method: str
    threshold: float
    test_images: int
    test_flagged: float
    sets: list[OodCheck]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "threshold": self.threshold,
            "test_images": self.test_images,
            "test_flagged": self.test_flagged,
            "sets": [row.to_dict() for row in self.sets],
        }


def available() -> bool:
    """Whether scikit-learn and scikit-image (the ``ood-sets`` extra) are installed."""
    return all(importlib.util.find_spec(name) for name in ("sklearn", "skimage"))


def ood_table(model: Classifier, test_logits: torch.Tensor, batch_size: int = 500) -> OodTable:
    """Score every set with ``model`` at its stored method, temperature and threshold."""
    spec = model.spec
    if spec.ood_threshold is None:
        raise FmnistError("the model has no out-of-distribution threshold: run calibrate first")
    test_scores = ood_scores(test_logits, spec.ood_method, spec.temperature)
    rows = []
    for name in OOD_SETS:
        logits = batched_logits(model, ood_set(name), batch_size)
        scores = ood_scores(logits, spec.ood_method, spec.temperature)
        rows.append(check_scores(name, scores, test_scores, spec.ood_threshold))
    return OodTable(
        method=spec.ood_method,
        threshold=spec.ood_threshold,
        test_images=len(test_scores),
        test_flagged=float((test_scores > spec.ood_threshold).double().mean()),
        sets=rows,
    )


@functools.lru_cache(maxsize=len(OOD_SETS))
def ood_set(name: str, seed: int = 0) -> torch.Tensor:
    """The set ``name`` as uint8 [N, 1, 28, 28], prepared as uploads are (kept once made:
    do not change it in place)."""
    makers: dict[str, Callable[[np.random.Generator], list[np.ndarray]]] = {
        "digits": _digits,
        "photos": _photo_crops,
        "noise": _noise,
    }
    if name not in makers:
        raise FmnistError(f"unknown set {name!r} (one of {', '.join(OOD_SETS)})")
    pictures = makers[name](np.random.default_rng(seed))
    prepared = [prepare_image(_png(picture), name=name) for picture in pictures]
    return torch.from_numpy(np.stack(prepared))[:, None]


def _digits(rng: np.random.Generator) -> list[np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise _missing("scikit-learn") from None
    images = load_digits().images  # 0..16, light strokes on black, as Fashion-MNIST
    return [np.asarray(image / 16.0 * 255, dtype=np.uint8) for image in images]


def _photo_crops(rng: np.random.Generator) -> list[np.ndarray]:
    try:
        import skimage.data
        from skimage.color import rgb2gray
    except ImportError:
        raise _missing("scikit-image") from None
    crops = []
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        gray = rgb2gray(photo[..., :3]) if photo.ndim == 3 else photo / 255.0
        height, width = gray.shape
        for _ in range(CROPS_PER_PHOTO):
            side = int(rng.integers(32, min(height, width) // 2 + 1))
            top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            crop = gray[top : top + side, left : left + side]
            crops.append(np.asarray(np.clip(crop * 255, 0, 255), dtype=np.uint8))
    return crops


def _noise(rng: np.random.Generator) -> list[np.ndarray]:
    return list(rng.integers(0, 256, size=(NOISE_IMAGES, 28, 28), dtype=np.uint8))


def _png(gray: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # stored, not deflated: lossless all the same, and most of the time making a set took
    Image.fromarray(gray, mode="L").save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def _missing(package: str) -> FmnistError:
    return FmnistError(f"{package} is not installed: pip install 'fmnist-alexnet[ood-sets]'")
