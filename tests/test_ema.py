"""The weight average (--ema), random erasing (--erase) and the zoom and rotation warp
(--zoom, --rotate) inside real training runs."""

import json

import pytest
import torch
from conftest import TINY, assert_same_weights, quiet, stop_after, tiny_config
from torch import nn

from fmnist_alexnet.checkpoint import load_checkpoint, load_model
from fmnist_alexnet.data.sources import find_data, load_splits
from fmnist_alexnet.train import TrainingInterrupted, train
from fmnist_alexnet.train.ema import WeightEma
from fmnist_alexnet.train.start import plan_run

# On the suite's small network: the average's capture and restore are the same code for any
# network (test_train checks AlexNet's own bit-exact resume).
AVERAGED = dict(ema=0.9, erase=0.5, zoom=0.1, rotate=10.0)


def test_average_follows_its_formula_and_is_swapped_in_and_out():
    model = nn.Linear(3, 2)
    ema = WeightEma(model, decay=0.9)
    expected = model.weight.detach().clone()
    for t in range(30):
        with torch.no_grad():
            model.weight.add_(1.0)
        decay = min(0.9, (1 + t) / (10 + t))
        expected = decay * expected + (1 - decay) * model.weight.detach()
        ema.update(model)
    averaged = ema.state_dict()
    assert torch.allclose(averaged["weight"], expected, atol=1e-5)
    own = model.weight.detach().clone()
    with ema.applied(model):
        assert torch.equal(model.weight, averaged["weight"])
    assert torch.equal(model.weight, own)


@pytest.fixture(scope="module")
def averaged_run(module_tmp):
    out = module_tmp
    train(tiny_config(out, **AVERAGED), log=quiet)
    return out


def first_test_images(n):
    images, labels = load_splits(find_data(None))["test"]
    return torch.from_numpy(images[:n].copy())[:, None], torch.from_numpy(labels[:n].copy()).long()


def test_checkpoints_hold_the_average_and_the_test_evaluates_it(averaged_run):
    best = averaged_run / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    assert state.ema_updates == state.step
    assert all(not torch.equal(state.model[k], state.train_model[k]) for k in state.model)
    # `model` (what evaluate, predict and export read) is the average; the run's own test
    # figure is that average's accuracy on the same images.
    images, labels = first_test_images(TINY["limit_eval"])
    logits = load_model(best, "cpu", precision="fp32").logits(images)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    test = json.loads((averaged_run / "test_metrics.json").read_text())
    assert test["accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_interrupted_averaged_run_resumes_exactly(averaged_run, tmp_path):
    with pytest.raises(TrainingInterrupted):  # stopped in epoch 2, after its step 3
        train(tiny_config(tmp_path, **AVERAGED), log=quiet, should_stop=stop_after(11))
    config, state = plan_run(None, {}, str(tmp_path / "checkpoints" / "last.pt"))
    train(config, state, log=quiet)
    for key in ("model", "train_model"):
        assert_same_weights(
            getattr(load_checkpoint(tmp_path / "checkpoints" / "last.pt"), key),
            getattr(load_checkpoint(averaged_run / "checkpoints" / "last.pt"), key),
        )
