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
import itertools
import statistics

import torch

from fmnist_alexnet.bench import Runner, window_rates
from fmnist_alexnet.config import resolve
from fmnist_alexnet.runtime import Distributed, configure_backends
from fmnist_alexnet.spec import ModelSpec
from fmnist_alexnet.train import epoch_batches, load_data

SETTINGS = {  # flags over --preset hour
    "hour's own": {},
    "--erase 0.1 --zoom 0.1 --rotate 10": {"erase": 0.1, "zoom": 0.1, "rotate": 10.0},
    "no augmentation": {"flip": False, "translate": 0, "erase": 0.0},
}


def batch_runner(data, config) -> Runner:
    """A runner whose step draws the next training batch of ``config``, epoch after epoch."""
    spec = ModelSpec.from_config(config)
    epochs = (epoch_batches(data, config, spec, epoch=e) for e in itertools.count())
    batches = itertools.chain.from_iterable(epochs)
    return Runner(lambda: next(batches))


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
    device = torch.device("cpu")
    configure_backends(device)  # as train does: malloc, denormals
    data = load_data(first, device, Distributed()).train
    runners = {name: batch_runner(data, config) for name, config in configs.items()}
    # bench's own timer: the settings take turns window by window after 3 untimed batches
    rates = window_rates(runners, first.batch_size, args.steps, args.rounds, 3, device)
    ms = {name: 1000 * first.batch_size / statistics.median(r) for name, r in rates.items()}
    base = ms[next(iter(ms))]
    print(f"{args.image_size} px, batch {first.batch_size}, {torch.get_num_threads()} threads:")
    for name, value in ms.items():
        print(f"  {name}: {value:.1f} ms per batch ({value / base:.2f}x)")


if __name__ == "__main__":
    main()
