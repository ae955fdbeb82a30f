"""Safer runs: the non-finite guard, early stopping, honest resume overrides, and TensorBoard
curves that a resumed run continues without duplicates."""

import hashlib
import json
import shutil

import pytest
import torch
from conftest import TINY_ARGS, quiet, tiny_config

from fmnist_alexnet.checkpoint import load_checkpoint
from fmnist_alexnet.cli import main
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.runtime import resolve_device
from fmnist_alexnet.train import train
from fmnist_alexnet.train.messages import summary_line
from fmnist_alexnet.train.start import plan_run
from fmnist_alexnet.train.step import build_train_step
from fmnist_alexnet.train.tracking import Tracker, open_tracker

SCHEDULE = {"schedule": "constant", "warmup_epochs": 0.0, "log_every": 4}


@pytest.fixture(scope="module")
def one_epoch(module_tmp):
    """A finished 1-epoch tiny run (8 steps), to be copied and resumed."""
    out = module_tmp / "one-epoch"
    train(tiny_config(out, epochs=1, tensorboard=True, **SCHEDULE), log=quiet)
    return out


@pytest.fixture
def run_copy(one_epoch, tmp_path):
    return shutil.copytree(one_epoch, tmp_path / "run")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_diverging_resume_exits_3_and_leaves_the_checkpoint_it_resumed_from(run_copy, capsys):
    last, best = run_copy / "checkpoints" / "last.pt", run_copy / "checkpoints" / "best.pt"
    before = digest(last), digest(best)
    code = main(
        ["train", "--resume", "auto", "--out", str(run_copy), "--epochs", "3"]
        + ["--lr", "1e8", "--no-report", "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 3
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "training diverged:" in err and "(epoch 2)" in err and "--lr below 1e+08" in err
    assert "keeps epoch 1, the last finite state" in err
    assert (digest(last), digest(best)) == before
    saved = load_checkpoint(last)
    assert saved.epoch == 1 and all(torch.isfinite(t).all() for t in saved.model.values())
    assert len((run_copy / "metrics.jsonl").read_text().splitlines()) == 1
    # the new rate was applied (and recorded as such), not recorded and ignored
    resumed = json.loads((run_copy / "config.json").read_text())["runtime"]["resumed"]
    assert resumed["changed"]["lr"] == [0.001, 1e8]


def test_a_run_diverging_in_its_first_epoch_writes_no_checkpoint(tmp_path, capsys):
    args = ["train", *TINY_ARGS, "--limit-train", "64", "--epochs", "1", "--no-report"]
    args += ["--arch", "alexnet"]  # the small network's few weights take even this rate
    code = main(args + ["--lr", "1e8", "--schedule", "constant", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 3 and "no checkpoint was written" in err and "--grad-clip" in err
    assert not list((tmp_path / "checkpoints").glob("*.pt"))


def test_resume_applies_the_optimizer_settings_it_records(one_epoch):
    config, resumed = plan_run(
        None, {"out": str(one_epoch), "epochs": 2, "lr": 3e-4, "weight_decay": 0.5}, "auto"
    )
    step = build_train_step(config, resolve_device("cpu"), "fp32", 8, resume=resumed)
    decay, no_decay = step.optimizer.param_groups
    assert decay["lr"] == no_decay["lr"] == 3e-4 and step.scheduler.base_lrs == [3e-4, 3e-4]
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    unchanged, again = plan_run(None, {"out": str(one_epoch), "epochs": 2}, "auto")
    same = build_train_step(unchanged, resolve_device("cpu"), "fp32", 8, resume=again)
    assert same.optimizer.state_dict()["param_groups"] == again.optimizer["param_groups"]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("batch_size", 64), ("image_size", 72), ("seed", 5), ("val_size", 100), ("ema", 0.99)],
)
def test_resume_refuses_what_it_cannot_apply(one_epoch, flag, value):
    option = "--" + flag.replace("_", "-")
    with pytest.raises(FmnistError, match=f"^{option} ") as error:
        plan_run(None, {"out": str(one_epoch), "epochs": 2, flag: value}, "auto")
    assert "\n" not in str(error.value)


def test_early_stopping_stops_says_why_and_resumes_with_its_counter(run_copy):
    overrides = {"out": str(run_copy), "epochs": 3, "early_stop": 1, "min_delta": 1.0}
    overrides["tensorboard"] = False  # a resumed run may switch it off
    result = train(*plan_run(None, overrides, "auto"), log=quiet)
    rows = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["stop"] == result.stopped
    assert result.stopped.startswith("early stop at epoch 2: validation accuracy did not rise")
    assert result.stopped in summary_line(result)
    assert load_checkpoint(run_copy / "checkpoints" / "last.pt").stale_epochs == 1
    # Resumed for more epochs, the counter is where it was: it stops before training more.
    again = train(*plan_run(None, {**overrides, "epochs": 4}, "auto"), log=quiet)
    assert again.stopped == result.stopped and len(again.history) == 2


def test_a_resumed_run_continues_its_tensorboard_curves_without_duplicates(run_copy):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    # What a process killed after its epoch-1 checkpoint had already logged of epoch 2.
    with SummaryWriter(str(run_copy / "tensorboard")) as orphan:
        for step in (12, 16):
            orphan.add_scalar("train/loss", 99.0, step)
    train(*plan_run(None, {"out": str(run_copy), "epochs": 2}, "auto"), log=quiet)
    events = EventAccumulator(str(run_copy / "tensorboard"))
    events.Reload()
    points = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [step for step, _ in points] == [4, 8, 12, 16]
    assert 99.0 not in [value for _, value in points]
    assert [e.step for e in events.Scalars("epoch/val_acc")] == [8, 16]


def test_without_the_tensorboard_package_the_run_says_so_once_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)
    said = []
    tracker = open_tracker(tmp_path, enabled=True, resumed_step=None, log=said.append)
    assert type(tracker) is Tracker and len(said) == 1 and "not installed" in said[0]
    assert not (tmp_path / "tensorboard").exists()
