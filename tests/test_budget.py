"""--time-budget: the duration flag and the arithmetic that sizes a run to it."""

import argparse
import dataclasses

import pytest

from fmnist_alexnet.argtypes import duration
from fmnist_alexnet.config import budget_sizes, replace, resolve
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.train.budget import (
    FINISH_S,
    SAFETY,
    Speeds,
    choose_size,
    fit_epochs,
    replan,
    replan_late,
    replan_step,
)
from fmnist_alexnet.train.messages import FEW_HOUR_EPOCHS, budget_line, few_epochs_line


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2.5h", 9000),
     ("30m10s", 1810), (" 1H 30M ", 5400), (".5h", 1800), ("0", 0)],
)  # fmt: skip
def test_durations_parse_with_their_units(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "1x", "1h30", "1m1h", "-5m", "-1", "inf", "nan"])
def test_durations_refuse_the_rest(text):
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


# 50 steps of 1 s at hour's 160 px and quick's 128 px alike (0.5 s at 96 px), 5,000
# validation and 10,000 test images at 1 ms, a 2 s save per epoch.
SPEEDS = Speeds({160: 1.0, 128: 1.0, 96: 0.5}, eval_image_s=0.001, save_s=2.0, warmup_extra_s=3.0)
SIZES = dict(steps_per_epoch=50, val_images=5000, test_images=10000)


def test_as_many_epochs_as_fit_in_the_budget():
    config = resolve("hour", {"time_budget": 600.0})
    plan = fit_epochs(config, SPEEDS, spent_s=30.0, **SIZES)
    # 0.88 * 600 = 528 s, less 30 spent, 3 warm-up, 10 for the test, 10 for the report's
    # pass and 20 for the rest: 455 s; an epoch is 50 s of steps + 5 s of validation + 2 s
    # of saving = 57 s: 7 fit.
    assert SAFETY == 0.88 and FINISH_S == 20
    assert plan.epochs == 7 and plan.epoch_s == [57.0] * 7
    assert plan.estimate_s == pytest.approx(30 + 3 + 7 * 57 + 10 + 10 + 20)
    assert plan.estimate_s <= SAFETY * 600
    assert (plan.train_images_per_sec, plan.eval_images_per_sec) == (128.0, 1000.0)


def test_epochs_stay_at_most_the_given_count():
    config = resolve("hour", {"time_budget": 3600.0, "epochs": 5})
    assert fit_epochs(config, SPEEDS, spent_s=30.0, **SIZES).epochs == 5


def test_ranks_share_evaluation_and_early_epochs_cost_their_own_size():
    config = resolve("hour", {"time_budget": 600.0, "start_size": 96, "start_epochs": 2})
    plan = fit_epochs(config, SPEEDS, spent_s=30.0, world_size=2, **SIZES)
    # validation 2.5 s and test 5 s per rank; 96 px epochs 25 + 2.5 + 2 s, then 54.5 s
    assert plan.epoch_s[:3] == [29.5, 29.5, 54.5]
    assert plan.epochs == 2 + int((0.88 * 600 - 30 - 3 - 2 * 5 - 20 - 59) // 54.5) == 9


def test_a_budget_that_fits_no_epoch_says_what_would():
    config = resolve("hour", {"time_budget": 60.0})  # (30 + 3 + 2 * 10 + 20 + 57) / 0.88
    with pytest.raises(FmnistError, match=r"fits no epoch .* give at least 148s"):
        fit_epochs(config, SPEEDS, spent_s=30.0, **SIZES)


def test_the_first_epoch_rescales_the_rest():
    plan = fit_epochs(resolve("hour", {"time_budget": 600.0}), SPEEDS, spent_s=30.0, **SIZES)
    # The first epoch took 120 s, twice the 57 s plus 3 s of warm-up estimated, ending at
    # 144 s: the rest cost 114 s each, the test and the report's pass 20 s each;
    # 528 - 144 - 40 - 20 = 324 s fit 2 more.
    slower = replan(plan, elapsed_s=144.0, took_s=120.0, steps=50)
    assert (slower.epochs, slower.replanned["factor"], slower.test_s) == (3, 2.0, 20.0)
    assert slower.estimate_s == pytest.approx(144 + 2 * 114 + 20 + 20 + 20)
    # Half as long: 28.5 s each after ending at 60 s; 528 - 60 - 10 - 20 = 438 s fit 15
    # more of the 39 that the cap of 40 allows.
    faster = replan(plan, elapsed_s=60.0, took_s=30.0, steps=50)
    assert faster.epochs == 16 and faster.replanned["epochs_before"] == 7
    # A first epoch that used up the budget leaves just itself.
    assert replan(plan, elapsed_s=700.0, took_s=600.0, steps=50).epochs == 1


def test_a_short_warm_up_rescales_the_rest_of_its_epoch_too():
    plan = fit_epochs(resolve("hour", {"time_budget": 600.0}), SPEEDS, spent_s=30.0, **SIZES)
    # 10 of 50 steps were estimated at 10 s plus 3 s of warm-up; they took 26 s, ending at
    # 56 s. The epoch's other 40 steps, validation and save (47 s estimated) now cost 94 s,
    # each later epoch 114 s: 528 - 56 - 94 - 60 = 318 s fit 2 more.
    again = replan(plan, elapsed_s=56.0, took_s=26.0, steps=10)
    assert (again.epochs, again.replanned["factor"]) == (3, 2.0)
    assert again.replanned["estimated_s"] == 13.0 and again.epoch_s == [120.0] + [114.0] * 2
    assert again.estimate_s == pytest.approx(30 + 120 + 2 * 114 + 60)


def test_a_later_plan_uses_the_pace_since_epoch_1_and_keeps_the_margin_on_what_is_left():
    plan = fit_epochs(resolve("hour", {"time_budget": 600.0}), SPEEDS, spent_s=30.0, **SIZES)
    # Epochs 2-4 took the 171 s estimated, ending at 250 s: 0.88 * (600 - 250 - 40) = 272.8
    # s fit 4 more of 57 s.
    again = replan_late(plan, elapsed_s=250.0, epochs_done=4, since_first_s=171.0, least=4)
    assert again.epochs == 8 and again.late == {
        "after_epoch": 4,
        "took_s": 171.0,
        "estimated_s": 171.0,
        "factor": 1.0,
        "epochs_before": 7,
        "plans": 1,
    }
    assert again.epoch_s == [57.0] * 8
    # Twice as slow, ending at 430 s: one more epoch of 114 s fits in 0.88 * 130 s, but a
    # count whose decay started before this step is never chosen...
    slower = replan_late(plan, elapsed_s=430.0, epochs_done=4, since_first_s=342.0, least=6)
    assert slower.epochs == 6 and slower.epoch_s == [57.0] + [114.0] * 5
    # ...and the count stays within the cap; each later plan is counted.
    faster = replan_late(again, elapsed_s=260.0, epochs_done=5, since_first_s=20.0, least=5)
    assert faster.epochs == 40 and faster.late["plans"] == 2
    assert faster.late["epochs_before"] == 8


@pytest.mark.parametrize(
    ("schedule", "warmup_epochs", "expected"),
    [("constant", 0.0, 429), ("onecycle", 1.0, 429), ("cosine", 2.0, 429), ("wsd", 0.0, 429),
     ("onecycle", 0.3, 129), ("cosine", 0.5, 214), ("onecycle", 0.0, None),
     ("cosine", 0.0, None)],
)  # fmt: skip
def test_the_count_is_planned_again_while_the_rates_ignore_the_total(
    schedule, warmup_epochs, expected
):
    config = resolve("hour", {"schedule": schedule, "warmup_epochs": warmup_epochs})
    assert replan_step(config, steps_per_epoch=429) == expected


@pytest.mark.parametrize(("preset", "budget_s", "epochs", "noted"), [
    ("hour", 410.0, 5, True),  # quick's own count
    ("hour", 480.0, 6, False),
    ("quick", 410.0, 5, False),  # quick's recipe is the one the note points to
])  # fmt: skip
def test_hour_says_when_so_few_epochs_fit_that_quick_did_better(preset, budget_s, epochs, noted):
    config = resolve(preset, {"time_budget": budget_s, "epochs": 40})
    plan = fit_epochs(config, SPEEDS, spent_s=30.0, **SIZES)
    assert plan.epochs == epochs and FEW_HOUR_EPOCHS == 5
    note = few_epochs_line(config, plan)
    assert (note is not None) == noted
    if noted:
        assert note.startswith("note: only 5 epochs of the hour preset's recipe fit")
        assert note.endswith("try --preset quick --time-budget 410s")


def _plans(config, sizes):
    return {
        size: fit_epochs(replace(config, {"image_size": size}), SPEEDS, spent_s=30.0, **SIZES)
        for size in sizes
    }


@pytest.mark.parametrize(("need", "chosen"), [(4, 128), (7, 128), (8, 96), (30, 96)])
def test_the_largest_size_that_fits_the_needed_epochs_is_chosen(need, chosen):
    # 455 s to spend (as above): 7 epochs of 57 s fit at 128 px, 14 of 32 s at 96 px
    config = resolve("quick", {"time_budget": 600.0, "epochs": 40})
    plans = _plans(config, [96, 128])
    assert (plans[96].epochs, plans[128].epochs) == (14, 7)
    assert choose_size(plans, need) == chosen  # none fits 30: the smallest


def test_the_choice_is_said_on_the_budget_line():
    config = resolve("quick", {"time_budget": 600.0, "epochs": 40})
    plans = _plans(config, [96, 128])
    plan = dataclasses.replace(plans[96], sizes={96: 14, 128: 7})
    line = budget_line(plan, 96, need=8)
    assert line.startswith(
        "time budget 600 s: 96 px chosen (the largest that fits 8 epochs; epochs that fit: "
        "14 at 96 px, 7 at 128 px); 14 epochs fit"
    )
    assert "(no size fits 20 epochs; epochs that fit" in budget_line(plan, 96, need=20)
    alone = dataclasses.replace(plans[96], sizes={96: 14})  # the rest never timed
    assert budget_line(alone, 96, need=20).startswith(
        "time budget 600 s: 96 px chosen (the smallest; it fits fewer than 20 epochs, so no "
        "larger size was timed; epochs that fit: 14 at 96 px); 14 epochs fit"
    )


def test_quick_chooses_its_size_unless_one_is_given():
    assert resolve("quick", {}).budget_sizes == "65,96,128"
    assert resolve("quick", {}).time_budget == 900.0
    assert resolve("quick", {"image_size": 96}).budget_sizes == ""
    assert resolve("quick", {"image_size": 96, "budget_sizes": "96,112"}).budget_sizes == "96,112"
    assert resolve("hour", {}).budget_sizes == ""
    assert resolve("quick", {"arch": "alexnet-d2l"}).budget_sizes == "65,96,128"  # all archs
    assert budget_sizes(resolve("quick", {"budget_sizes": " 128, 64 ,96"})) == [64, 96, 128]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"budget_sizes": "64,abc"}, "expected resolutions in px separated by commas"),
        ({"budget_sizes": "32,64"}, "--budget-sizes 32 is too small"),
        ({"budget_sizes": "64", "start_size": 64, "start_epochs": 1}, "cannot be combined"),
        ({"budget_epochs": 0}, "--budget-epochs must be > 0"),
    ],
)
def test_budget_sizes_are_checked(overrides, message):
    with pytest.raises(FmnistError, match=message):
        resolve("quick", overrides)
