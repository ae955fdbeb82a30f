"""Beyond one torchrun agent, on this one machine over loopback: two agents as two nodes of one
job (c10d rendezvous), and an elastic restart after a worker is killed mid-epoch. The small
network keeps each run to seconds; its float32 CPU steps are bit-exact."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tinynet
import torch
from conftest import SAME_BATCHES, TINY_ARGS, assert_same_weights, free_port

TORCHRUN = Path(sys.executable).parent / "torchrun"
TINY_SCRIPT = tinynet.__file__  # `python -m fmnist_alexnet` that also knows the small network
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun beside this Python")
DETERMINISTIC = [*TINY_ARGS, *SAME_BATCHES, "--lr", "0.05", "--no-report"]
LIMIT = 30  # seconds any one run may take


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def train_single(out: Path, *args: str) -> None:
    command = [sys.executable, TINY_SCRIPT, "train", "--out", str(out), *DETERMINISTIC, *args]
    proc = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


# Every run here trains this: 3 epochs of 2,048 images, 64 steps of 32 each
ARGS = ["--epochs", "3", "--limit-train", "2048", "--resume", "auto"]


@pytest.fixture(scope="module")
def two_nodes(module_tmp):
    """Two torchrun agents as the two nodes of one job (c10d rendezvous on 127.0.0.1), one
    Gloo process each; and its seconds with the processes' starts."""
    endpoint = f"127.0.0.1:{free_port()}"
    agents = []
    started = time.perf_counter()
    for node_rank in (0, 1):
        command = [
            *(str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1"),
            *("--node-rank", str(node_rank), "--rdzv-backend", "c10d"),
            *("--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes"),
            *(TINY_SCRIPT, "train", "--out", str(module_tmp / "two-nodes"), *DETERMINISTIC),
            *ARGS,
        ]
        agents.append(
            subprocess.Popen(
                command,
                env=environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [agent.communicate(timeout=2 * LIMIT) for agent in agents]
    for agent, (_, err) in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, err[-3000:]
    return module_tmp / "two-nodes", time.perf_counter() - started


def test_two_agents_as_two_nodes_end_with_the_weights_of_one_process(two_nodes, tmp_path):
    run, two_nodes_s = two_nodes
    started = time.perf_counter()
    train_single(tmp_path / "single", *ARGS)
    single_s = time.perf_counter() - started
    config = json.loads((run / "config.json").read_text())
    assert config["runtime"]["world_size"] == 2
    single, double = weights(tmp_path / "single"), weights(run)
    worst = max((double[k] - single[k]).abs().max().item() for k in single)
    assert worst < 1e-6, worst
    rows = {
        name: [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        for name, folder in (("single", tmp_path / "single"), ("two-nodes", run))
    }
    assert [r["val_acc"] for r in rows["two-nodes"]] == [r["val_acc"] for r in rows["single"]]
    assert rows["single"][-1]["train_loss"] < rows["single"][0]["train_loss"]  # it learned
    speeds = {name: [round(r["images_per_sec"]) for r in rows[name]] for name in rows}
    print(f"one process {single_s:.1f} s, two nodes {two_nodes_s:.1f} s (with process starts);")
    print(f"train img/s per epoch: {speeds}")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (torchrun's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_interrupted(two_nodes, tmp_path):
    """The uninterrupted run is the two-node job: the same two ranks of 16 images a step."""
    elastic = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    out = tmp_path / "killed"
    agent = subprocess.Popen(
        [*elastic, TINY_SCRIPT, "train", "--out", str(out), *DETERMINISTIC, *ARGS],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + LIMIT
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert agent.poll() is None and time.monotonic() < deadline, "epoch 1 never ended"
        time.sleep(0.01)
    workers = sorted(children(agent.pid))
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)  # epoch 2 is under way
    rows_at_kill = metrics.read_text().count("\n")
    _, err = agent.communicate(timeout=2 * LIMIT)
    assert agent.returncode == 0, err[-6000:]
    assert rows_at_kill == 1  # killed in epoch 2, before its row
    # torchrun's agent restarted the group, which resumed from epoch 1's last.pt
    resumed = json.loads((out / "config.json").read_text())["runtime"]["resumed"]
    assert resumed["epoch"] == 1 and resumed["changed"] == {}
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert_same_weights(weights(out), weights(two_nodes[0]))
