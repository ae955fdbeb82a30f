"""Export a checkpoint to ONNX, a torch.export program (pt2), TorchScript or safetensors, and
check the result on real test images against PyTorch.

Every file carries the model's contract (:meth:`ModelSpec.export_contract`) under the key
``fmnist_alexnet``: ONNX metadata, an extra file ``fmnist_alexnet.json`` in pt2 and
TorchScript archives, safetensors metadata.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmnist_alexnet.atomic import atomic_write_bytes
from fmnist_alexnet.checkpoint import load_model
from fmnist_alexnet.data.sources import find_data, load_split
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.spec import ModelSpec

FORMATS = ("onnx", "pt2", "torchscript", "safetensors")
CHECK_IMAGES = 512
CONTRACT_KEY = "fmnist_alexnet"
CONTRACT_FILE = "fmnist_alexnet.json"
MAX_BATCH = 65536


def export(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    data_dir: str | Path | None = None,
    check_images: int = CHECK_IMAGES,
) -> dict[str, Any]:
    """Write the model in ``fmt`` to ``out``; return parity figures on real test images."""
    if fmt not in FORMATS:
        raise FmnistError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    loaded = load_model(checkpoint, "cpu")
    model = loaded.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model = model.float().eval()
    spec = loaded.spec
    example = torch.zeros(2, 1, spec.image_size, spec.image_size)
    writer = {
        "onnx": _write_onnx,
        "pt2": _write_pt2,
        "torchscript": _write_torchscript,
        "safetensors": _write_safetensors,
    }[fmt]
    out = Path(out)
    atomic_write_bytes(out, writer(model, example, json.dumps(spec.export_contract())))

    images = load_split(find_data(data_dir), "test")[0][:check_images]
    inputs = loaded.preprocess(torch.from_numpy(images.copy())[:, None])
    with torch.no_grad():
        reference = model(inputs).numpy()
    exported = run_exported(fmt, out, inputs, spec)
    return {
        "format": fmt,
        "path": str(out),
        "bytes": out.stat().st_size,
        "images": len(images),
        "max_abs_logit_diff": float(np.abs(exported - reference).max()),
        "top1_agreement": float((exported.argmax(1) == reference.argmax(1)).mean()),
        "input": f"float32 [batch, 1, {spec.image_size}, {spec.image_size}]",
        "contract": spec.export_contract(),
    }


@torch.no_grad()
def run_exported(fmt: str, path: Path, inputs: torch.Tensor, spec: ModelSpec) -> np.ndarray:
    """Logits of the exported file on preprocessed float inputs."""
    if fmt == "onnx":
        return np.asarray(onnx_session(path).run(None, {"input": inputs.numpy()})[0])
    if fmt == "pt2":
        return np.asarray(torch.export.load(str(path)).module()(inputs).numpy())
    if fmt == "torchscript":
        scripted = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
        return np.asarray(scripted.eval()(inputs).numpy())
    from safetensors.torch import load_file

    model = spec.build_model().eval()
    model.load_state_dict(load_file(str(path)))
    return np.asarray(model(inputs).numpy())


@dataclass
class OnnxModel:
    """An exported ONNX file as a classifier: uint8 [B, 1, 28, 28] in, logits out, prepared by
    the contract stored in the file itself."""

    session: Any  # an onnxruntime.InferenceSession (onnxruntime ships no type information)
    spec: ModelSpec

    @classmethod
    def load(cls, path: str | Path) -> OnnxModel:
        session = onnx_session(path)
        props = session.get_modelmeta().custom_metadata_map
        if CONTRACT_KEY not in props:
            raise FmnistError(f"{path}: not exported by fmnist-alexnet (no contract in it)")
        try:
            contract = json.loads(props[CONTRACT_KEY])
        except ValueError:
            raise FmnistError(f"{path}: its fmnist-alexnet contract is not valid JSON") from None
        if not isinstance(contract, dict):
            raise FmnistError(f"{path}: its fmnist-alexnet contract is not a JSON object")
        return cls(session, ModelSpec.from_dict(contract, str(path)))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self.spec.preprocess()(images).numpy()
        return torch.from_numpy(self.session.run(None, {"input": inputs})[0])


def onnx_session(path: str | Path) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise FmnistError(
            "onnxruntime is not installed: pip install 'fmnist-alexnet[onnx]'"
        ) from None
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise FmnistError(
            f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})"
        ) from None


def _batch_dim() -> dict[str, dict[int, Any]]:
    return {"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}


def _write_onnx(model: nn.Module, example: torch.Tensor, contract: str) -> bytes:
    try:
        import onnx
    except ImportError:
        raise FmnistError("onnx is not installed: pip install 'fmnist-alexnet[onnx]'") from None
    with tempfile.TemporaryDirectory() as tmp, _quiet_onnx_exporter():
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=_batch_dim(),
            verbose=False,
            dynamo=True,
            external_data=False,
        )
        proto = onnx.load(path)
    meta = proto.metadata_props.add()
    meta.key, meta.value = CONTRACT_KEY, contract
    return bytes(proto.SerializeToString())


@contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence what torch's ONNX exporter says on every export about its own internals (that
    torchvision's detection ops are not installed; a deprecated pytree class): six lines of
    noise on stderr around the one line `export` prints. Its errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _write_pt2(model: nn.Module, example: torch.Tensor, contract: str) -> bytes:
    program = torch.export.export(model, (example,), dynamic_shapes=_batch_dim())
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={CONTRACT_FILE: contract})
    return buffer.getvalue()


def _write_torchscript(model: nn.Module, example: torch.Tensor, contract: str) -> bytes:
    traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={CONTRACT_FILE: contract})
    return buffer.getvalue()


def _write_safetensors(model: nn.Module, example: torch.Tensor, contract: str) -> bytes:
    try:
        from safetensors.torch import save
    except ImportError:
        raise FmnistError("safetensors is not installed: pip install safetensors") from None
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={CONTRACT_KEY: contract})
