"""Short real training runs, and a SHA-256 over every tensor of each run's ``last.pt``.

A refactor of training must leave its weights bit for bit as they were: run this before and
after, and compare the digests (``--compare before.json``). Five runs on the CPU in float32,
a few hundred images each: quick with EMA and augmentation, a progressive resize, the d2l
preset, a run resumed after its first epoch, and a run sized by a time budget (so generous
that the plan always takes the ``--epochs`` cap, and the largest of ``--budget-sizes``).

    python -m benchmarks.weights_digest --out digests.json [--compare before.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SMALL = ["--device", "cpu", "--precision", "fp32", "--limit-train", "384", "--limit-eval", "96"]
SMALL += ["--batch-size", "32", "--no-progress", "--no-tensorboard", "--no-report"]

RUNS: dict[str, list[list[str]]] = {
    "quick-ema-augment": [
        ["--preset", "quick", "--time-budget", "0", "--image-size", "65", "--epochs", "2"]
        + ["--ema", "0.9", "--flip", "--translate", "4", "--erase", "0.25", "--zoom", "0.1"]
        + ["--rotate", "5"]
    ],
    "progressive-resize": [
        ["--preset", "quick", "--time-budget", "0", "--start-size", "65", "--start-epochs", "1"]
        + ["--image-size", "97", "--epochs", "2"]
    ],
    "d2l": [["--preset", "d2l", "--image-size", "67", "--epochs", "2"]],
    "resumed": [
        ["--preset", "quick", "--time-budget", "0", "--image-size", "65", "--epochs", "1"],
        ["--resume", "auto", "--epochs", "2"],
    ],
    "budgeted": [
        ["--preset", "quick", "--time-budget", "3600", "--budget-sizes", "63,65"]
        + ["--budget-epochs", "1", "--epochs", "2"]
    ],
}


def tensor_digest(path: Path) -> str:
    """SHA-256 over every tensor in the checkpoint, each with its key path, in key order."""
    digest = hashlib.sha256()

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{prefix}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(f"{prefix}/{key}", value[key])
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(f"{prefix}/{index}", item)

    walk("", torch.load(path, map_location="cpu", weights_only=True))
    return digest.hexdigest()


def run(name: str, root: Path) -> str:
    out = root / name
    for extra in RUNS[name]:
        command = [sys.executable, "-m", "fmnist_alexnet", "train", *extra, *SMALL]
        command += ["--out", str(out)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return tensor_digest(out / "checkpoints" / "last.pt")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the digests here as JSON")
    parser.add_argument("--compare", type=Path, help="digests to compare with (JSON)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        digests = {name: run(name, Path(root)) for name in RUNS}
    for name, value in digests.items():
        print(f"{name:20} {value}")
    if args.out:
        args.out.write_text(json.dumps(digests, indent=2) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = [name for name in digests if before.get(name) != digests[name]]
        print("identical" if not differ else f"DIFFERENT: {', '.join(differ)}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
