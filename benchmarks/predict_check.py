"""Issue-3 figures: predict on test images written as files agrees with evaluation on the
originals; ONNX parity; single-image and batched prediction latency on this machine.

Usage: python benchmarks/predict_check.py CHECKPOINT [--n 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmnist_alexnet.checkpoint import load_model
from fmnist_alexnet.data.sources import find_data, load_splits
from fmnist_alexnet.export import OnnxModel, export
from fmnist_alexnet.predict import predict_images


def variants(image: np.ndarray) -> dict[str, tuple[Image.Image, dict]]:
    big = Image.fromarray(255 - image).resize((400, 400), Image.BICUBIC)
    photo = Image.new("L", (512, 512), 255)
    photo.paste(big, (40, 70))
    bordered = Image.new("L", (80, 60), 0)
    bordered.paste(Image.fromarray(image), (30, 20))
    return {
        "png_28": (Image.fromarray(image), {}),
        "inverted_jpeg_512_on_white": (photo.convert("RGB"), {"quality": 90}),
        "png_extra_border": (bordered, {}),
    }


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    images, labels = load_splits(find_data())["test"]
    images, labels = images[: args.n], labels[: args.n]
    loaded = load_model(args.checkpoint, "cpu")
    reference = loaded.logits(torch.from_numpy(images.copy())[:, None]).argmax(1).numpy()
    report: dict = {
        "checkpoint": args.checkpoint,
        "n": args.n,
        "evaluate_accuracy": float((reference == labels).mean()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        suffixes = {
            "png_28": ".png",
            "inverted_jpeg_512_on_white": ".jpg",
            "png_extra_border": ".png",
        }
        for name in suffixes:
            (root / name).mkdir()
        for i, image in enumerate(images):
            for name, (picture, kwargs) in variants(image).items():
                picture.save(root / name / f"{i:05d}{suffixes[name]}", **kwargs)
        for name in suffixes:
            results = predict_images(loaded, [root / name], top_k=1)
            top1 = np.array([r["top"][0]["label"] for r in results])
            report[name] = {
                "agreement_with_evaluate": float((top1 == reference).mean()),
                "accuracy": float((top1 == labels).mean()),
            }
        onnx_path = root / "model.onnx"
        report["onnx_export"] = export(args.checkpoint, "onnx", onnx_path)
        one = [root / "png_28" / "00000.png"]
        batch = sorted((root / "png_28").iterdir())[:256]
        for engine, model in (("torch", loaded), ("onnx", OnnxModel.load(onnx_path))):
            single = timed(lambda m=model: predict_images(m, one, top_k=1), 20)
            batched = timed(lambda m=model: predict_images(m, batch, top_k=1), 3)
            report[f"latency_{engine}"] = {
                "single_image_ms": 1000 * single,
                "batched_256_in_64s_ms_per_image": 1000 * batched / len(batch),
            }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
