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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmnist_alexnet.atomic import atomic_write_bytes
from fmnist_alexnet.checkpoint import load_model
from fmnist_alexnet.data.sources import find_data, load_split
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.onnx_model import CONTRACT_KEY, onnx_session
from fmnist_alexnet.infer.quantize import (
    CALIBRATION_IMAGES,
    calibration_indices,
    needs_reduce_range,
    quantize_onnx,
)
from fmnist_alexnet.spec import ModelSpec

FORMATS = ("onnx", "pt2", "torchscript", "safetensors")
CHECK_IMAGES = 512
CONTRACT_FILE = "fmnist_alexnet.json"
MAX_BATCH = 65536
MIN_INT8_AGREEMENT = 0.98  # top-1 answers the int8 model must share with float32


def export(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    data_dir: str | Path | None = None,
    check_images: int = CHECK_IMAGES,
    quantize: str | None = None,
    method: str = "static",
    calibration_images: int = CALIBRATION_IMAGES,
) -> dict[str, Any]:
    """Write the model in ``fmt`` to ``out``; return parity figures on real test images.
    ``quantize="int8"`` (ONNX only) writes ONNX Runtime's int8 model instead, calibrated on
    ``calibration_images`` training images (:mod:`quantize`), and refuses to write one whose
    top-1 answers agree with float32's on less than ``MIN_INT8_AGREEMENT`` of them."""
    if fmt not in FORMATS:
        raise FmnistError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if quantize is not None and (quantize != "int8" or fmt != "onnx"):
        raise FmnistError(f"--quantize {quantize}: only int8, and only with --format onnx")
    loaded = load_model(checkpoint, "cpu")
    model = loaded.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model = model.float().eval()
    spec, contract = loaded.spec, loaded.spec.export_contract()
    example = torch.zeros(2, 1, spec.image_size, spec.image_size)
    source = find_data(data_dir)
    images, labels = (part[:check_images] for part in load_split(source, "test"))
    inputs = loaded.preprocess(torch.from_numpy(images.copy())[:, None])
    with torch.no_grad():
        reference = model(inputs).numpy()
    out = Path(out)
    if quantize:
        train_images = load_split(source, "train")[0]
        picked = train_images[calibration_indices(len(train_images), calibration_images)]
        calibration = loaded.preprocess(torch.from_numpy(picked)[:, None]).numpy()
        data, facts = _int8_onnx(
            model, example, contract, method, calibration, inputs, reference, labels
        )
        atomic_write_bytes(out, data)
        contract, parity = {**contract, "quantization": facts}, facts["check"]
    else:
        atomic_write_bytes(out, WRITERS[fmt](model, example, json.dumps(contract)))
        parity = _parity(run_exported(fmt, out, inputs, spec), reference, labels)
    return {
        "format": fmt,
        "path": str(out),
        "bytes": out.stat().st_size,
        **parity,
        "input": f"float32 [batch, 1, {spec.image_size}, {spec.image_size}]",
        "contract": contract,
    }


def _parity(exported: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """How the exported model's logits compare with PyTorch's float32 ones on test images."""
    return {
        "images": len(labels),
        "max_abs_logit_diff": float(np.abs(exported - reference).max()),
        "top1_agreement": float((exported.argmax(1) == reference.argmax(1)).mean()),
        "accuracy": float((exported.argmax(1) == labels).mean()),
        "float32_accuracy": float((reference.argmax(1) == labels).mean()),
    }


def _int8_onnx(
    model: nn.Module,
    example: torch.Tensor,
    contract: dict[str, Any],
    method: str,
    calibration: np.ndarray,
    inputs: torch.Tensor,
    reference: np.ndarray,
    labels: np.ndarray,
) -> tuple[bytes, dict[str, Any]]:
    """The int8 file's bytes, its contract carrying what was quantized and how it checked."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        float_path, int8_path = Path(tmp) / "float32.onnx", Path(tmp) / "int8.onnx"
        float_path.write_bytes(_write_onnx(model, example, json.dumps(contract)))
        facts = quantize_onnx(float_path, int8_path, method, calibration, needs_reduce_range())
        logits = np.asarray(onnx_session(int8_path).run(None, {"input": inputs.numpy()})[0])
        proto = onnx.load(str(int8_path))
    facts["check"] = check = _parity(logits, reference, labels)
    if check["top1_agreement"] < MIN_INT8_AGREEMENT:
        raise FmnistError(
            f"the int8 model agrees with float32 on {100 * check['top1_agreement']:.1f} % of "
            f"{check['images']} test images, under {100 * MIN_INT8_AGREEMENT:g} %: nothing "
            "written (try --quantize-method dynamic, or more --calibration-images)"
        )
    _set_contract(proto, json.dumps({**contract, "quantization": facts}))
    return bytes(proto.SerializeToString()), facts


def _set_contract(proto: Any, contract: str) -> None:
    """The contract as the model's one ``fmnist_alexnet`` metadata entry."""
    kept = [p for p in proto.metadata_props if p.key != CONTRACT_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    meta = proto.metadata_props.add()
    meta.key, meta.value = CONTRACT_KEY, contract


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
    _set_contract(proto, contract)
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


WRITERS = {
    "onnx": _write_onnx,
    "pt2": _write_pt2,
    "torchscript": _write_torchscript,
    "safetensors": _write_safetensors,
}
