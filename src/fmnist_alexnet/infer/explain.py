"""Why the model answered as it did: an occlusion map of the 28x28 input (captum's
``Occlusion``; Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks",
2014), and the PNG that shows it over the picture.

A 4x4 black patch (the background's value) slides over the image in steps of 2 pixels; a
pixel's attribution is the mean drop in the top class's calibrated probability over the
patches that covered it. Occlusion rather than Grad-CAM on the last convolution because:

- at the sizes this package trains at, AlexNet's last convolution is 3x3 (63-65 px; 1x1
  after its pooling) to 7x7 (128 px), too coarse to point at a sleeve or a heel; occlusion
  works at the input's own 28x28;
- it needs only forward passes, so it explains a checkpoint, a float32 export and an int8
  export alike (``Classifier.logits``), with no gradients through a quantized model.

It costs 169 forward passes per image (in batches); docs/explain.md gives the time.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch

from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.predict import Classifier

WINDOW = 4  # pixels of the occluding patch
STRIDE = 2
PATCHES_PER_CALL = 64  # occluded copies of each image in one forward call
IMAGES_PER_CALL = 4  # so a forward call holds 256 images, as an evaluation batch might
VIEW_SCALE = 8  # the PNG shows the 28x28 input at 224x224


def occlusion_maps(
    model: Classifier, images: torch.Tensor, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 [B, 1, 28, 28] -> float [B, 28, 28]: how much each pixel's patch raised the
    calibrated probability of ``targets`` (default: each image's top class)."""
    try:
        from captum.attr import Occlusion
    except ImportError:
        raise FmnistError(
            "captum is not installed: pip install 'fmnist-alexnet[explain]'"
        ) from None
    temperature = model.spec.temperature

    def probabilities(inputs: torch.Tensor) -> torch.Tensor:
        # the patches hold 0 (the black background): inputs stay whole numbers in 0..255
        logits = model.logits(inputs.round().clamp(0, 255).to(torch.uint8))
        return (logits.float() / temperature).softmax(1)

    inputs = images.float()
    if targets is None:
        targets = probabilities(inputs).argmax(1)
    occlusion = Occlusion(probabilities)
    maps = []
    for start in range(0, len(inputs), IMAGES_PER_CALL):
        chunk = slice(start, start + IMAGES_PER_CALL)
        attributions: torch.Tensor = occlusion.attribute(
            inputs[chunk],
            sliding_window_shapes=(1, WINDOW, WINDOW),
            strides=(1, STRIDE, STRIDE),
            baselines=0,
            target=targets[chunk],
            perturbations_per_eval=PATCHES_PER_CALL,
        )
        maps.append(attributions[:, 0].detach().cpu())
    return torch.cat(maps) if maps else torch.zeros(0, *images.shape[2:])


def heatmap_pngs(model: Classifier, images: torch.Tensor, targets: list[int]) -> list[bytes]:
    """Per uint8 [B, 1, 28, 28] image, the PNG of what drove class ``targets[i]``."""
    maps = occlusion_maps(model, images, torch.tensor(targets)).numpy()
    return [
        heatmap_png(image, attribution)
        for image, attribution in zip(images[:, 0].numpy(), maps, strict=True)
    ]


def heatmap_png(image: np.ndarray, attribution: np.ndarray) -> bytes:
    """The 28x28 input in gray, enlarged, with the pixels that raised the top class's
    probability in red to yellow (the strongest yellow); those that lowered it are left gray."""
    from PIL import Image

    gray = np.repeat(np.repeat(image.astype(np.float64) / 255.0, VIEW_SCALE, 0), VIEW_SCALE, 1)
    heat = np.clip(attribution, 0, None)
    heat = heat / heat.max() if heat.max() > 0 else heat
    heat = np.repeat(np.repeat(heat, VIEW_SCALE, 0), VIEW_SCALE, 1)
    base = np.stack([gray * 0.6] * 3, -1)
    colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], -1)  # red -> yellow
    alpha = (0.85 * heat)[..., None]
    rgb = base * (1 - alpha) + colour * alpha
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(np.rint(rgb * 255), dtype=np.uint8), mode="RGB").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
