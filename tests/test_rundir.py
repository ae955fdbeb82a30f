"""The run folder: one training at a time (an OS lock no killed run leaves behind), and
`--resume auto` that starts the run when there is nothing to resume yet."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import TINY_ARGS

from fmnist_alexnet.cli import main
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.plan import plan_run
from fmnist_alexnet.rundir import RunDir


def test_a_second_training_into_a_locked_folder_is_refused_in_one_line(tmp_path, capsys):
    holder = RunDir(tmp_path / "run")
    holder.prepare()
    try:
        code = main(["train", "--out", str(tmp_path / "run"), *TINY_ARGS, "--no-report"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "is in use by another training (pid " + str(os.getpid()) in err
        with pytest.raises(FmnistError, match="choose another --out"):
            RunDir(tmp_path / "run").prepare()
    finally:
        holder.release()
    with RunDir(tmp_path / "run"):  # free again once released
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (
        "import sys, time; from fmnist_alexnet.rundir import RunDir; "
        f"run = RunDir({str(tmp_path / 'run')!r}); run.prepare(); print('locked', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FmnistError, match="in use by another training"):
            RunDir(tmp_path / "run").prepare()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with RunDir(tmp_path / "run"):
        pass


def test_resume_auto_with_no_checkpoint_yet_plans_a_new_run_there(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # a run killed in its 1st epoch
    config, resume = plan_run("seed", {"out": str(tmp_path / "run"), "epochs": 2}, "auto")
    assert resume is None
    assert (config.preset, config.out, config.epochs) == ("seed", str(tmp_path / "run"), 2)
