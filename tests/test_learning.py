"""AlexNet learns from real Fashion-MNIST images (a module of its own, so that pytest-xdist
runs it beside test_train's runs rather than after them)."""

import pytest
from conftest import quiet

from fmnist_alexnet.config import resolve
from fmnist_alexnet.train import train


@pytest.mark.slow
def test_learns_a_real_subset(tmp_path):
    """1,600 real training images, 64 px, 3 epochs: far above the 10% of chance.

    The learning rate is half the quick preset's: at 1e-3 so short a run can stay on the
    network's initial plateau. No validation split (the last epoch is tested), to spend the
    time training.

    The recipe is spelled out rather than taken from a preset, so tuning a preset cannot
    quietly weaken this test.
    """
    recipe = {
        "optimizer": "adamw",
        "lr": 5e-4,
        "weight_decay": 0.01,
        "schedule": "onecycle",
        "warmup_epochs": 0.3,
        "label_smoothing": 0.0,
        "flip": True,
        "translate": 0,
        "dropout": 0.5,
        "precision": "fp32",
        "image_size": 64,
        "batch_size": 64,
        "epochs": 3,
        "time_budget": 0,  # quick's budget would probe this machine's speed first
    }
    config = resolve(
        "quick",
        {
            **recipe,
            "limit_train": 1600,
            "val_size": 0,
            "limit_eval": 500,
            "device": "cpu",
            "progress": False,
            "out": str(tmp_path),
        },
    )
    result = train(config, log=quiet)
    assert result.test.n == 500
    assert result.test.accuracy > 0.55, result.test.accuracy
