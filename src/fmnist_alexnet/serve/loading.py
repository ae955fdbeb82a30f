"""What ``serve MODEL`` serves: a checkpoint, a run folder or an exported .onnx file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fmnist_alexnet import __version__
from fmnist_alexnet.checkpoint import LoadedModel, model_file
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.engines import load_classifier
from fmnist_alexnet.infer.onnx_model import OnnxModel
from fmnist_alexnet.infer.predict import Classifier
from fmnist_alexnet.model import count_parameters
from fmnist_alexnet.spec import ModelSpec


def load_served(
    path: str | Path,
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """The classifier and the facts ``GET /v1/model`` reports about it."""
    path = model_file(path)
    if not path.is_file():
        raise FmnistError(f"{path}: no model there (give a checkpoint, a run folder or an .onnx)")
    model, engine = load_classifier(path, engine, device, precision, threads)
    if isinstance(model, LoadedModel):
        parameters = count_parameters(model.model)
        runtime = {"engine": "torch", "device": str(model.device), "precision": model.precision}
    else:
        parameters = None
        runtime = {"engine": engine, "device": "cpu", "precision": model.precision}
    spec = model.spec
    info = {
        "version": __version__,
        "file": path.name,
        "sha256": _sha256(path),
        "arch": spec.arch,
        "classes": list(spec.class_names),
        "contract": model.contract if isinstance(model, OnnxModel) else spec.export_contract(),
        "parameters": parameters if parameters is not None else _count(spec),
        **runtime,
        **_measured(path),
    }
    return model, info


def _count(spec: ModelSpec) -> int:
    return count_parameters(spec.build_model())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _measured(path: Path) -> dict[str, Any]:
    """The run's own test figure, when ``path`` is the best.pt it was measured on."""
    metrics = path.parent.parent / "test_metrics.json"
    if path.name != "best.pt" or not metrics.is_file():
        return {}
    try:
        test = json.loads(metrics.read_text())
        return {"test_accuracy": test["accuracy"], "test_images": test["n"]}
    except (ValueError, KeyError, OSError):
        return {}
