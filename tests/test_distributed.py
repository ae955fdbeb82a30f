"""torchrun/DDP on the CPU with Gloo: same weights as one process, one metrics file."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import SAME_BATCHES, TINY_ARGS

from fmnist_alexnet.checkpoint import load_model
from fmnist_alexnet.config import resolve
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import build_model
from fmnist_alexnet.runtime import Distributed
from fmnist_alexnet.train.data import load_data

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
DETERMINISTIC = [
    *TINY_ARGS[2:],  # DDP's weights are checked on the real network, not the small one
    *SAME_BATCHES,
    "--lr",
    "0.01",
    "--warmup-epochs",
    "0.5",
    "--epochs",
    "2",
    "--limit-train",
    "128",
    "--no-report",
]
# Only the two-rank run is budgeted. The probe, its checkpoint write and the plan made
# again where the warm-up ends (step 2 of 4, mid-epoch) run on every rank: they must agree,
# or the ranks' collectives would hang, and change no draw, or the weights would differ
# from the unbudgeted single process's.
BUDGET = ["--time-budget", "1h"]


def run(argv, env_extra=None, nproc=None):
    # faulthandler: should a rank ever abort (SIGABRT), its Python stack lands in the assertion.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **(env_extra or {})}
    if nproc:
        command = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "fmnist_alexnet"]
    else:
        command = [sys.executable, "-m", "fmnist_alexnet"]
    proc = subprocess.run(command + argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(module_tmp):
    root = module_tmp
    single = run(["train", "--out", str(root / "single"), *DETERMINISTIC])
    double = run(["train", "--out", str(root / "ddp"), *DETERMINISTIC, *BUDGET], nproc=2)
    return root, single, double


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed beside this Python")
def test_two_gloo_ranks_end_with_the_weights_of_one_process(runs):
    root, _, _ = runs
    single = torch.load(root / "single/checkpoints/last.pt", weights_only=True)
    double = torch.load(root / "ddp/checkpoints/last.pt", weights_only=True)
    assert double["config"]["batch_size"] == 32 and double["step"] == single["step"] == 8
    assert set(double["model"]) == set(single["model"])  # no "module." prefix
    worst = max(
        (double["model"][k] - single["model"][k]).abs().max().item() for k in single["model"]
    )
    assert worst < 1e-5, worst
    # ...and the weights really moved, so agreeing is not trivial.
    torch.manual_seed(0)
    init = build_model("alexnet", 10, 0.0).state_dict()
    moved = max((single["model"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 100 * worst and moved > 1e-3, moved
    # A checkpoint of the DDP run loads into a plain single-process model.
    path = root / "ddp/checkpoints/best.pt"
    model = load_model(path, "cpu").model
    assert torch.equal(
        model.features[0].weight, torch.load(path, weights_only=True)["model"]["features.0.weight"]
    )


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed beside this Python")
def test_only_rank_zero_writes_one_metrics_line_per_epoch(runs):
    root, single, double = runs
    rows = [json.loads(x) for x in (root / "ddp/metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    config = json.loads((root / "ddp/config.json").read_text())
    assert config["runtime"]["world_size"] == 2
    replanned = config["runtime"]["time_budget"]["replanned"]
    assert config["epochs"] == replanned["epochs_before"] == 2 and replanned["steps"] == 2
    assert double.stdout.count("time budget: the first 2 steps (the warm-up) took") == 1
    # Validation and test metrics are all-reduced: they equal the single process's.
    single_rows = [json.loads(x) for x in (root / "single/metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in single_rows]
    assert double.stdout.count("test accuracy") == 1
    # rank 0 alone fits best.pt's temperature and threshold, on the (--limit-eval) split
    assert double.stdout.count("calibrated best.pt on 64 validation images") == 1


def test_keeping_the_last_partial_batch_is_refused_across_processes(real_data):
    config = resolve("d2l", {"data_dir": str(real_data.directory)})
    assert not config.drop_last
    with pytest.raises(FmnistError, match="--no-drop-last needs one process"):
        load_data(config, torch.device("cpu"), Distributed(rank=0, world_size=2))
    assert load_data(config, torch.device("cpu"), Distributed()).steps_per_epoch == 469
