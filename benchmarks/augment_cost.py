"""Time the training batch pipeline (augment, normalise, resize) alone, setting by setting.

    python benchmarks/augment_cost.py [--image-size 160] [--steps 40] [--rounds 3]

Draws ``--steps`` batches of 128 real training images through ``train_batches`` for each
setting below, alternating the settings round by round, and prints the median milliseconds
per batch of each and its ratio to the first (``hour``'s flip, 2 px shifts, erasing 0.25).
Relate it to a training step with ``fmnist-alexnet bench --preset hour``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fmnist_alexnet.data import MEAN, STD
from fmnist_alexnet.data.batches import Augment, DeviceData, Preprocess, train_batches
from fmnist_alexnet.data.sources import find_data, load_split
from fmnist_alexnet.runtime import configure_backends

SETTINGS = {
    "hour: --translate 2 --erase 0.25": Augment(True, 2, 0.25),
    "--erase 0.1 --zoom 0.1 --rotate 10": Augment(True, 2, 0.1, 0.1, 10.0),
    "no augmentation": Augment(),
}


def per_batch_ms(data, preprocess, augment, steps: int) -> float:
    batches = train_batches(data, 128, preprocess, augment, seed=0, epoch=0, channels_last=True)
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
    configure_backends(torch.device("cpu"))  # as train does: malloc, denormals
    images, labels = load_split(find_data(), "train")
    data = DeviceData.from_numpy(images, labels, torch.device("cpu"))
    preprocess = Preprocess(args.image_size, MEAN, STD)
    times = {name: [] for name in SETTINGS}
    per_batch_ms(data, preprocess, SETTINGS["hour: --translate 2 --erase 0.25"], 3)  # warm-up
    for _ in range(args.rounds):
        for name, augment in SETTINGS.items():
            times[name].append(per_batch_ms(data, preprocess, augment, args.steps))
    first = statistics.median(next(iter(times.values())))
    print(f"{args.image_size} px, batch 128, {torch.get_num_threads()} threads, medians:")
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"  {name}: {ms:.1f} ms per batch ({ms / first:.2f}x)")


if __name__ == "__main__":
    main()
