"""Does a training step run slower from a late run's state than from a fresh one?

`--time-budget` scales its plan by the first epoch, and later epochs have often run slower
(RESULTS.md, the budgeted runs' table). If the cause were the state (weights, AdamW moments
gone denormal, sparser activations), a step restored from a finished run's ``last.pt`` would
be slower than one from fresh weights. This builds both from the checkpoint's own config,
feeds them the same training batches and times them in windows that take turns (``bench``'s
own timing), so drift in a shared machine's speed hits both alike. Prints each window and the
medians as JSON.

Usage: python benchmarks/late_state.py RUN/checkpoints/last.pt [--steps 8] [--windows 6]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

from fmnist_alexnet.bench import Runner, window_rates
from fmnist_alexnet.checkpoint import load_checkpoint
from fmnist_alexnet.runtime import (
    Distributed,
    configure_backends,
    resolve_device,
    resolve_precision,
)
from fmnist_alexnet.spec import ModelSpec
from fmnist_alexnet.step import build_train_step
from fmnist_alexnet.train import epoch_batches, load_data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--steps", type=int, default=8, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=6, help="timed windows of each")
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint.config
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    configure_backends(device, config.precision)
    data = load_data(config, device, Distributed())
    spec = ModelSpec.from_config(config)
    steps = {
        "fresh": build_train_step(config, device, precision, data.steps_per_epoch),
        "late": build_train_step(
            config, device, precision, data.steps_per_epoch, resume=checkpoint
        ),
    }
    # The schedule's rates show where each starts: the warm-up's first, the finished run's last.
    lrs = {name: step.lr for name, step in steps.items()}
    batches = list(itertools.islice(epoch_batches(data.train, config, spec, 0), args.steps))

    def runner(step) -> Runner:
        """The step over the same batches, again and again."""
        cycle = itertools.cycle(batches)
        return Runner(lambda: step(*next(cycle)))

    runners = {name: runner(step) for name, step in steps.items()}
    images = args.steps * config.batch_size
    measured = window_rates(runners, images, args.steps, args.windows, args.steps, device)
    rates = {name: [round(rate, 1) for rate in values] for name, values in measured.items()}
    medians = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "checkpoint_epoch": checkpoint.epoch,
        "image_size": config.image_size,
        "precision": precision,
        "lr_at_start": lrs,
        "train_images_per_sec_by_window": rates,
        "train_images_per_sec": medians,
        "late_over_fresh": round(medians["late"] / medians["fresh"], 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
