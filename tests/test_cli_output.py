"""What evaluate, predict and bench print, byte for byte: each output form of fixed typed
results against tests/data/cli_outputs.json, recorded from the CLI when its results were
dicts (predict's when it gained the out-of-distribution verdict). A changed format breaks
scripts that parse it; change that file only on purpose."""

import dataclasses
import json
from pathlib import Path

import pytest

from fmnist_alexnet import cli
from fmnist_alexnet.bench import timing
from fmnist_alexnet.bench.timing import Benchmark
from fmnist_alexnet.data import CLASS_NAMES
from fmnist_alexnet.infer import evaluate, predict
from fmnist_alexnet.infer.evaluate import Evaluation
from fmnist_alexnet.infer.predict import Answer, ClassScore, Prediction

RECORDED = json.loads((Path(__file__).parent / "data" / "cli_outputs.json").read_text())

EVALUATION = Evaluation(
    split="test",
    tta="flip",
    n=3,
    accuracy=2 / 3,
    loss=0.123456789,
    per_class={name: i / 9 for i, name in enumerate(CLASS_NAMES)},
    confusion_matrix=[[(i * 7 + j) % 5 for j in range(10)] for i in range(10)],
    data_published=True,
    data_directory="/data",
)
UNPUBLISHED = dataclasses.replace(EVALUATION, tta="none", data_published=False)
PREDICTIONS = [
    Prediction(
        "a.png",
        Answer(
            [ClassScore(9, "Ankle boot", 0.912345678), ClassScore(7, "Sneaker", 0.05)], -9.5, False
        ),
    ),
    Prediction('b,c "q".png', error='b,c "q".png: not an image file this tool can read'),
    Prediction(
        "d.png",
        Answer([ClassScore(0, "T-shirt/top", 1 / 3), ClassScore(6, "Shirt", 0.25)], -2.25, True),
    ),
    Prediction("e.png", Answer([ClassScore(1, "Trouser", 0.5)], -4.0, None)),  # no threshold fitted
]
BENCHMARK = Benchmark(
    preset="quick",
    optimizer="adamw",
    device="cpu",
    device_name="Some CPU",
    precision="fp32",
    channels_last=True,
    compile=False,
    arch="alexnet",
    image_size=65,
    batch_size=128,
    steps_per_window=5,
    windows=3,
    train_images_per_sec=182.345,
    bare_train_images_per_sec=191.3,
    pipeline_cost=1 - 182.345 / 191.3,
    tensorboard_train_images_per_sec=180.0,
    tensorboard_ratio=180.0 / 182.345,
    log_every=50,
    baseline_train_images_per_sec=140.1,
    speedup_vs_baseline=182.345 / 140.1,
    baseline_workers=4,
    eval_images_per_sec=900.5,
    train_images_per_sec_by_window={
        "pipeline": [1.0, 2.0, 3.0],
        "bare": [4.0, 5.0, 6.0],
        "tensorboard": [1.5, 2.5, 3.5],
        "baseline": [7.0, 8.0, 9.0],
    },
    peak_memory_mb=2048.4,
    torch="2.13.0+cpu",
    cuda=None,
    threads=2,
    profile_ms_per_step={"data": 1.5, "forward": 200.25, "backward": 400.5, "optimizer": 30.0},
    profile_parts=[
        {
            "part": "convolutions, forward",
            "ms_per_step": 100.0,
            "share": 0.25,
            "gflop": 10.0,
            "gflops": 100.0,
        },
        {
            "part": "everything else",
            "ms_per_step": 300.0,
            "share": 0.75,
            "gflop": 0.0,
            "gflops": None,
        },
    ],  # fmt: skip
    gemm_size=4096,
    gemm_gflops=512.3,
)
PLAIN_BENCHMARK = dataclasses.replace(
    BENCHMARK,
    tensorboard_train_images_per_sec=None,
    tensorboard_ratio=None,
    baseline_train_images_per_sec=None,
    speedup_vs_baseline=None,
    baseline_workers=None,
    windows=1,
    steps_per_window=1,
    profile_ms_per_step=None,
    profile_parts=None,
    gemm_size=None,
    gemm_gflops=None,
)


def printed(capsys, argv) -> dict:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return {"code": code, "out": out, "err": err}


@pytest.mark.parametrize("name, result", [("eval", EVALUATION), ("eval_unpublished", UNPUBLISHED)])
def test_evaluate_prints_what_it_always_printed(capsys, monkeypatch, name, result):
    monkeypatch.setattr(evaluate, "evaluate_checkpoint", lambda *args, **kwargs: result)
    assert printed(capsys, ["evaluate", "x.pt", "--json"]) == RECORDED[f"{name}_json"]
    assert printed(capsys, ["evaluate", "x.pt"]) == RECORDED[f"{name}_text"]


@pytest.mark.parametrize("form", ["--json", "--csv", None])
def test_predict_prints_what_it_always_printed(capsys, monkeypatch, form):
    monkeypatch.setattr(cli, "load_classifier", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr(predict, "predict_images", lambda *args, **kwargs: PREDICTIONS)
    argv = ["predict", "m.pt", "p", *([form] if form else [])]
    assert printed(capsys, argv) == RECORDED["predict_" + (form or "text").strip("-")]


@pytest.mark.parametrize("name, result", [("full", BENCHMARK), ("plain", PLAIN_BENCHMARK)])
def test_bench_prints_what_it_always_printed(capsys, monkeypatch, name, result):
    monkeypatch.setattr(timing, "bench", lambda *args, **kwargs: result)
    assert printed(capsys, ["bench", "--json"]) == RECORDED[f"bench_{name}_json"]
    assert printed(capsys, ["bench"]) == RECORDED[f"bench_{name}_text"]
