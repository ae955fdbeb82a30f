"""The figures of a run, drawn with matplotlib (the ``report`` extra): the report writes them
as PNGs, TensorBoard shows them as images."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from pathlib import Path
from typing import Any

import numpy as np

from fmnist_alexnet.atomic import atomic_write

SAMPLE_GRID = (5, 8)
MAX_EPOCH_TICKS = 15  # every epoch is labelled up to this many; beyond, the labels collide
MISTAKE_PAIRS, MISTAKES_PER_PAIR = 4, 6


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the Agg backend (files, no display): the one place the backend
    is chosen. ImportError without matplotlib (the ``report`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(path: Path, figure: Figure) -> Path:
    plt = pyplot()

    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=110))
    plt.close(figure)
    return path


def curves_figure(history: list[dict[str, Any]]) -> Figure:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    figure: Figure
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    epochs = [row["epoch"] for row in history]
    validated = any(row.get("val_acc") is not None for row in history)  # --val-size 0: none
    for ax, kind in ((loss_ax, "loss"), (acc_ax, "acc")):
        ax.plot(epochs, [row[f"train_{kind}"] for row in history], marker="o", label="train")
        if validated:
            values = [row[f"val_{kind}"] for row in history]
            ax.plot(epochs, values, marker="o", label="validation")
    for ax, title in ((loss_ax, "loss (cross-entropy)"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) <= MAX_EPOCH_TICKS:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_EPOCH_TICKS, integer=True))
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)  # no tick for an epoch 0
    figure.suptitle(
        "train: the epoch's batches as trained (dropout on; augmented and label-smoothed if "
        "the recipe does so)" + ("" if validated else "; no validation split")
    )
    return figure


def confusion_figure(confusion: np.ndarray, names: Sequence[str]) -> Figure:
    plt = pyplot()

    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    figure: Figure
    figure, ax = plt.subplots(figsize=(9, 8), constrained_layout=True)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            if confusion[i, j]:
                ax.text(
                    j,
                    i,
                    f"{confusion[i, j]}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test set: share of each true class (colour), counts (numbers)")
    figure.colorbar(image, ax=ax, shrink=0.8)
    return figure


def samples_figure(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, names: Sequence[str]
) -> Figure:
    plt = pyplot()

    rows, cols = SAMPLE_GRID
    shown = min(rows * cols, len(images))  # a run's --limit-eval can leave fewer
    rows = -(-shown // cols)
    picks = np.random.default_rng(0).choice(len(images), shown, replace=False)
    figure: Figure
    figure, axes = plt.subplots(
        rows, cols, figsize=(cols * 1.6, rows * 1.9), constrained_layout=True
    )
    for ax in axes.flat[shown:]:
        ax.axis("off")
    for ax, index in zip(axes.flat, picks, strict=False):
        right = predictions[index] == labels[index]
        ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"{names[labels[index]]}\n-> {names[predictions[index]]}",
            fontsize=7,
            color="black" if right else "red",
        )
        ax.set_xticks([])
        ax.set_yticks([])
        if not right:
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.5)
    figure.suptitle("random test images: true -> predicted (wrong in red)")
    return figure


def mistakes_figure(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    confusion: np.ndarray,
    names: Sequence[str],
) -> Figure:
    plt = pyplot()

    off = confusion.copy()
    np.fill_diagonal(off, 0)
    pairs = [divmod(int(k), len(names)) for k in np.argsort(off, axis=None)[::-1][:MISTAKE_PAIRS]]
    figure: Figure
    figure, axes = plt.subplots(
        MISTAKE_PAIRS,
        MISTAKES_PER_PAIR,
        figsize=(MISTAKES_PER_PAIR * 1.7, MISTAKE_PAIRS * 2.0),
        constrained_layout=True,
        squeeze=False,
    )
    predictions = probs.argmax(1)
    for row, (true, predicted) in enumerate(pairs):
        wrong = np.flatnonzero((labels == true) & (predictions == predicted))
        wrong = wrong[np.argsort(probs[wrong, predicted])[::-1]][:MISTAKES_PER_PAIR]
        for col in range(MISTAKES_PER_PAIR):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(wrong):
                ax.axis("off")
                continue
            index = wrong[col]
            ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"p={probs[index, predicted]:.2f}", fontsize=8)
            if col == 0:
                ax.set_ylabel(
                    f"{names[true]}\nas {names[predicted]}\n({off[true, predicted]}x)",
                    fontsize=8,
                )
    figure.suptitle("most confident mistakes of the most confused pairs (true as predicted)")
    return figure


def reliability_figure(logits: np.ndarray, labels: np.ndarray, temperature: float) -> Figure:
    """Accuracy against stated confidence in equal-width bins, for the raw softmax and (when
    calibrated) the temperature's: a calibrated model's points lie on the diagonal."""
    from fmnist_alexnet.infer.calibration import ECE_BINS

    plt = pyplot()
    figure: Figure
    figure, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="calibrated")
    curves = [(1.0, "raw softmax", "tab:gray")]
    if temperature != 1.0:
        curves.append((temperature, f"T = {temperature:.3f}", "tab:blue"))
    for t, label, color in curves:
        scaled = logits / t
        probs = np.exp(scaled - scaled.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        confidence, right = probs.max(1), probs.argmax(1) == labels
        bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
        used = [b for b in range(ECE_BINS) if (bins == b).any()]
        ax.plot(
            [confidence[bins == b].mean() for b in used],
            [right[bins == b].mean() for b in used],
            marker="o",
            color=color,
            label=label,
        )
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class's probability)")
    ax.set(ylabel="accuracy", title=f"test set, {ECE_BINS} equal-width bins")
    ax.legend(loc="upper left")
    return figure
