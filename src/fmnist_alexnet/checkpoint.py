"""Atomic checkpoint saves and safe loads (``weights_only=True``)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from fmnist_alexnet.atomic import atomic_write
from fmnist_alexnet.data.batches import Preprocess
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import build_model

FORMAT_VERSION = 1
# What evaluation and prediction read from a checkpoint's config.
CONTRACT_KEYS = ("arch", "num_classes", "image_size", "mean", "std", "resize_mode")


def save_checkpoint(path: str | Path, state: dict) -> Path:
    state = {"format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FmnistError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FmnistError(f"{path}: not a readable checkpoint ({first_line})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise FmnistError(f"{path}: not an fmnist-alexnet checkpoint (no model/config)")
    missing = [key for key in CONTRACT_KEYS if key not in state["config"]]
    if missing:
        raise FmnistError(f"{path}: checkpoint config lacks {', '.join(missing)}")
    return state


def load_weights(model: nn.Module, state_dict: dict, path: str | Path, arch: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError:
        raise FmnistError(
            f"{path}: its weights do not fit architecture {arch!r} "
            "(a checkpoint of another architecture or class count)"
        ) from None


def model_from_checkpoint(state: dict, path: str | Path) -> nn.Module:
    config = state["config"]
    model = build_model(config["arch"], config["num_classes"])
    load_weights(model, state["model"], path, config["arch"])
    return model


def preprocess_from_config(config: dict) -> Preprocess:
    return Preprocess(config["image_size"], config["mean"], config["std"], config["resize_mode"])
