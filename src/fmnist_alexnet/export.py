"""Export a checkpoint to ONNX, TorchScript or safetensors, and check the result on real
test images against PyTorch."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fmnist_alexnet.atomic import atomic_write_bytes
from fmnist_alexnet.checkpoint import CONTRACT_KEYS
from fmnist_alexnet.data.sources import find_data, load_splits
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.predict import load_model

FORMATS = ("onnx", "torchscript", "safetensors")
CHECK_IMAGES = 512


def export(checkpoint, fmt: str, out, data_dir=None, check_images: int = CHECK_IMAGES) -> dict:
    """Write the model in ``fmt`` to ``out``; return parity figures on real test images."""
    if fmt not in FORMATS:
        raise FmnistError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    loaded = load_model(checkpoint, "cpu")
    model = loaded.model.to(memory_format=torch.contiguous_format).float().eval()
    contract = {key: loaded.config[key] for key in CONTRACT_KEYS}
    size = contract["image_size"]
    example = torch.zeros(2, 1, size, size)
    out = Path(out)
    writer = {
        "onnx": _write_onnx,
        "torchscript": _write_torchscript,
        "safetensors": _write_safetensors,
    }[fmt]
    payload = writer(model, example, contract)
    atomic_write_bytes(out, payload)

    images = load_splits(find_data(data_dir))["test"][0][:check_images]
    inputs = loaded.preprocess(torch.from_numpy(images.copy())[:, None])
    with torch.no_grad():
        reference = model(inputs).numpy()
    exported = run_exported(fmt, out, inputs, loaded.config)
    return {
        "format": fmt,
        "path": str(out),
        "bytes": out.stat().st_size,
        "images": len(images),
        "max_abs_logit_diff": float(np.abs(exported - reference).max()),
        "top1_agreement": float((exported.argmax(1) == reference.argmax(1)).mean()),
        "input": f"float32 [batch, 1, {size}, {size}]",
        "contract": contract,
    }


def run_exported(fmt: str, path: Path, inputs: torch.Tensor, config: dict) -> np.ndarray:
    if fmt == "onnx":
        return onnx_session(path).run(None, {"input": inputs.numpy()})[0]
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path)).eval()(inputs).numpy()
    from safetensors.torch import load_file

    from fmnist_alexnet.model import build_model

    model = build_model(config["arch"], config["num_classes"]).eval()
    model.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        return model(inputs).numpy()


def onnx_session(path):
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


def onnx_logits_fn(path):
    """uint8 [B, 1, 28, 28] -> logits through onnxruntime, preprocessed by the model's
    own contract (read from its metadata)."""
    from fmnist_alexnet.checkpoint import preprocess_from_config

    session = onnx_session(path)
    preprocess = preprocess_from_config(onnx_contract(session))
    return lambda images: torch.from_numpy(
        session.run(None, {"input": preprocess(images).numpy()})[0]
    )


def onnx_contract(session) -> dict:
    """The preprocessing contract stored in an exported model's metadata."""
    props = session.get_modelmeta().custom_metadata_map
    if "fmnist_alexnet" not in props:
        raise FmnistError("this ONNX model was not exported by fmnist-alexnet (no contract)")
    return json.loads(props["fmnist_alexnet"])


def _write_onnx(model, example, contract) -> bytes:
    try:
        import onnx
    except ImportError:
        raise FmnistError("onnx is not installed: pip install 'fmnist-alexnet[onnx]'") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        batch = torch.export.Dim("batch", min=1, max=65536)
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
            dynamo=True,
            external_data=False,
        )
        proto = onnx.load(path)
    meta = proto.metadata_props.add()
    meta.key, meta.value = "fmnist_alexnet", json.dumps(contract)
    return proto.SerializeToString()


def _write_torchscript(model, example, contract) -> bytes:
    import io

    traced = torch.jit.trace(model, example)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"fmnist_alexnet.json": json.dumps(contract)})
    return buffer.getvalue()


def _write_safetensors(model, example, contract) -> bytes:
    try:
        from safetensors.torch import save
    except ImportError:
        raise FmnistError("safetensors is not installed: pip install safetensors") from None
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={"fmnist_alexnet": json.dumps(contract)})
