"""One tuning study, several workers: on a real PostgreSQL (a throwaway cluster on loopback)
and on a journal file. Together the workers run exactly --study-trials trials, each with
its own parameters, and both write the same best recipe; a worker killed mid-trial leaves a
trial that the other fails and runs again."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import TINY_CLI, TUNE_ARGS, free_port

optuna = pytest.importorskip("optuna")
from fmnist_alexnet.tune.quota import counted  # noqa: E402

SPACE = '[seed]\ntype = "int"\nlow = 0\nhigh = 1000000\n'
LIMIT = 120  # seconds a worker may take


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A throwaway cluster: initdb into a temporary folder as an unprivileged user (nobody,
    when the suite runs as root), listening on 127.0.0.1 only, stopped and removed after."""
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver (the tune-db extra)")
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server (make test installs Debian's postgresql as root)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "nobody", "--"]
        shutil.chown(folder, "nobody")
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=60)

    try:
        pg(str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "optuna", "--auth=trust")
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder}"
        pg(str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-o", options,
           "-l", str(folder / "log"), "-w", "start")  # fmt: skip
        yield f"postgresql+psycopg2://optuna@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [
                *as_user,
                str(bindir / "pg_ctl"),
                "-D",
                str(folder / "data"),
                "-m",
                "immediate",
                "stop",
            ],  # fmt: skip
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


def worker(storage: str, study: str, out: Path, space: Path, trials: int, *extra: str):
    command = [
        *TINY_CLI, "tune", "--storage", storage, "--study", study, "--out", str(out),
        "--space", str(space), "--study-trials", str(trials), "--heartbeat", "1",
        *TUNE_ARGS, "--limit-train", "256", "--limit-eval", "100", "--epochs", "1",
        "--startup-trials", "2", "--no-tensorboard", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc) -> str:
    out, err = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 0, (out[-2000:], err[-2000:])
    return out


def check_study(storage: str, name: str, trials: int, outs: list[Path]) -> list:
    study = optuna.load_study(study_name=name, storage=storage)
    done = counted(study.trials)
    states = {t.state.name for t in done}
    assert len(done) == trials and states <= {"COMPLETE", "PRUNED"}, [
        (t.number, t.state.name, t.user_attrs) for t in study.trials
    ]
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == trials  # nothing ran twice
    recipes = {
        "\n".join(
            line
            for line in (out / "best_recipe.toml").read_text().splitlines()
            if not line.startswith("# rerun:")  # the command names the file itself
        )
        for out in outs
    }
    assert len(recipes) == 1  # both workers recommend the same trial
    return study.trials


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    return path


def test_two_workers_share_a_study_in_postgresql(postgres, space, tmp_path):
    workers = [worker(postgres, "two-workers", tmp_path / n, space, 6) for n in ("a", "b")]
    outputs = [finish(w) for w in workers]
    trials = check_study(postgres, "two-workers", 6, [tmp_path / "a", tmp_path / "b"])
    mine = {t.user_attrs["out"].split("/")[-3] for t in counted(trials)}
    assert mine == {"a", "b"}  # both workers ran trials
    assert any("trial 0 is the quick preset's own recipe" in output for output in outputs)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_killed_worker_s_trial_is_failed_and_run_again(postgres, space, tmp_path):
    slow = ["--limit-train", "2048", "--epochs", "2"]  # trials long enough to be killed in
    a = worker(postgres, "killed", tmp_path / "a", space, 4, *slow)
    time.sleep(1)
    b = worker(postgres, "killed", tmp_path / "b", space, 4, *slow)
    deadline = time.monotonic() + LIMIT
    victim = None
    while victim is None:
        assert time.monotonic() < deadline and a.poll() is None, "worker a never ran a trial"
        try:
            study = optuna.load_study(study_name="killed", storage=postgres)
            victim = next(
                (t for t in study.trials if t.state.name == "RUNNING"
                 and "/a/" in t.user_attrs.get("out", "")), None,
            )  # fmt: skip
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.2)
    a.send_signal(signal.SIGKILL)
    killed_at = time.time()
    a.communicate(timeout=30)
    finish(b)
    trials = check_study(postgres, "killed", 4, [tmp_path / "b"])
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state.name == "FAIL"
    retry = next(
        t for t in trials
        if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number
    )  # fmt: skip
    assert retry.params == victim.params and retry.state.name in ("COMPLETE", "PRUNED")
    waited = retry.datetime_start.timestamp() - killed_at
    print(
        f"the killed trial {victim.number} ran again as trial {retry.number} {waited:.1f} s later"
    )


def test_two_workers_share_a_journal_file(space, tmp_path):
    storage = f"journal:{tmp_path / 'study.log'}"
    workers = [worker(storage, "journal", tmp_path / n, space, 4) for n in ("a", "b")]
    for w in workers:
        finish(w)
    check_study(
        optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))
        ),
        "journal",
        4,
        [tmp_path / "a", tmp_path / "b"],
    )


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path, capsys):
    from fmnist_alexnet.cli import main

    port = free_port()  # nothing listens there
    argv = ["tune", "--storage", f"postgresql+psycopg2://x@127.0.0.1:{port}/db", *TUNE_ARGS]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open it" in err
