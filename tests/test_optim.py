import pytest
import torch

from fmnist_alexnet.config import TrainConfig
from fmnist_alexnet.train.optim import (
    build_optimizer,
    build_scheduler,
    cooldown_start,
    lr_factor,
    steps_ignoring_total,
)


def test_constant_with_warmup():
    factors = [lr_factor(s, 100, 10, "constant") for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[-1] == 1.0


def test_cosine_decays_to_zero():
    factors = [lr_factor(s, 100, 0, "cosine") for s in range(101)]
    assert factors[0] == 1.0 and factors[50] == pytest.approx(0.5) and factors[100] == 0.0
    assert all(a >= b for a, b in zip(factors[:-1], factors[1:], strict=True))


def test_onecycle_rises_then_falls():
    factors = [lr_factor(s, 100, 0, "onecycle") for s in range(101)]
    peak = max(range(101), key=factors.__getitem__)
    assert factors[0] == pytest.approx(1 / 25) and peak == 30 and factors[100] == 0.0


def test_wsd_holds_the_peak_then_decays_over_its_cooldown():
    factors = [lr_factor(s, 100, 10, "wsd", 30) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert set(factors[9:71]) == {1.0}  # the decay's first step, 70, is still the peak
    assert factors[85] == pytest.approx(0.5) and factors[100] == 0.0
    assert all(a > b for a, b in zip(factors[70:100], factors[71:], strict=True))


def test_wsd_rates_before_its_decay_are_those_of_any_longer_run():
    config = TrainConfig(schedule="wsd", warmup_epochs=1.0, cooldown=0.3, epochs=10)
    assert steps_ignoring_total(config, 10) == cooldown_start(config, 10) == 70
    assert cooldown_start(config, 10, epochs=14) == 140 - 42

    def rates(epochs):
        total = epochs * 10
        cooldown = total - cooldown_start(config, 10, epochs)
        return [lr_factor(s, total, 10, "wsd", cooldown) for s in range(total)]

    assert rates(10)[:71] == rates(14)[:71] and rates(10)[71] < rates(14)[71]
    # Other schedules: the decay "starts" at the end.
    assert cooldown_start(TrainConfig(schedule="cosine", epochs=3), 10) == 30


def test_no_weight_decay_on_biases_and_scheduler_steps():
    model = torch.nn.Linear(3, 2)
    config = TrainConfig(optimizer="sgd", weight_decay=0.1, lr=0.5, schedule="cosine", epochs=2)
    optimizer = build_optimizer(model, config)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=5)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
