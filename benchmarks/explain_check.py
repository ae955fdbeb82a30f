"""Do the heatmaps of ``predict --explain`` point at what the model uses? Two checks that can
fail, on test images, and the time an explanation costs.

1. Deletion (Petsiuk et al., "RISE", 2018): set pixels to black (the background) in the order
   the heatmap ranks them, most attributed first, and follow the calibrated probability of
   the image's top class; then the same in a random order. A heatmap that finds the evidence
   lowers the probability faster: its curve's area is smaller.
2. Randomised weights (Adebayo et al., "Sanity Checks for Saliency Maps", 2018): the heatmaps
   of the same network with freshly initialised weights, for the same classes, should not
   look like the trained one's: Spearman rank correlation per image, well below 1.

Usage: python -m benchmarks.explain_check RUN|CHECKPOINT [--images 500] [--steps 28]
           [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from fmnist_alexnet.checkpoint import LoadedModel, load_model
from fmnist_alexnet.data.sources import find_data, load_split
from fmnist_alexnet.infer.explain import occlusion_maps
from fmnist_alexnet.infer.predict import Classifier
from fmnist_alexnet.model import initialize


def deletion_curve(
    model: Classifier,
    images: torch.Tensor,
    order: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Mean probability of ``targets`` after blacking out the first k/steps of each image's
    pixels in ``order`` ([B, 784] pixel indices), for k = 0..steps: [steps + 1]."""
    flat = images.flatten(1)
    pixels = flat.shape[1]
    curve = []
    for k in range(steps + 1):
        deleted = flat.clone()
        count = round(pixels * k / steps)
        deleted.scatter_(1, order[:, :count], 0)
        logits = model.logits(deleted.view_as(images))
        probs = (logits.float() / model.spec.temperature).softmax(1)
        curve.append(probs.gather(1, targets[:, None]).mean())
    return torch.stack(curve)


def area(curve: torch.Tensor) -> float:
    """Trapezoidal area under a curve sampled evenly over [0, 1]."""
    return float(torch.trapezoid(curve, dx=1 / (len(curve) - 1)))


def rank_correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps ([B, 28, 28] each): [B]."""
    from torchmetrics.functional import spearman_corrcoef

    return spearman_corrcoef(a.flatten(1).T.double(), b.flatten(1).T.double())


def randomised(model: LoadedModel, seed: int = 0) -> LoadedModel:
    """The same network and contract with freshly initialised weights."""
    torch.manual_seed(seed)
    fresh = initialize(model.spec.build_model(), model.config.init)
    fresh = fresh.to(model.device).eval()
    return dataclasses.replace(model, model=fresh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=28, help="deletion steps (28: 28 px each)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = load_model(args.model)
    test_images, _ = load_split(find_data(model.config.data_dir), "test")
    picks = torch.randperm(len(test_images), generator=torch.Generator().manual_seed(0))
    images = torch.from_numpy(test_images.copy())[picks[: args.images]][:, None]

    started = time.perf_counter()
    targets = torch.cat(
        [model.logits(images[i : i + 100]).argmax(1) for i in range(0, len(images), 100)]
    )
    answer_s = time.perf_counter() - started
    started = time.perf_counter()
    maps = occlusion_maps(model, images, targets)
    explain_s = time.perf_counter() - started

    by_attribution = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    generator = torch.Generator().manual_seed(0)
    random_order = torch.stack([torch.randperm(784, generator=generator) for _ in images])
    curves = {
        "attribution": deletion_curve(model, images, by_attribution, targets, args.steps),
        "random": deletion_curve(model, images, random_order, targets, args.steps),
    }
    areas = {name: area(curve) for name, curve in curves.items()}
    random_maps = occlusion_maps(randomised(model), images, targets)
    correlations = rank_correlations(maps, random_maps)
    correlations = correlations[correlations.isfinite()]

    result = {
        "model": args.model,
        "precision": model.precision,
        "images": len(images),
        "seconds_per_image": {"answer": answer_s / len(images), "explain": explain_s / len(images)},
        "deletion": {
            "fractions": [k / args.steps for k in range(args.steps + 1)],
            "curves": {name: curve.tolist() for name, curve in curves.items()},
            "areas": areas,
            "ratio": areas["attribution"] / areas["random"],
        },
        "randomised_weights": {
            "spearman_mean": float(correlations.mean()),
            "spearman_median": float(correlations.median()),
            "images": len(correlations),
        },
    }
    per_image = result["seconds_per_image"]
    print(
        f"{len(images)} test images, {model.precision}: answering "
        f"{1000 * per_image['answer']:.2f} ms/image, explaining "
        f"{1000 * per_image['explain']:.1f} ms/image"
    )
    print(
        f"deletion area: most attributed first {areas['attribution']:.4f}, random "
        f"{areas['random']:.4f} (ratio {result['deletion']['ratio']:.3f})"
    )
    fractions = result["deletion"]["fractions"][::4]
    print("fraction deleted   " + " ".join(f"{f:.3f}" for f in fractions))
    for name, curve in curves.items():
        print(f"{name:<18} " + " ".join(f"{p:.3f}" for p in curve.tolist()[::4]))
    sanity = result["randomised_weights"]
    print(
        f"trained vs randomised weights: Spearman mean {sanity['spearman_mean']:.3f}, "
        f"median {sanity['spearman_median']:.3f} over {sanity['images']} images"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
