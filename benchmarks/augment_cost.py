"""Time the training batch pipeline (augment, normalise, resize) alone, setting by setting.

    python benchmarks/augment_cost.py [--image-size 160] [--steps 40] [--rounds 3]

Draws ``--steps`` batches of the ``hour`` preset's training data through training's own
``epoch_batches`` for each setting below (flags over the preset), alternating the settings
round by round, and prints the median milliseconds per batch of each and its ratio to the
first (the preset's own: flip, 2 px shifts, erasing 0.25). Relate it to a training step with
``fmnist-alexnet bench --preset hour``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fmnist_alexnet.config import resolve
from fmnist_alexnet.runtime import Distributed, configure_backends
from fmnist_alexnet.spec import ModelSpec
from fmnist_alexnet.train import epoch_batches, load_data

SETTINGS = {  # flags over --preset hour
    "hour's own": {},
    "--erase 0.1 --zoom 0.1 --rotate 10": {"erase": 0.1, "zoom": 0.1, "rotate": 10.0},
    "no augmentation": {"flip": False, "translate": 0, "erase": 0.0},
}


def per_batch_ms(data, config, steps: int) -> float:
    batches = epoch_batches(data, config, ModelSpec.from_config(config), epoch=0)
    start = time.perf_counter()
    for _ in zip(range(steps), batches, strict=False):
        pass
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configs = {
        name: resolve("hour", {**flags, "image_size": args.image_size, "device": "cpu"})
        for name, flags in SETTINGS.items()
    }
    first = next(iter(configs.values()))
    configure_backends(torch.device("cpu"))  # as train does: malloc, denormals
    data = load_data(first, torch.device("cpu"), Distributed()).train
    per_batch_ms(data, first, 3)  # warm-up
    times = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, config in configs.items():
            times[name].append(per_batch_ms(data, config, args.steps))
    base = statistics.median(times[next(iter(times))])
    print(f"{args.image_size} px, batch {first.batch_size}, {torch.get_num_threads()} threads:")
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"  {name}: {ms:.1f} ms per batch ({ms / base:.2f}x)")


if __name__ == "__main__":
    main()
