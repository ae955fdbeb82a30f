"""An exported ``.onnx`` file as a classifier, run by ONNX Runtime on the CPU, prepared by the
contract stored in the file itself (float32 or int8 alike)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.spec import ModelSpec

CONTRACT_KEY = "fmnist_alexnet"


@dataclass
class OnnxModel:
    """uint8 [B, 1, 28, 28] in, float32 logits out. ``contract`` is the stored one, with
    ``quantization`` (what was made int8, how it was calibrated, how it checked) in an int8
    file."""

    session: Any  # an onnxruntime.InferenceSession (onnxruntime ships no type information)
    spec: ModelSpec
    contract: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> OnnxModel:
        """``threads``: ONNX Runtime's intra-op threads (None: its default, one per core)."""
        session = onnx_session(path, threads)
        props = session.get_modelmeta().custom_metadata_map
        if CONTRACT_KEY not in props:
            raise FmnistError(f"{path}: not exported by fmnist-alexnet (no contract in it)")
        try:
            contract = json.loads(props[CONTRACT_KEY])
        except ValueError:
            raise FmnistError(f"{path}: its fmnist-alexnet contract is not valid JSON") from None
        if not isinstance(contract, dict):
            raise FmnistError(f"{path}: its fmnist-alexnet contract is not a JSON object")
        return cls(session, ModelSpec.from_dict(contract, str(path)), contract)

    @property
    def precision(self) -> str:
        """``int8`` for a quantized file, else ``fp32``."""
        quantization = self.contract.get("quantization")
        return str(quantization.get("dtype", "int8")) if isinstance(quantization, dict) else "fp32"

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self.spec.preprocess()(images).numpy()
        return torch.from_numpy(self.session.run(None, {"input": inputs})[0])


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise FmnistError(
            "onnxruntime is not installed: pip install 'fmnist-alexnet[onnx]'"
        ) from None
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise FmnistError(
            f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})"
        ) from None
