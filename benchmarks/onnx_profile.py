"""Where an ONNX model's time goes: ONNX Runtime's own per-operator profile.

For each file, at batch 1 and 32, on real preprocessed test images: milliseconds per call
by operator type (Conv, QLinearConv, MatMulInteger, DequantizeLinear...), summed over the
nodes of that type, with each type's share of the call.

    python -m benchmarks.onnx_profile MODEL.onnx [MODEL.onnx ...] [--threads 2] [--calls 30]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import onnxruntime
import torch

from fmnist_alexnet.data.sources import find_data, load_split
from fmnist_alexnet.infer.onnx_model import OnnxModel


def profile(path: str, batch: int, threads: int, calls: int) -> dict[str, float]:
    """Milliseconds per call by operator type, after ``calls // 5`` untimed calls."""
    spec = OnnxModel.load(path).spec
    images = load_split(find_data(), "test")[0][:batch]
    inputs = spec.preprocess()(torch.from_numpy(images.copy())[:, None]).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for _ in range(calls // 5):
            session.run(None, {"input": inputs})
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for _ in range(calls):
            session.run(None, {"input": inputs})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1000 / calls
    return dict(sorted(by_op.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    for path in args.models:
        for batch in (1, 32):
            ops = profile(path, batch, args.threads, args.calls)
            total = sum(ops.values())
            print(f"{path}, batch {batch}, {args.threads} threads: {total:.2f} ms per call")
            for op, ms in ops.items():
                if ms >= 0.01 * total:
                    print(f"  {op:<22} {ms:8.2f} ms  {100 * ms / total:5.1f} %")


if __name__ == "__main__":
    main()
