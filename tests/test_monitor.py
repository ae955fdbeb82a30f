"""The step monitor: one check per logging interval names the first non-finite step."""

import math

import pytest
import torch

from fmnist_alexnet.train.monitor import NonFinite, StepMonitor, weights_are_finite
from fmnist_alexnet.train.tracking import Tracker


class Recorder(Tracker):
    def __init__(self):
        self.points = []

    def log_scalars(self, step, scalars):
        self.points.append((step, scalars))


def feed(monitor, losses, norms=None, first_step=1):
    for i, loss in enumerate(losses):
        norm = None if norms is None else torch.tensor(norms[i])
        monitor.after_step(first_step + i, torch.tensor(loss), norm, 0.1, 32)


def test_points_hold_the_mean_loss_of_their_interval():
    tracker = Recorder()
    feed(StepMonitor(tracker, log_every=2), [1.0, 3.0, 5.0, 7.0])
    assert [(step, p["train/loss"], p["train/lr"]) for step, p in tracker.points] == [
        (2, 2.0, 0.1),
        (4, 6.0, 0.1),
    ]
    assert all(p["train/images_per_sec"] > 0 for _, p in tracker.points)


@pytest.mark.parametrize(
    ("losses", "norms", "step", "what"),
    [
        ([1.0, 2.0, math.nan, 4.0], None, 7, "the loss was nan"),
        ([1.0, math.inf, 3.0, 4.0], None, 6, "the loss was inf"),
        ([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, math.inf], 8, "the gradient norm was inf"),
    ],
)
def test_the_first_non_finite_step_is_named_at_the_check(losses, norms, step, what):
    monitor = StepMonitor(Recorder(), log_every=4)
    with pytest.raises(NonFinite) as error:
        feed(monitor, losses, norms, first_step=5)
    assert (error.value.step, error.value.what) == (step, what)


def test_nothing_is_checked_between_logging_steps():
    monitor = StepMonitor(Recorder(), log_every=10)
    feed(monitor, [math.nan, 1.0])  # no sync yet: the check comes at step 10 or on demand
    with pytest.raises(NonFinite, match="step 1"):
        monitor.check(2)


def test_weights_are_finite_sees_one_bad_weight():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    assert weights_are_finite(model)
    with torch.no_grad():
        model[1].bias[0] = math.nan
    assert not weights_are_finite(model)
