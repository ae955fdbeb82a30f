"""Which out-of-distribution score to ship: max calibrated softmax, energy and Mahalanobis
distance, side by side on one model, on the sets of ``fmnist_alexnet.infer.ood_sets``.

For each score: the threshold keeping 95 % (``--keep``) of the run's validation images, then per set
(digits, photo crops, noise) AUROC against the test set, the false-positive rate at 95 %
true-positive rate, and the share the threshold flags; and the share of the test set itself
flagged. Mahalanobis (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", 2018) uses the penultimate features
(the input of the last linear layer): class means and one shared covariance fitted on
``--fit-images`` training images (the run's training part, never validation or test); its
score is the smallest distance to a class mean.

Usage: python -m benchmarks.ood_check RUN|CHECKPOINT [--fit-images 10000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fmnist_alexnet.checkpoint import LoadedModel, load_model
from fmnist_alexnet.data.batches import DeviceData, validation_split
from fmnist_alexnet.data.sources import find_data, load_split
from fmnist_alexnet.infer.ood import KEEP_REAL, check_scores, fit_threshold, ood_scores
from fmnist_alexnet.infer.ood_sets import OOD_SETS, ood_set


def features_and_logits(
    model: LoadedModel, images: torch.Tensor, batch: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (the last linear layer's input) and logits, in float32."""
    seen: list[torch.Tensor] = []
    last = model.model.classifier[-1]
    hook = last.register_forward_pre_hook(lambda _m, args: seen.append(args[0].float().cpu()))
    try:
        logits = torch.cat(
            [model.logits(images[i : i + batch]).cpu() for i in range(0, len(images), batch)]
        )
    finally:
        hook.remove()
    return torch.cat(seen), logits


class Mahalanobis:
    def __init__(self, features: torch.Tensor, labels: torch.Tensor, classes: int) -> None:
        features = features.double()
        self.means = torch.stack([features[labels == c].mean(0) for c in range(classes)])
        centred = features - self.means[labels]
        covariance = centred.T @ centred / len(features)
        self.precision = torch.linalg.pinv(covariance, hermitian=True)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        # (f - m)' P (f - m) = f'Pf - 2 f'Pm + m'Pm, without an [N, C, D] tensor
        features = features.double()
        projected = features @ self.precision
        own = (projected * features).sum(1, keepdim=True)
        means = (self.means @ self.precision * self.means).sum(1)
        return (own - 2 * projected @ self.means.T + means).min(1).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--fit-images", type=int, default=10000)
    parser.add_argument("--keep", type=float, default=KEEP_REAL, help="of the val images")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = load_model(args.model)
    config, temperature = model.config, model.spec.temperature
    source = find_data(config.data_dir)
    full = DeviceData.from_numpy(*load_split(source, "train"), torch.device("cpu"))
    train_part, val = validation_split(full, config.val_size, config.split_seed)
    test = DeviceData.from_numpy(*load_split(source, "test"), torch.device("cpu"))
    fit = train_part.head(args.fit_images)

    started = time.perf_counter()
    sets = {"val": val.images, "test": test.images, **{name: ood_set(name) for name in OOD_SETS}}
    print(
        f"sets prepared in {time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{k} {len(v)}" for k, v in sets.items())
    )
    outputs = {name: features_and_logits(model, images) for name, images in sets.items()}
    fit_features, _ = features_and_logits(model, fit.images)
    mahalanobis = Mahalanobis(fit_features, fit.labels, model.spec.num_classes)

    def scores(name: str, method: str) -> torch.Tensor:
        features, logits = outputs[name]
        if method == "mahalanobis":
            return mahalanobis.scores(features)
        return ood_scores(logits, method, temperature)

    results: dict[str, dict[str, object]] = {}
    print(
        f"model {args.model}: T {temperature:.4f}; "
        f"threshold keeps {args.keep:.1%} of {len(val)} val images"
    )
    print(f"{'score':<12} {'set':<8} {'images':>6} {'AUROC':>7} {'FPR@95':>7} {'flagged':>8}")
    for method in ("msp", "energy", "mahalanobis"):
        threshold = fit_threshold(scores("val", method), args.keep)
        test_flagged = float((scores("test", method) > threshold).double().mean())
        rows = [
            check_scores(name, scores(name, method), scores("test", method), threshold)
            for name in OOD_SETS
        ]
        results[method] = {
            "threshold": threshold,
            "test_flagged": test_flagged,
            "sets": [row.to_dict() for row in rows],
        }
        print(f"{method:<12} {'test':<8} {len(test):>6} {'':>7} {'':>7} {test_flagged:>8.2%}")
        for row in rows:
            print(
                f"{method:<12} {row.name:<8} {row.images:>6} {row.auroc:>7.4f} "
                f"{row.fpr_at_95_tpr:>7.2%} {row.flagged:>8.2%}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
