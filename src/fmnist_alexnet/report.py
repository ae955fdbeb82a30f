"""Plots and a model card for a finished run, written into its folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fmnist_alexnet.atomic import atomic_write, atomic_write_text
from fmnist_alexnet.checkpoint import LoadedModel, load_model
from fmnist_alexnet.config import PRESETS, TrainConfig
from fmnist_alexnet.data.sources import find_data, load_split
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.evaluate import per_class_accuracy
from fmnist_alexnet.model import count_parameters
from fmnist_alexnet.rundir import RunDir

SAMPLE_GRID = (5, 8)
MISTAKE_PAIRS, MISTAKES_PER_PAIR = 4, 6
# Flags that do not change what is trained.
_NOT_RECIPE = {"out", "data_dir", "progress", "preset"}


def write_report(run_dir, device: str = "auto", data_dir=None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    run = RunDir(Path(run_dir))
    best = run.checkpoints / "best.pt"
    if not (run.path / "config.json").is_file() or not best.is_file():
        raise FmnistError(f"{run.path}: not a finished run folder (needs config.json and best.pt)")
    config = json.loads((run.path / "config.json").read_text())
    history = run.read_metrics()
    loaded = load_model(best, device)
    images, labels = load_split(find_data(data_dir or loaded.config.data_dir), "test")
    probs = _probabilities(loaded, images)
    predictions = probs.argmax(1)
    names = loaded.spec.class_names
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (labels.astype(np.int64), predictions), 1)
    written = [
        _save(run.path / "curves.png", _curves_figure(history)),
        _save(run.path / "confusion_matrix.png", _confusion_figure(confusion, names)),
        _save(run.path / "samples.png", _samples_figure(images, labels, predictions, names)),
        _save(run.path / "mistakes.png", _mistakes_figure(images, labels, probs, confusion, names)),
    ]
    card = model_card(config, history, confusion, loaded, run.path)
    written.append(atomic_write_text(run.path / "report.md", card))
    return written


def reproduce_command(config: dict) -> str:
    """The shortest ``train`` command that gives this config: the preset plus what differs."""
    preset = config.get("preset", "quick")
    base = TrainConfig(preset=preset, **PRESETS.get(preset, {})).to_dict()
    flags = [f"fmnist-alexnet train --preset {preset}"]
    for key, default in base.items():
        value = config.get(key, default)
        if key in _NOT_RECIPE or value == default:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            flags.append(f"{flag} {value}")
    return " ".join(flags)


def model_card(
    config: dict, history: list[dict], confusion, loaded: LoadedModel, run_path: Path
) -> str:
    """``config`` is the run's config.json; the model facts come from ``best.pt`` itself."""
    runtime = config.get("runtime", {})
    spec = loaded.spec
    n = int(confusion.sum())
    accuracy = float(np.trace(confusion)) / max(n, 1)
    per_class = per_class_accuracy(confusion.tolist(), spec.class_names)
    if loaded.best_val_acc is None:
        chosen = "the last epoch: the run held out no validation split"
    else:
        chosen = f"chosen by validation accuracy {loaded.best_val_acc:.4f}"
    wall = history[-1]["elapsed_s"] if history else None
    recipe = {k: v for k, v in config.items() if k not in _NOT_RECIPE | {"runtime"}}
    lines = [
        f"# Model card: {spec.arch} on Fashion-MNIST ({run_path.name})",
        "",
        f"**Test accuracy {accuracy:.4f}** on the official {n:,}-image test set, measured once "
        f"on `best.pt` (epoch {loaded.best_epoch}, {chosen}).",
        "",
        "## Model",
        f"- Architecture `{spec.arch}`: {count_parameters(loaded.model):,} parameters, "
        f"{spec.num_classes} classes, dropout {loaded.config.dropout}.",
        f"- Input contract: one channel, {spec.image_size}x{spec.image_size} px, "
        f"float32, made from a 28x28 uint8 image (light object on black) by x/255, "
        f"(x - {spec.mean}) / {spec.std}, then {spec.resize_mode} resize "
        "(align_corners=False). Output: logits for the classes below, in order.",
        "",
        "## Data",
        f"- Source: {runtime.get('data_source', 'unknown')}.",
        f"- Training on {runtime.get('train_images', '?')} images; validation (model "
        f"selection) on {runtime.get('val_images', '?')} held out of the training set "
        f"(split seed {loaded.config.split_seed}); test on {n:,}.",
        "",
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
        "## Results",
        "| class | test accuracy |",
        "| --- | --- |",
        *(f"| {name} | {acc:.4f} |" for name, acc in per_class.items()),
        "",
        "![training curves](curves.png)",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![test samples](samples.png)",
        "",
        "![most confident mistakes](mistakes.png)",
        "",
        "## Hardware and time",
        f"- Device {runtime.get('device', '?')} ({runtime.get('device_name', 'unknown')}), "
        f"{runtime.get('precision', '?')}, torch {runtime.get('torch', '?')}, "
        f"{runtime.get('world_size', 1)} process(es).",
        f"- Training wall time {wall:.0f} s over {len(history)} epochs."
        if wall is not None
        else "- No epochs recorded.",
        "",
    ]
    return "\n".join(lines)


@torch.no_grad()
def _probabilities(loaded: LoadedModel, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    chunks = []
    tensor = torch.from_numpy(images.copy())[:, None]
    for start in range(0, len(tensor), batch_size):
        chunks.append(torch.softmax(loaded.logits(tensor[start : start + batch_size]), 1).cpu())
    return torch.cat(chunks).numpy()


def _save(path: Path, figure) -> Path:
    import matplotlib.pyplot as plt

    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=110))
    plt.close(figure)
    return path


def _curves_figure(history: list[dict]):
    import matplotlib.pyplot as plt

    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    epochs = [row["epoch"] for row in history]
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(epochs, [row[key] for row in history], marker="o", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        acc_ax.plot(epochs, [row[key] for row in history], marker="o", label=label)
    for ax, title in ((loss_ax, "loss (cross-entropy)"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_xticks(epochs)
    figure.suptitle("train: augmented batches with dropout, as seen during the epoch")
    return figure


def _confusion_figure(confusion: np.ndarray, names):
    import matplotlib.pyplot as plt

    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
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


def _samples_figure(images, labels, predictions, names):
    import matplotlib.pyplot as plt

    rows, cols = SAMPLE_GRID
    picks = np.random.default_rng(0).choice(len(images), rows * cols, replace=False)
    figure, axes = plt.subplots(
        rows, cols, figsize=(cols * 1.6, rows * 1.9), constrained_layout=True
    )
    for ax, index in zip(axes.flat, picks, strict=True):
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


def _mistakes_figure(images, labels, probs, confusion, names):
    import matplotlib.pyplot as plt

    off = confusion.copy()
    np.fill_diagonal(off, 0)
    pairs = [divmod(int(k), len(names)) for k in np.argsort(off, axis=None)[::-1][:MISTAKE_PAIRS]]
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
