"""The run folder: one training at a time (an OS lock no killed run leaves behind), and
`--resume auto` that starts the run when there is nothing to resume yet."""

import errno
import os
import signal
import subprocess
import sys

import pytest
from conftest import TINY_ARGS

from fmnist_alexnet.cli import main
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.train.rundir import RunDir
from fmnist_alexnet.train.start import plan_run


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
        "import sys, time; from fmnist_alexnet.train.rundir import RunDir; "
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


def test_temp_files_a_killed_write_left_are_removed_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    left = [run / ".config.json.k2j3.tmp", run / "checkpoints" / ".last.pt.abc.tmp",
            run / "checkpoints" / ".best.pt.link.tmp"]  # fmt: skip
    for path in left:
        path.write_bytes(b"half")
    (run / "checkpoints" / "last.pt").write_bytes(b"whole")
    with RunDir(run) as folder:
        assert sorted(folder.removed_temp) == sorted(left)
    assert not any(path.exists() for path in left)
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"whole"


def test_a_torn_metrics_line_is_dropped_and_a_failed_append_leaves_none(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    run.prepare()
    run.append_metrics({"epoch": 1, "val_acc": 0.5})
    with open(run.metrics, "a") as handle:  # a process killed inside its append
        handle.write('{"epoch": 2, "val_')
    assert run.read_metrics() == [{"epoch": 1, "val_acc": 0.5}]
    run.truncate_metrics(after_epoch=1)
    before = run.metrics.read_bytes()

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    real_write = os.write
    monkeypatch.setattr("fmnist_alexnet.train.rundir.os.write", half_then_full)
    with pytest.raises(FmnistError, match="metrics.jsonl: cannot write .*the disk is full"):
        run.append_metrics({"epoch": 2, "val_acc": 0.6})
    monkeypatch.undo()
    assert run.metrics.read_bytes() == before
    run.release()


def test_a_run_refused_before_writing_anything_leaves_no_folder(tmp_path, capsys):
    """Bad input found after the folder was made (here: fewer images than one batch)."""
    too_few = [*TINY_ARGS, "--limit-train", "16", "--no-tensorboard"]
    new = tmp_path / "runs" / "new"
    assert main(["train", "--out", str(new), *too_few]) == 2
    assert "larger than the 16 training images" in capsys.readouterr().err
    assert not new.exists() and new.parent.is_dir()
    existing = tmp_path / "mine"
    existing.mkdir()
    assert main(["train", "--out", str(existing), *too_few]) == 2
    assert existing.is_dir()  # a folder the user made is never removed
