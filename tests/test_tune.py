"""tune: Optuna trials are ordinary runs; the median pruner stops weak ones after an epoch;
the study resumes from its database; the best trial is tested once."""

import json

import pytest
from conftest import TUNE_ARGS

from fmnist_alexnet.cli import main
from fmnist_alexnet.recipe import read_recipe
from fmnist_alexnet.train.start import plan_run
from fmnist_alexnet.tune.space import DEFAULT_SPACE, check_space, read_space

# The seed is searched: on 128 images at 63 px the trials differ by their seed alone, which
# gives the median pruner different epoch-1 validation accuracies to compare (the optuna
# version and the sampler seed are pinned, and CPU fp32 training is deterministic).
SPACE = '[seed]\ntype = "int"\nlow = 0\nhigh = 10000\n'
PRUNE_EARLY = ["--prune-startup", "1", "--prune-warmup", "0", "--startup-trials", "1"]


def tune_args(out, space, trials):
    fixed = [*TUNE_ARGS, "--limit-train", "128", "--limit-eval", "200", "--epochs", "2"]
    return ["tune", "--out", str(out), "--space", str(space), "--trials", str(trials)] + [
        *fixed,
        *PRUNE_EARLY,
        "--sampler-seed",
        "0",
        "--no-tensorboard",
    ]


@pytest.mark.slow
def test_tune_prunes_reports_tests_once_and_resumes(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "tune"
    assert main(tune_args(out, space, 3)) == 0
    printed = capsys.readouterr().out
    assert "trial 0 is the quick preset's own recipe (the baseline)" in printed
    summary = json.loads((out / "tune_summary.json").read_text())
    assert sum(summary["trials"].values()) == 3
    assert summary["trials"]["pruned"] >= 1, printed
    for trial in (out / "trials").iterdir():  # ordinary run folders, never tested
        assert (trial / "checkpoints" / "best.pt").is_file()
        assert not (trial / "test_metrics.json").exists()
    pruned = [
        [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
        for trial in (out / "trials").iterdir()
    ]
    assert any(len(rows) == 1 and rows[0]["stop"].startswith("pruned") for rows in pruned)

    best = summary["best"]
    assert best["test_n"] == 200 and 0 <= best["test_acc"] <= 1
    assert best["command"].startswith("fmnist-alexnet train --preset quick")
    report = (out / "tune_report.md").read_text()
    assert f"**Best: trial {best['trial']}**" in report and "| 0 (baseline) |" in report
    assert (out / "optimization_history.png").stat().st_size > 1000
    # The best recipe reruns the best trial's exact config (in a folder of its own).
    trial_config = json.loads((tmp_path / best["run"] / "config.json").read_text())
    rerun, _ = plan_run(None, {}, None, read_recipe(out / "best_recipe.toml"))
    not_recipe = {"out": None, "progress": None, "runtime": None}
    assert rerun.to_dict() | not_recipe == trial_config | not_recipe

    # The same command adds trials to the study; other fixed settings are refused.
    assert main(tune_args(out, space, 1)) == 0
    assert sum(json.loads((out / "tune_summary.json").read_text())["trials"].values()) == 4
    capsys.readouterr()
    assert main([*tune_args(out, space, 1), "--lr", "0.01"]) == 2
    assert "was run with another fixed" in capsys.readouterr().err


def test_a_trial_that_cannot_run_fails_in_one_line_and_the_study_goes_on(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text(
        '[image_size]\ntype = "categorical"\nchoices = [64]\n'
        '[dropout]\ntype = "float"\nlow = 0.0\nhigh = 0.6\n'
    )
    argv = ["tune", "--out", str(tmp_path / "t"), "--space", str(space), "--trials", "2"]
    argv += ["--dropout", "0.5"]  # a flag fixes a setting the space would search
    assert main([*argv, "--arch", "alexnet-paper", "--device", "cpu", "--no-tensorboard"]) == 1
    out = capsys.readouterr().out
    assert "fixed by flags, not searched: dropout" in out
    assert out.count("failed: --image-size 64 is too small") == 2, out
    assert "Traceback" not in out and "no trial completed" in out
    assert "Trial 1 failed: --image-size 64" in (tmp_path / "t" / "tune_report.md").read_text()


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('[lr]\ntype = "float"\nlow = "a"\nhigh = 1', "[lr] low = 'a' should be a finite number"),
        ('[lr]\ntype = "float"\nlow = 0\nhigh = 1\nlog = true', "log = true needs low > 0"),
        ('[lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-3\nsteps = 3', "has no key 'steps'"),
        ('[lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-3\nlog = "yes"', "should be true or false"),
        ('[lr]\ntype = "categorical"\nchoices = ["a"]', "choice 'a' should be a finite number"),
        ('[image_size]\ntype = "categorical"\nchoices = []', "should be a non-empty list"),
        ('[epochs]\ntype = "float"\nlow = 1\nhigh = 4', 'takes a whole number: use type = "int"'),
        ('[flip]\ntype = "int"\nlow = 0\nhigh = 1', 'use type = "categorical"'),
        ('[arch]\ntype = "categorical"\nchoices = ["alexnet", 3]', "choice 3 should be a string"),
    ],
)
def test_a_space_that_cannot_work_is_one_line_before_any_trial(tmp_path, capsys, table, says):
    """Each was an Optuna or TypeError traceback, or an option silently ignored."""
    space = tmp_path / "space.toml"
    space.write_text(table + "\n")
    assert main(["tune", "--out", str(tmp_path / "t"), "--space", str(space)]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()  # refused before the study was created


def test_the_default_space_and_a_good_file_pass_the_check(tmp_path):
    check_space(DEFAULT_SPACE, "default")
    good = tmp_path / "space.toml"
    good.write_text(SPACE + '[flip]\ntype = "categorical"\nchoices = [true, false]\n')
    assert read_space(good)["flip"]["choices"] == [True, False]
