"""What runs a trained model for ``predict`` and ``serve``: PyTorch for a checkpoint (or a
run folder's ``best.pt``), onnxruntime for an exported ``.onnx`` file."""

from __future__ import annotations

from pathlib import Path

from fmnist_alexnet.checkpoint import load_model
from fmnist_alexnet.infer.predict import Classifier

ENGINES = ("auto", "torch", "onnx")


def pick_engine(path: str | Path, engine: str = "auto") -> str:
    """``engine`` as given, or for ``auto``: onnx for a ``.onnx`` file, torch otherwise."""
    if engine != "auto":
        return engine
    return "onnx" if Path(path).suffix.lower() == ".onnx" else "torch"


def load_classifier(
    path: str | Path,
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
) -> tuple[Classifier, str]:
    """The classifier in ``path`` and the engine that runs it. An ONNX model runs on the CPU
    in its own precision (float32, or int8 for a quantized export) whatever ``device`` and
    ``precision`` say, with ``threads`` intra-op threads (PyTorch's are process-wide:
    ``torch.set_num_threads``)."""
    engine = pick_engine(path, engine)
    if engine == "onnx":
        from fmnist_alexnet.infer.onnx_model import OnnxModel

        return OnnxModel.load(path, threads), engine
    return load_model(path, device, precision), engine
