"""The CLI end to end: user errors are one line and exit 2; train, evaluate, Ctrl-C."""

import argparse
import contextlib
import dataclasses
import importlib.metadata
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TINY_ARCH, TINY_ARGS, TINY_CLI, write_dataset

from fmnist_alexnet.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fmnist_alexnet.cli import build_parser, main, preset_defaults
from fmnist_alexnet.config import GROUPS, TrainConfig
from fmnist_alexnet.data import CLASS_NAMES, sources
from fmnist_alexnet.model import build_model
from fmnist_alexnet.spec import ModelSpec


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(capsys, argv, pattern):
    try:
        code, out, err = run_cli(capsys, *argv)
    except SystemExit as exc:  # argparse
        code, err = exc.code, capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fmnist-alexnet: error: ")
    assert "Traceback" not in err
    assert pattern in lines[0], lines[0]


@pytest.fixture
def broken_data(tmp_path):
    folder = write_dataset(tmp_path / "data")
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    return folder


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["train", "--epochs", "0"], "--epochs must be > 0"),
        (["train", "--lr", "-1"], "--lr must be > 0"),
        (["train", "--image-size", "62"], "the minimum is 63 px"),
        (["train", "--arch", "alexnet-paper", "--image-size", "64"], "the minimum is 65 px"),
        (["train", "--start-size", "32", "--start-epochs", "1"], "--start-size 32 is too small"),
        (["train", "--start-size", "96", "--start-epochs", "4", "--epochs", "4"], "below --epochs"),
        (["train", "--start-epochs", "1"], "needs --start-size"),
        (["train", "--erase", "1.5"], "--erase must be a probability"),
        (["train", "--ema", "1"], "--ema must be a decay in [0, 1)"),
        (["train", "--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1)"),
        (["train", "--translate", "20"], "--translate must be at most 14"),
        (["train", "--zoom", "0.7"], "--zoom must be a fraction in [0, 0.5]"),
        (["train", "--rotate", "-5"], "--rotate must be in [0, 180] degrees"),
        (["train", "--val-size", "60000"], "--val-size must be below 60000"),
        (["train", "--preset", "fastest"], "invalid choice: 'fastest'"),
        (["train", "--batch-size", "many"], "expected a whole number, got 'many'"),
        (["train", "--time-budget", "1x"], "expected a duration such as 90s, 15m, 1h"),
        (["train", "--resume", "auto"], "--resume auto needs --out DIR"),
        (["train", "--resume", "/nonexistent/last.pt"], "checkpoint not found"),
        (["evaluate", "/nonexistent/best.pt"], "checkpoint not found"),
        (["evaluate", "x.pt", "--split", "train"], "invalid choice: 'train'"),
        (["evaluate", "x.pt", "--tta", "rotate"], "invalid choice: 'rotate'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(capsys, argv, pattern):
    assert_user_error(capsys, argv, pattern)


def test_no_data_found_names_the_fix(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setattr(sources, "TORCHVISION_ROOT", tmp_path / "none")
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    assert_user_error(capsys, ["data", "info"], "apt-get install dataset-fashion-mnist")
    assert_user_error(
        capsys, ["train", "--out", str(tmp_path / "r")], "fmnist-alexnet data download --to DIR"
    )


def test_empty_env_dir(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path))
    assert_user_error(capsys, ["data", "info"], "$FMNIST_DATA")


def test_corrupt_file(capsys, broken_data, tmp_path):
    argv = ["train", "--data-dir", str(broken_data), "--out", str(tmp_path / "r"), *TINY_ARGS]
    assert_user_error(capsys, argv, "train-images-idx3-ubyte.gz: truncated gzip data")


def test_checksum_mismatch(capsys, tmp_path):
    folder = write_dataset(tmp_path / "data")
    assert_user_error(capsys, ["data", "info", "--data-dir", str(folder)], "checksum mismatch")


def test_files_that_are_not_the_published_dataset_are_said_so_everywhere(capsys, tmp_path):
    """Train, evaluate and the model card name synthetic files as not the published ones,
    and the card does not call their test set the official one."""
    folder = write_dataset(tmp_path / "data", n_train=96, n_test=20)
    run = tmp_path / "r"
    argv = ["train", "--data-dir", str(folder), "--out", str(run), "--image-size", "63"]
    argv += ["--val-size", "32", "--batch-size", "32", "--epochs", "1", "--precision", "fp32"]
    argv += ["--arch", TINY_ARCH, "--time-budget", "0"]
    assert main([*argv, "--device", "cpu", "--no-progress", "--no-tensorboard"]) == 0
    warning = f"warning: the files in {folder} are not the published Fashion-MNIST"
    assert capsys.readouterr().out.count(warning) == 1
    assert json.loads((run / "config.json").read_text())["runtime"]["data_published"] is False
    assert main(["evaluate", str(run), "--data-dir", str(folder), "--device", "cpu"]) == 0
    assert capsys.readouterr().err.startswith(warning)
    card = (run / "report.md").read_text()  # train wrote the report, on the run's data dir
    assert "**not the published Fashion-MNIST**" in card
    assert "20 test images that are **not the published test set**" in card
    assert "official" not in card


def test_a_time_budget_too_short_for_one_epoch_says_so(capsys, tmp_path):
    argv = ["train", "--out", str(tmp_path / "r"), *TINY_ARGS, "--time-budget", "1s"]
    assert_user_error(capsys, argv, "--time-budget 1s fits no epoch on this machine")


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_user_error(capsys, ["train", "--out", str(blocker / "run"), *TINY_ARGS], "cannot write")
    assert blocker.read_text() == "not a folder"


def test_download_to_unwritable_place(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["data", "download", "--to", str(blocker / "d"), "--mirror", "http://127.0.0.1:9/"]
    assert_user_error(capsys, argv, "cannot create folder")


def test_checkpoint_of_another_architecture(capsys, tmp_path):
    config = TrainConfig(arch="alexnet-paper")
    weights = build_model("alexnet").state_dict()
    checkpoint = Checkpoint(spec=ModelSpec.from_config(config), config=config, model=weights)
    path = save_checkpoint(tmp_path / "x.pt", checkpoint)
    assert_user_error(capsys, ["evaluate", str(path)], "do not fit architecture")


def test_data_info_on_real_data(capsys, real_data):
    code, out, _ = run_cli(capsys, "data", "info")
    assert code == 0
    assert out.count("sha256 ok") == 4 and "train: 60000 images, test: 10000 images" in out


@pytest.fixture(scope="module")
def cli_run(module_tmp):
    out = module_tmp / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", "--no-report", *TINY_ARGS]) == 0
    return out


# The first 1,000 real test images: the whole 10,000 would triple the test's time.
# That the default is the whole test file is checked on a small dataset below, and that the
# real files are complete by their checksums (test_data_info_on_real_data).
EVAL_N = 1000


@pytest.fixture(scope="module")
def plain_evaluation(cli_run):
    """``evaluate --json`` of the run's best.pt on the first EVAL_N test images, run once."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            ["evaluate", str(cli_run / "checkpoints" / "best.pt"), "--json"]
            + ["--limit-eval", str(EVAL_N)]
        )
    assert code == 0
    return json.loads(stdout.getvalue())


def test_train_then_evaluate_json(plain_evaluation, cli_run, real_data):
    result = plain_evaluation
    keys = {"split", "tta", "n", "accuracy", "loss", "per_class", "confusion_matrix"}
    assert set(result) == keys | {"data_published", "calibration"}
    # training fitted the temperature on its validation split; the test figures use it
    fitted = load_checkpoint(cli_run / "checkpoints" / "best.pt").spec.temperature
    assert result["calibration"]["temperature"] == pytest.approx(fitted) and fitted != 1.0
    assert result["split"] == "test" and result["tta"] == "none" and result["n"] == EVAL_N
    assert result["data_published"] is True  # the real files
    matrix = torch.tensor(result["confusion_matrix"])
    assert matrix.shape == (10, 10) and int(matrix.sum()) == EVAL_N
    _, labels = sources.load_split(real_data, "test")
    per_class = np.bincount(labels[:EVAL_N], minlength=10)
    assert matrix.sum(1).tolist() == per_class.tolist()  # rows are the true classes
    assert result["accuracy"] == pytest.approx(float(matrix.trace()) / EVAL_N)
    assert list(result["per_class"]) == list(CLASS_NAMES)
    for i, name in enumerate(CLASS_NAMES):
        assert result["per_class"][name] == pytest.approx(matrix[i, i].item() / per_class[i])


def test_evaluate_val_split_text(capsys, cli_run):
    code, out, _ = run_cli(
        capsys,
        "evaluate",
        str(cli_run / "checkpoints" / "last.pt"),
        "--split",
        "val",
        "--limit-eval",
        "500",
    )
    assert code == 0
    assert out.startswith("val accuracy ") and "on 500 images" in out and "Ankle boot" in out


def test_evaluate_with_flip_tta_says_so(capsys, cli_run, plain_evaluation, tmp_path):
    best = str(cli_run / "checkpoints" / "best.pt")
    code, out, err = run_cli(
        capsys, "evaluate", best, "--tta", "flip", "--limit-eval", str(EVAL_N), "--json"
    )
    assert code == 0, err
    tta = json.loads(out)
    assert tta["tta"] == "flip" and tta["n"] == EVAL_N
    assert int(torch.tensor(tta["confusion_matrix"]).trace()) / EVAL_N == tta["accuracy"]
    assert tta["loss"] != plain_evaluation["loss"]  # the same images, another evaluation
    small = write_dataset(tmp_path / "small")  # the text form, on 20 synthetic test images
    code, out, _ = run_cli(capsys, "evaluate", best, "--tta", "flip", "--data-dir", str(small))
    assert out.startswith("test accuracy with flip test-time augmentation ")
    assert "on 20 images" in out


def test_real_process_error_has_no_traceback(tmp_path):
    env = {**os.environ, "FMNIST_DATA": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "fmnist_alexnet", "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_ctrl_c_saves_last_checkpoint_and_prints_resume_command(tmp_path):
    out = tmp_path / "run"
    argv = [*TINY_CLI, "train", "--out", str(out), *TINY_ARGS, "--epochs", "1"]
    argv += ["--limit-train", "50000", "--image-size", "224"]  # a 1,562-step epoch
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("training tiny")
    time.sleep(4)  # well inside the epoch
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"resume with: fmnist-alexnet train --resume {out}/checkpoints/last.pt" in stderr
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["step"] < 1562


def test_every_config_field_is_a_train_flag_whose_help_states_the_true_default(capsys):
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "preset"]
    assert all(f.metadata["help"] and f.metadata["group"] in GROUPS for f in fields)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    printed = capsys.readouterr().out
    help_text = " ".join(printed.split())
    for field in fields:
        assert "--" + field.name.replace("_", "-") in help_text, field.name
    # the flags come in groups, in GROUPS' order, each flag under its field's group
    headings = [line[:-1] for line in printed.splitlines() if line[:-1] in GROUPS]
    assert headings == list(GROUPS)
    sections = re.split(r"^(" + "|".join(GROUPS) + "):$", printed, flags=re.M)
    by_group = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert "--lr " in by_group["optimisation"] and "--erase " in by_group["augmentation"]
    assert "--time-budget " in by_group["schedule and time budget"]
    assert "--resume " in by_group["run control"] and "--no-report" in by_group["output"]
    assert (
        preset_defaults("image_size")
        == "default by preset: seed 224, d2l 224, quick 128, hour 160, best 224"
    )
    assert "(default by preset: seed 224, d2l 224, quick 128, hour 160, best 224)" in help_text
    assert preset_defaults("ema") == "default 0.0"


def parsers(parser, path=()):
    """Every parser of the CLI with the words that reach it: the top one, commands, actions."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def test_every_argument_of_every_command_says_what_it_is():
    missing = [
        " ".join((*path, action.dest))
        for path, parser in parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []
    commands = [path for path, _ in parsers(build_parser()) if len(path) == 1]
    assert len(commands) == 10  # train ... tune, so the walk above did reach them


def test_normalisation_flags_reach_the_config(capsys):
    from fmnist_alexnet.train.start import plan_run

    args = build_parser().parse_args(["train", "--mean", "0", "--std", "1", "--out", "x"])
    config, _ = plan_run(None, {"mean": args.mean, "std": args.std, "out": args.out}, None)
    assert (config.mean, config.std) == (0.0, 1.0)
    assert_user_error(capsys, ["train", "--std", "0"], "--std must be > 0")


def test_a_closed_pipe_ends_quietly(real_data):
    """`fmnist-alexnet data info | head -1`: no BrokenPipeError traceback, status 141."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist_alexnet", "data", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    process.stdout.readline()
    process.stdout.close()  # as `head -1` does once it has its line
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and err == "", err


def test_version_names_the_installed_package_and_torch(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    installed = importlib.metadata.version("fmnist-alexnet")  # pyproject's, as installed
    python = ".".join(map(str, sys.version_info[:3]))
    assert capsys.readouterr().out == (
        f"fmnist-alexnet {installed} (torch {torch.__version__}, Python {python})\n"
    )


def test_the_suites_small_network_is_not_offered_to_users():
    """Only a process that imports tests/tinynet.py knows the suite's network."""
    argv = [sys.executable, "-m", "fmnist_alexnet", "train", "--arch", TINY_ARCH]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"invalid choice: '{TINY_ARCH}'" in proc.stderr
