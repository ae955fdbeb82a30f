"""Plots and a model card for a finished run, written into its folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmnist_alexnet.atomic import atomic_write_text
from fmnist_alexnet.checkpoint import LoadedModel, load_model
from fmnist_alexnet.data.sources import find_data, is_published, load_split
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.figures import (
    confusion_figure,
    curves_figure,
    mistakes_figure,
    pyplot,
    reliability_figure,
    samples_figure,
    save_figure,
)
from fmnist_alexnet.infer.calibration import Calibration, measure
from fmnist_alexnet.infer.evaluate import per_class_accuracy
from fmnist_alexnet.infer.ood import KEEP_REAL
from fmnist_alexnet.infer.ood_sets import SET_NAMES, OodTable, available, ood_table
from fmnist_alexnet.infer.predict import batched_logits
from fmnist_alexnet.model import count_parameters
from fmnist_alexnet.recipe import NOT_RECIPE, reproduce_command
from fmnist_alexnet.train.rundir import RunDir


def write_report(
    run_dir: str | Path, device: str = "auto", data_dir: str | Path | None = None
) -> list[Path]:
    pyplot()  # matplotlib or a clear ImportError before any work
    run = RunDir(Path(run_dir))
    best = run.checkpoints / "best.pt"
    if not (run.path / "config.json").is_file() or not best.is_file():
        raise FmnistError(f"{run.path}: not a finished run folder (needs config.json and best.pt)")
    config = run.read_config()
    history = run.read_metrics()
    loaded = load_model(best, device)
    source = find_data(data_dir or loaded.config.data_dir)
    images, labels = load_split(source, "test")
    if loaded.config.limit_eval:  # as the run's own test did (test_metrics.json)
        images, labels = images[: loaded.config.limit_eval], labels[: loaded.config.limit_eval]
    logits = _logits(loaded, images)
    temperature = loaded.spec.temperature
    probs = torch.softmax(torch.from_numpy(logits) / temperature, 1).numpy()
    calibration = measure(
        torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64)), temperature
    )
    ood = None
    if loaded.spec.ood_threshold is not None and available():
        ood = ood_table(loaded, torch.from_numpy(logits))
    predictions = probs.argmax(1)
    names = loaded.spec.class_names
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (labels.astype(np.int64), predictions), 1)
    written = [
        save_figure(run.path / "curves.png", curves_figure(history)),
        save_figure(run.path / "confusion_matrix.png", confusion_figure(confusion, names)),
        save_figure(run.path / "samples.png", samples_figure(images, labels, predictions, names)),
        save_figure(
            run.path / "mistakes.png", mistakes_figure(images, labels, probs, confusion, names)
        ),
        save_figure(run.path / "reliability.png", reliability_figure(logits, labels, temperature)),
    ]
    card = model_card(
        config,
        history,
        confusion,
        loaded,
        run.path,
        test_published=is_published(source),
        calibration=calibration,
        ood=ood,
    )
    written.append(atomic_write_text(run.path / "report.md", card))
    return written


def model_card(
    config: dict[str, Any],
    history: list[dict[str, Any]],
    confusion: np.ndarray,
    loaded: LoadedModel,
    run_path: Path,
    test_published: bool = True,
    calibration: Calibration | None = None,
    ood: OodTable | None = None,
) -> str:
    """``config`` is the run's config.json; the model facts come from ``best.pt`` itself.
    ``test_published``: whether the test files the confusion matrix counts are the
    published ones (by SHA-256); ``calibration``: the test set's, at the model's
    temperature (its section is left out without it); ``ood``: the out-of-distribution
    table (without it, the section says how to get one)."""
    runtime = config.get("runtime", {})
    spec = loaded.spec
    n = int(confusion.sum())
    accuracy = float(np.trace(confusion)) / max(n, 1)
    per_class = per_class_accuracy(confusion.tolist(), spec.class_names)
    if loaded.best_val_acc is None:
        chosen = "the last epoch: the run held out no validation split"
    else:
        chosen = f"chosen by validation accuracy {loaded.best_val_acc:.4f}"
    lines = [
        f"# Model card: {spec.arch} on Fashion-MNIST ({run_path.name})",
        "",
        f"**Test accuracy {accuracy:.4f}** on {_test_set(n, test_published)}, measured once "
        f"on `best.pt` (epoch {loaded.best_epoch}, {chosen}).",
        "",
        "## Model",
        f"- Architecture `{spec.arch}`: {count_parameters(loaded.model):,} parameters, "
        f"{spec.num_classes} classes, dropout {loaded.config.dropout}.",
        f"- Input contract: one channel, {spec.image_size}x{spec.image_size} px, "
        f"float32, made from a 28x28 uint8 image (light object on black) by "
        f"{spec.preprocess().describe()}. Output: logits for the classes below, in order.",
        "",
        "## Data",
        f"- Source: {runtime.get('data_source', 'unknown')}"
        f"{_PUBLISHED_WORDS.get(runtime.get('data_published'), '')}.",
        f"- Training on {_count(runtime.get('train_images'))} images; "
        f"{_validation(runtime.get('val_images'), loaded.config.split_seed)}; test on {n:,}.",
        "",
        *_recipe_lines(config),
        "## Results",
        "| class | test accuracy |",
        "| --- | --- |",
        *(f"| {name} | {acc:.4f} |" for name, acc in per_class.items()),
        "",
        *_calibration_lines(calibration),
        *_ood_lines(ood, spec.ood_threshold is not None),
        *_figure_lines(),
        "## Hardware and time",
        f"- Device {runtime.get('device', '?')} ({runtime.get('device_name', 'unknown')}), "
        f"{runtime.get('precision', '?')}, torch {runtime.get('torch', '?')}, "
        f"{runtime.get('world_size', 1)} process(es).",
        _time_line(history, runtime),
        "",
    ]
    return "\n".join(lines)


def _recipe_lines(config: dict[str, Any]) -> list[str]:
    """The run's settings as JSON, and the command that trains it again."""
    recipe = {k: v for k, v in config.items() if k not in NOT_RECIPE | {"runtime"}}
    return [
        "## Recipe",
        "```json",
        json.dumps(recipe, indent=2),
        "```",
        "",
        "Reproduce with:",
        "```sh",
        reproduce_command(config),
        "```",
        "",
    ]


def _calibration_lines(calibration: Calibration | None) -> list[str]:
    """How honest the test probabilities are, at the model's temperature and at 1."""
    if calibration is None:
        return []
    c = calibration
    how = (
        f"temperature {c.temperature:.4f}, fitted on the validation split (by training, or "
        "by `calibrate` for an older run)"
        if c.temperature != 1.0
        else "not calibrated (temperature 1: `fmnist-alexnet calibrate RUN` fits one)"
    )
    return [
        "## Calibration",
        f"- Probabilities: {how}.",
        f"- On the test set: expected calibration error {c.ece:.4f} ({c.ece_uncalibrated:.4f} "
        f"for the raw softmax), negative log-likelihood {c.nll:.4f} ({c.nll_uncalibrated:.4f}).",
        "",
        "![reliability diagram](reliability.png)",
        "",
    ]


def _ood_lines(ood: OodTable | None, fitted: bool) -> list[str]:
    """How well the model tells pictures that are not clothing from the test set."""
    lines = ["## Not a Fashion-MNIST item"]
    if ood is None:
        why = (
            "install the `ood-sets` extra (scikit-learn, scikit-image) and rerun `report`"
            if fitted
            else "no threshold fitted: `fmnist-alexnet calibrate RUN` fits one"
        )
        return [*lines, f"- Not measured: {why}.", ""]
    return [
        *lines,
        f"- Score `{ood.method}`; a picture scoring above {ood.threshold:.4f} (the value that "
        f"keeps {100 * KEEP_REAL:.0f} % of the validation images) is reported as not a "
        f"clothing item. It flags "
        f"{ood.test_flagged:.2%} of the {ood.test_images:,} test images.",
        "- AUROC against the test set (1: always told apart); FPR at 95 % TPR: the share "
        "still taken for clothing when 95 % of the test set is; flagged: by the threshold.",
        "",
        "| pictures | images | AUROC | FPR at 95 % TPR | flagged |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {SET_NAMES[row.name]} | {row.images:,} | {row.auroc:.4f} | "
            f"{row.fpr_at_95_tpr:.2%} | {row.flagged:.2%} |"
            for row in ood.sets
        ),
        "",
    ]


def _figure_lines() -> list[str]:
    """The pictures ``write_report`` draws beside the card."""
    lines = []
    for alt, name in (
        ("training curves", "curves"),
        ("confusion matrix", "confusion_matrix"),
        ("test samples", "samples"),
        ("most confident mistakes", "mistakes"),
    ):
        lines += [f"![{alt}]({name}.png)", ""]
    return lines


# What the card says of the training run's files (config.json's runtime.data_published;
# a run whose config.json lacks it gets no words).
_PUBLISHED_WORDS = {
    True: " (the published files: SHA-256 verified)",
    False: " (**not the published Fashion-MNIST**: the files' SHA-256 differ)",
}


def _test_set(n: int, published: bool = True) -> str:
    if not published:
        return f"{n:,} test images that are **not the published test set** (their SHA-256 differ)"
    if n == 10_000:
        return "the official 10,000-image test set"
    return f"the first {n:,} images of the official test set (the run's --limit-eval)"


def _logits(loaded: LoadedModel, images: np.ndarray) -> np.ndarray:
    return batched_logits(loaded, torch.from_numpy(images.copy())[:, None]).numpy()


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _validation(images: object, split_seed: int) -> str:
    if images == 0:
        return "no validation split (the last epoch is the one tested)"
    return (
        f"validation (model selection) on {_count(images)} held out of the training set "
        f"(split seed {split_seed})"
    )


def _time_line(history: list[dict[str, Any]], runtime: dict[str, Any]) -> str:
    if not history:
        return "- No epochs recorded."
    line = f"- Training wall time {history[-1]['elapsed_s']:.0f} s over {len(history)} epochs"
    if "resumed" in runtime:  # the processes' times add up; the gaps between them do not
        return line + ", summed over the processes that trained it (resumed at least once)."
    return line + "."
