"""int8 ONNX: ONNX Runtime's post-training quantization of an exported float32 model.

- ``static`` (the default): QDQ format, weights int8 per output channel, activations uint8
  with ranges (MinMax) calibrated on training images, never test images: every layer runs
  in int8, the weights take a quarter of the space.
- ``dynamic``: the weights of the linear layers only (MatMul/Gemm) int8, their activations
  quantized per batch at run time; the convolutions stay float32.

On an x86 CPU without VNNI, ONNX Runtime's uint8 x int8 kernels (AVX2's ``vpmaddubsw``) can
saturate a 16-bit sum; ``reduce_range`` (7-bit weights) avoids that at a little precision.
It is decided at export from the exporting CPU's flags and recorded in the contract: a
file made on a VNNI machine and run on one without can lose accuracy (export again there).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.runtime import cpu_flags

METHODS = ("static", "dynamic")
CALIBRATION_IMAGES = 512
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 64
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def needs_reduce_range() -> bool:
    """Whether this CPU is x86 without VNNI (where full-range uint8 x int8 can saturate)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return x86 and not (cpu_flags() & VNNI_FLAGS)


def calibration_indices(train_images: int, count: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Which training images calibrate: ``count`` drawn without replacement, fixed by seed."""
    if not 1 <= count <= train_images:
        raise FmnistError(f"--calibration-images must be in 1..{train_images}, got {count}")
    return np.sort(np.random.default_rng(seed).choice(train_images, count, replace=False))


def quantize_onnx(
    float_model: Path,
    out: Path,
    method: str,
    calibration: np.ndarray,
    reduce_range: bool,
) -> dict[str, Any]:
    """Write the int8 model of ``float_model`` to ``out``; what was done, for the contract.
    ``calibration``: preprocessed float32 inputs [N, 1, S, S] (static only)."""
    try:
        from onnxruntime import __version__ as ort_version
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise FmnistError(
            "onnxruntime is not installed: pip install 'fmnist-alexnet[onnx]'"
        ) from None
    if method not in METHODS:
        raise FmnistError(f"--quantize-method {method!r}: choose one of {', '.join(METHODS)}")
    prepared = out.with_name(out.stem + ".prepared.onnx")
    quant_pre_process(str(float_model), str(prepared))  # shapes inferred, graph folded
    facts: dict[str, Any] = {
        "dtype": "int8",
        "method": method,
        "reduce_range": reduce_range,
        "tool": f"onnxruntime {ort_version}",
    }
    if method == "dynamic":
        return {**facts, **_dynamic(prepared, out, reduce_range)}
    return {**facts, **_static(prepared, out, calibration, reduce_range)}


def _dynamic(prepared: Path, out: Path, reduce_range: bool) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(prepared),
        str(out),
        op_types_to_quantize=["MatMul", "Gemm"],
        weight_type=QuantType.QInt8,
        reduce_range=reduce_range,
    )
    return {"quantized": "linear layers' weights (int8, per tensor)"}


def _static(
    prepared: Path, out: Path, calibration: np.ndarray, reduce_range: bool
) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared),
        str(out),
        _Reader(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return {
        "quantized": "every layer: weights int8 per output channel, activations uint8 (QDQ)",
        "calibration": {
            "images": len(calibration),
            "split": "train",
            "seed": CALIBRATION_SEED,
            "ranges": "MinMax",
        },
    }


def int8_line(facts: dict[str, Any]) -> str:
    """What an int8 export did and how it checked, in one line."""
    check = facts["check"]
    how = f"{facts['method']}: {facts['quantized']}"
    if "calibration" in facts:
        how += f", calibrated on {facts['calibration']['images']} training images"
    return (
        f"int8 ({how}; reduce_range {'on' if facts['reduce_range'] else 'off'}): accuracy "
        f"{100 * check['accuracy']:.2f} % against float32's {100 * check['float32_accuracy']:.2f} "
        f"% on those {check['images']} test images"
    )


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed inputs."""

    def __init__(self, inputs: np.ndarray) -> None:
        self.batches = iter(
            [
                {"input": inputs[start : start + CALIBRATION_BATCH]}
                for start in range(0, len(inputs), CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)
