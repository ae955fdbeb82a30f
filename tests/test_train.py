"""Training on real data: it learns, it resumes exactly, it writes what it promises."""

import dataclasses
import hashlib
import json
import math
import resource
import subprocess

import pytest
import torch
from conftest import (
    TINY_CLI,
    assert_same_weights,
    final_weights,
    quiet,
    stop_after,
    tiny_config,
)

from fmnist_alexnet.checkpoint import FORMAT_VERSION, load_checkpoint
from fmnist_alexnet.config import PRESETS, resolve
from fmnist_alexnet.data import CLASS_NAMES, MEAN, STD
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.train import TrainingInterrupted, budget, time_budget, train
from fmnist_alexnet.train import data as train_data
from fmnist_alexnet.train.start import RunComplete, plan_run

# A schedule that does not depend on the total: a 1-epoch run is then exactly the first
# half of a 2-epoch run (with one-cycle or cosine the totals set different curves).
SCHEDULE = {"schedule": "constant", "warmup_epochs": 0.5}
# Bit-exact resume is checked on the real network; the rest of this module's plumbing on the
# suite's small one.
REAL = {"arch": "alexnet"}


@pytest.fixture(scope="module")
def straight_run(module_tmp):
    out = module_tmp / "straight"
    train(tiny_config(out, tensorboard=True, **SCHEDULE, **REAL), log=quiet)
    return out


def test_run_folder_contents(straight_run):
    config = json.loads((straight_run / "config.json").read_text())
    assert config["image_size"] == 63 and config["runtime"]["precision"] == "fp32"
    rows = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    expected = {
        "epoch",
        "step",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "images_per_sec",
        "elapsed_s",
        "stop",
    }
    assert set(rows[0]) == expected and rows[1]["stop"] is None
    assert rows[1]["step"] == 2 * (256 // 32)
    state = torch.load(straight_run / "checkpoints" / "best.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng", "config"} <= set(state)
    assert state["format_version"] == FORMAT_VERSION
    fitted = {key: state["spec"].pop(key) for key in ("temperature", "ood_method", "ood_threshold")}
    # training fitted the temperature and threshold on its validation split
    assert 0.01 <= fitted["temperature"] <= 100 and fitted["temperature"] != 1.0
    assert fitted["ood_method"] == "energy" and math.isfinite(fitted["ood_threshold"])
    assert state["spec"] == {
        "arch": "alexnet",
        "image_size": 63,
        "mean": MEAN,
        "std": STD,
        "resize_mode": "bilinear",
        "class_names": list(CLASS_NAMES),
        "num_classes": 10,
        "precision": "fp32",
    }
    test = json.loads((straight_run / "test_metrics.json").read_text())
    assert test["n"] == 64 and 0 <= test["accuracy"] <= 1
    assert not list((straight_run / "checkpoints").glob("*.tmp"))


def test_tensorboard_holds_the_run_as_its_metrics_say(straight_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight_run / "tensorboard"))
    events.Reload()
    rows = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    # every 10 steps and at each epoch's end (8 steps an epoch)
    assert [e.step for e in events.Scalars("train/loss")] == [8, 10, 16]
    assert [e.step for e in events.Scalars("train/lr")] == [8, 10, 16]
    assert all(e.value > 0 for e in events.Scalars("train/images_per_sec"))
    for tag, key in (("epoch/val_acc", "val_acc"), ("epoch/train_loss", "train_loss")):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == [
            (row["step"], pytest.approx(row[key])) for row in rows
        ]
    test = json.loads((straight_run / "test_metrics.json").read_text())
    assert [e.value for e in events.Scalars("test/accuracy")] == [pytest.approx(test["accuracy"])]
    assert set(events.Tags()["images"]) == {"test/confusion_matrix", "test/samples"}


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_last_pt(tmp_path):
    """A file-size limit (RLIMIT_FSIZE, as `ulimit -f` sets) makes the next last.pt write
    fail part-way: exit 2, one line naming the file and the cause, the old last.pt intact."""
    run = tmp_path / "run"
    train(tiny_config(run, **SCHEDULE), log=quiet)
    last = run / "checkpoints" / "last.pt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    limit = last.stat().st_size // 2  # below a checkpoint, above config.json and metrics
    assert limit > 4 * (run / "config.json").stat().st_size

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    argv = ["train", "--resume", "auto", "--out", str(run), "--epochs", "3", "--no-report",
            "--no-tensorboard"]  # fmt: skip
    done = subprocess.run(
        [*TINY_CLI, *argv],
        preexec_fn=small_files,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"{last}: cannot write (File too large: a file-size limit" in lines[0]
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before
    assert load_checkpoint(last).epoch == 2
    assert not list(run.rglob(".*.tmp"))


def test_resume_at_epoch_boundary_equals_straight_run(straight_run, tmp_path):
    train(tiny_config(tmp_path / "resumed", epochs=1, **SCHEDULE, **REAL), log=quiet)
    config, state = plan_run(None, {"epochs": 2, "out": str(tmp_path / "resumed")}, "auto")
    assert state.epoch == 1
    train(config, state, log=quiet)
    assert_same_weights(final_weights(tmp_path / "resumed"), final_weights(straight_run))
    tmp_path = tmp_path / "resumed"
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_interrupt_mid_epoch_saves_and_resume_equals_straight_run(straight_run, tmp_path):
    with pytest.raises(TrainingInterrupted, match="resume with: fmnist-alexnet train --resume"):
        train(tiny_config(tmp_path, **SCHEDULE, **REAL), log=quiet, should_stop=stop_after(11))
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (saved.epoch, saved.step) == (1, 11)
    config, state = plan_run(None, {}, str(tmp_path / "checkpoints" / "last.pt"))
    result = train(config, state, log=quiet)
    assert_same_weights(final_weights(tmp_path), final_weights(straight_run))
    straight_rows = (straight_run / "metrics.jsonl").read_text().splitlines()
    resumed_rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    for key in ("train_loss", "train_acc", "val_acc"):
        assert [json.loads(r)[key] for r in resumed_rows] == pytest.approx(
            [json.loads(r)[key] for r in straight_rows]
        )
    assert result.best_epoch in (1, 2)


def test_resume_refuses_finished_run_and_other_arch(straight_run):
    last = straight_run / "checkpoints" / "last.pt"
    with pytest.raises(FmnistError, match="already trained 2 of 2 epochs"):
        plan_run(None, {"out": str(straight_run)}, str(last))
    # a requeued job's `--resume auto` on a run that ended: nothing to do, not an error
    with pytest.raises(RunComplete, match="is complete"):
        plan_run(None, {"out": str(straight_run)}, "auto")
    with pytest.raises(FmnistError, match="--arch alexnet-paper differs"):
        plan_run(None, {"out": str(straight_run), "arch": "alexnet-paper", "epochs": 3}, "auto")


def test_a_budgeted_run_trains_exactly_as_the_count_it_chose(tmp_path):
    """The probe's throwaway model draws from the global RNG; the real one reseeds it, so a
    budget that fits both epochs gives the very weights of a plain 2-epoch run."""
    plain, run = tmp_path / "plain", tmp_path / "budgeted"
    train(tiny_config(plain, **SCHEDULE), log=quiet)
    train(tiny_config(run, time_budget=3600.0, **SCHEDULE), log=quiet)
    assert_same_weights(final_weights(run), final_weights(plain))
    config = json.loads((run / "config.json").read_text())
    plan = config["runtime"]["time_budget"]
    assert config["epochs"] == plan["epochs"] == 2 and plan["budget_s"] == 3600
    assert 0 < plan["estimate_s"] < 3600 and plan["train_images_per_sec"] > 0
    assert not (run / "checkpoints" / "time-budget-probe.pt").exists()


def test_a_budget_chooses_the_largest_size_that_fits_and_records_why(tmp_path):
    lines = []
    sized = dict(budget_sizes="72,63", budget_epochs=2, time_budget=3600.0, epochs=2)
    result = train(tiny_config(tmp_path, **sized), log=lines.append)
    assert lines[0].startswith("time budget 3600 s: 72 px chosen (the largest that fits 2 ")
    assert "epochs that fit: 2 at 63 px, 2 at 72 px" in lines[0]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["image_size"] == 72 and config["budget_sizes"] == "72,63"
    assert config["runtime"]["time_budget"]["sizes"] == {"63": 2, "72": 2}
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt").spec.image_size == 72
    assert len(result.history) == 2


# A probe that says 8 steps of 12 s: about 100 s an epoch, so a budget of 200 s (190
# planned, 20 kept for the report) fits one epoch.
SLOW = budget.Speeds({63: 12.0}, eval_image_s=0.001, save_s=1.0, warmup_extra_s=0.0)


def test_a_budget_cuts_the_epochs_and_a_resumed_run_keeps_the_cut(tmp_path, monkeypatch):
    """A one-cycle with no warm-up of its own anneals by the total from its first step, so
    the probe's count stands."""
    lines = []
    monkeypatch.setattr(budget, "probe", lambda *args: SLOW)
    config = tiny_config(tmp_path, epochs=3, time_budget=200.0, warmup_epochs=0.0)
    result = train(config, log=lines.append)
    assert len(result.history) == 1 and result.test is not None
    assert lines[0].startswith("time budget 200 s: 1 epoch fit, about 97 s each")
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt").config.epochs == 1
    again = {"out": str(tmp_path), "time_budget": 200.0, "epochs": 3}
    with pytest.raises(RunComplete):  # the same command requeued: its cap is set aside
        plan_run(None, again, "auto")
    last = str(tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(FmnistError, match="planned 1 epoch to its --time-budget of 200s"):
        plan_run(None, {"epochs": 3}, last)
    with pytest.raises(FmnistError, match="only --time-budget 0"):
        plan_run(None, {"time_budget": 900.0}, last)
    config, _ = plan_run(None, {"epochs": 3, "time_budget": 0.0}, last)
    assert (config.epochs, config.time_budget) == (3, 0.0)


def test_a_first_epoch_faster_than_the_probe_said_lets_more_epochs_in(tmp_path, monkeypatch):
    """With a first epoch whose rates do not depend on the total, the count is planned
    again from what that epoch took; the run is still exactly the plain run of that count."""
    lines, plain, tmp_path = [], tmp_path / "plain", tmp_path / "budgeted"
    train(tiny_config(plain, **SCHEDULE), log=quiet)
    monkeypatch.setattr(budget, "probe", lambda *args: SLOW)
    train(tiny_config(tmp_path, time_budget=200.0, **SCHEDULE), log=lines.append)
    assert lines[0].startswith("time budget 200 s: 1 epoch fit")
    replanned = [line for line in lines if line.startswith("time budget: epoch 1 took")]
    assert len(replanned) == 1 and "2 epochs fit now (planned 1)" in replanned[0]
    assert_same_weights(final_weights(tmp_path), final_weights(plain))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["epochs"] == 2 and config["runtime"]["time_budget"]["replanned"]["factor"] < 1


def test_a_warm_up_shorter_than_an_epoch_replans_where_it_ends(tmp_path, monkeypatch):
    """quick's warm-up is 0.3 epochs: the count is planned again after its steps, the last
    whose rates ignore the total, and the run is still exactly the plain run of that count."""
    # quick's one-cycle, warming up for 2 of an epoch's 4 steps. The probe says 49 s an
    # epoch: 1 fits in 88 % of a 100 s budget, less the 20 s kept for the end.
    warmup = {"warmup_epochs": 0.5, "limit_train": 128}
    train(tiny_config(tmp_path / "plain", **warmup), log=quiet, test=False)
    lines = []
    monkeypatch.setattr(budget, "probe", lambda *args: SLOW)
    config = tiny_config(tmp_path / "budgeted", time_budget=100.0, **warmup)
    train(config, log=lines.append, test=False)
    assert lines[0].startswith("time budget 100 s: 1 epoch fit")
    replanned = [line for line in lines if line.startswith("time budget: the first 2 steps")]
    assert len(replanned) == 1 and "2 epochs fit now (planned 1)" in replanned[0]
    assert [line[:9] for line in lines if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert_same_weights(final_weights(tmp_path / "budgeted"), final_weights(tmp_path / "plain"))
    config = json.loads((tmp_path / "budgeted" / "config.json").read_text())
    assert config["epochs"] == 2 and config["runtime"]["time_budget"]["replanned"]["steps"] == 2


def test_a_wsd_run_plans_again_until_its_decay_and_is_the_plain_run_of_its_count(
    tmp_path, monkeypatch
):
    """wsd holds the peak until its last 30 % of steps, so the count is planned again
    after every epoch that ends before the decay. The probe fits 1 epoch of 8 steps (decay
    from step 6), so the first plan comes after 6 steps; it is made to say 3 of the 4
    epochs (decay from step 17 of 24). After epoch 2 (step 16) the run's real pace fits all
    4 (decay from step 22), and the run is exactly the plain 4-epoch run."""
    wsd = {"schedule": "wsd", "warmup_epochs": 0.0, "epochs": 4}
    train(tiny_config(tmp_path / "plain", **wsd), log=quiet, test=False)
    lines = []
    monkeypatch.setattr(budget, "probe", lambda *args: SLOW)
    first = time_budget.replan
    monkeypatch.setattr(
        time_budget, "replan", lambda *args: dataclasses.replace(first(*args), epochs=3)
    )
    config = tiny_config(tmp_path / "budgeted", time_budget=200.0, **wsd)
    train(config, log=lines.append, test=False)
    first_plan = [line for line in lines if line.startswith("time budget: the first 6 steps")]
    assert len(first_plan) == 1 and "(before the decay)" in first_plan[0]
    assert "3 epochs fit now (planned 1)" in first_plan[0]
    later = [line for line in lines if line.startswith("time budget: epoch 2 took")]
    assert len(later) == 1 and "4 epochs fit now (planned 3)" in later[0]
    assert [line[:9] for line in lines if line.startswith("epoch ")] == [
        "epoch 1/3",
        "epoch 2/4",
        "epoch 3/4",
        "epoch 4/4",
    ]
    assert_same_weights(final_weights(tmp_path / "budgeted"), final_weights(tmp_path / "plain"))
    plan = json.loads((tmp_path / "budgeted" / "config.json").read_text())["runtime"]
    assert plan["time_budget"]["late"]["plans"] == 1


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_trains_on_real_images(tmp_path, preset):
    """Each preset's optimizer, schedule and augmentation run together (at 65 px, the
    smallest every preset's network takes, 4 steps). The budgets of quick and hour are off
    here: their probes would double this test's time, and the budgeted runs above test it;
    the given image size turns quick's choice of size off."""
    overrides = {"image_size": 65, "epochs": 1, "limit_train": 128, "limit_eval": 64}
    overrides |= {"time_budget": 0.0}
    overrides |= {"batch_size": 32, "precision": "fp32", "device": "cpu", "progress": False}
    config = resolve(preset, {**overrides, "out": str(tmp_path)})
    result = train(config, log=quiet)
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt").config
    for key, value in PRESETS[preset].items():
        expected = "" if key == "budget_sizes" else overrides.get(key, value)
        assert getattr(saved, key) == expected, key


def test_progressive_resizing_trains_early_epochs_small_and_evaluates_at_the_final_size(
    tmp_path, monkeypatch
):
    sizes = []
    real = train_data.train_batches

    def recording(data, **kwargs):
        sizes.append(kwargs["preprocess"].image_size)
        return real(data, **kwargs)

    monkeypatch.setattr(train_data, "train_batches", recording)
    config = tiny_config(
        tmp_path, epochs=3, image_size=72, start_size=63, start_epochs=2, limit_train=64
    )
    train(config, log=quiet)
    assert sizes == [63, 63, 72]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best.config.image_size == best.spec.image_size == 72
