"""Shared fixtures and helpers: small real training runs, weight comparisons, IDX writers."""

import gzip
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from tinynet import NAME as TINY_ARCH

from fmnist_alexnet.checkpoint import load_checkpoint
from fmnist_alexnet.config import resolve
from fmnist_alexnet.data.sources import find_data
from fmnist_alexnet.train import train

# The command line with the suite's small network known, for tests that run it as a child.
TINY_CLI = [sys.executable, str(Path(__file__).with_name("tinynet.py"))]

# The fuzz tests' examples are the same on every run (a red CI run can be rerun as it was);
# `pytest --hypothesis-profile explore` draws new ones.
settings.register_profile(
    "suite",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("explore", deadline=None, database=None)
settings.load_profile("suite")


def pytest_configure(config):
    """Workers share the cores; test folders go to RAM (/dev/shm) when it has room and no
    --basetemp is given.

    Every checkpoint of this network is hundreds of MB and written with fsync, and the suite
    writes dozens: RAM spares the disk's fsyncs. The code paths are the same (temp file,
    fsync, rename).
    """
    _share_the_cores(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    shm = Path("/dev/shm")
    if config.option.basetemp or not shm.is_dir() or not os.access(shm, os.W_OK):
        return
    if shutil.disk_usage(shm).free > 8 * 2**30:
        config.option.basetemp = str(shm / f"fmnist-alexnet-tests-{os.getuid()}")


def _share_the_cores(workers: int) -> None:
    """Under pytest-xdist (make test runs two workers) each worker, and every process it
    starts, gets its share of the cores, so that no thread waits on another worker's."""
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        threads = max(1, (cores or os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# A tiny real run through the CLI (train and tune): the small network on 63 px, 256 real
# images, batches of 32, fp32 (bit-exact on CPU).
TUNE_ARGS = [
    "--arch",
    TINY_ARCH,
    "--image-size",
    "63",
    "--limit-train",
    "256",
    "--limit-eval",
    "64",
    "--batch-size",
    "32",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--no-progress",
    "--no-tensorboard",
]
# train's also: quick's own 15-minute budget off, so a tiny run trains the epochs it is given
# (tune's trials never run under a budget, and tune has no such flag).
TINY_ARGS = [*TUNE_ARGS, "--time-budget", "0"]
# DDP's tests: dropout and augmentation off, plain SGD, so that 2 ranks of 16 and 1 process
# of 32 see the same batches and take the same steps.
SAME_BATCHES = [
    *("--dropout", "0", "--no-flip", "--translate", "0"),
    *("--optimizer", "sgd", "--momentum", "0.9", "--schedule", "cosine"),
]


# The same for the Python API: 63 px, 256 images, 2 epochs, flips and shifts, fp32. Tests
# that assert what only the real network shows (learning, bit-exact resume, export parity,
# DDP) pass arch="alexnet".
TINY = dict(
    arch=TINY_ARCH,
    time_budget=0.0,
    image_size=63,
    limit_train=256,
    limit_eval=64,
    batch_size=32,
    epochs=2,
    precision="fp32",
    flip=True,
    translate=2,
    device="cpu",
    progress=False,
    eval_batch_size=64,
    tensorboard=False,  # the runs that check TensorBoard switch it on
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet(line: str) -> None:
    pass


def tiny_config(out, **overrides):
    return resolve("quick", {**TINY, "out": str(out), **overrides})


def train_quietly(out: Path, **overrides) -> Path:
    """A small real run of the quick preset on the CPU (the small network unless ``arch``
    says), silent; returns its folder."""
    settings = {"device": "cpu", "progress": False, "tensorboard": False, "time_budget": 0.0}
    settings["arch"] = TINY_ARCH
    settings["out"] = str(out)
    config = resolve("quick", {**settings, **overrides})
    train(config, log=quiet)
    return out


def final_weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt").model


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def stop_after(step: int):
    """A ``should_stop`` hook that stops a run once it has done ``step`` optimizer steps."""
    return lambda done: done == step


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool | None = None) -> Path:
    """Write ``array`` (uint8) as an IDX file; gzip it when the name ends in .gz."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress if compress is not None else str(path).endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_dataset(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> Path:
    """A small synthetic dataset in the real file layout."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x803)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x801)
    return folder


@pytest.fixture(scope="session")
def real_data():
    """The real Fashion-MNIST files (make test installs them)."""
    return find_data()


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """One small real run of AlexNet (63 px, 512 images, 2 epochs) that the report and
    export tests read and never change; trained once per session, deleted at its end."""
    folder = tmp_path_factory.mktemp("small-run")
    yield train_quietly(
        folder / "run",
        arch="alexnet",
        image_size=63,
        limit_train=512,
        limit_eval=256,
        epochs=2,
        batch_size=64,
        lr=5e-4,
    )
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The small network trained a little (63 px, 512 images, 2 epochs), for the predict and
    serving tests: what they check holds for any classifier."""
    folder = tmp_path_factory.mktemp("tiny-run")
    yield train_quietly(
        folder / "run",
        image_size=63,
        limit_train=512,
        limit_eval=256,
        epochs=2,
        batch_size=64,
        lr=3e-3,
    )
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def taught_run(tmp_path_factory):
    """The small network on 20,000 training images for 3 epochs (about 6 s): the least
    training after which it tells digits from clothing and its heatmaps pass their sanity
    checks; training fits its temperature and threshold on 2,000 validation images."""
    folder = tmp_path_factory.mktemp("taught-run")
    yield train_quietly(
        folder / "run",
        image_size=63,
        limit_train=20000,
        limit_eval=2000,
        epochs=3,
        batch_size=128,
        lr=3e-3,
    )
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """A folder for the runs a module's tests share, deleted once the module is done.

    Every checkpoint of this network is 220-900 MB; kept until the session ends, the suite's
    runs would hold about 16 GB of disk at once.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield path
    shutil.rmtree(path, ignore_errors=True)
