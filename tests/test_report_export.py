"""Reports have real pictures; exports agree with PyTorch on real test images."""

import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import train_quietly
from PIL import Image

from fmnist_alexnet.checkpoint import load_model
from fmnist_alexnet.cli import main
from fmnist_alexnet.config import resolve
from fmnist_alexnet.data.sources import load_splits
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.figures import MAX_EPOCH_TICKS, curves_figure, pyplot, samples_figure
from fmnist_alexnet.infer.evaluate import evaluate_checkpoint
from fmnist_alexnet.infer.export import FORMATS, export
from fmnist_alexnet.infer.onnx_model import OnnxModel
from fmnist_alexnet.recipe import reproduce_command
from fmnist_alexnet.report import _time_line, model_card


@pytest.fixture(scope="module")
def run_dir(small_run):
    return small_run


@pytest.mark.parametrize("epochs", [5, 28])
def test_curves_label_every_epoch_until_the_labels_would_collide(epochs):
    history = [
        dict(epoch=e, train_loss=1 / e, train_acc=1 - 1 / e, val_loss=1 / e, val_acc=1 - 1 / e)
        for e in range(1, epochs + 1)
    ]
    figure = curves_figure(history)
    figure.canvas.draw()
    for ax in figure.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]  # the ones drawn
        assert all(t == int(t) and 1 <= t <= epochs for t in ticks)  # whole epochs, no 0
        if epochs <= MAX_EPOCH_TICKS:
            assert ticks == list(range(1, epochs + 1))
        else:
            assert 3 <= len(ticks) <= MAX_EPOCH_TICKS
    pyplot().close(figure)


def test_report_writes_non_trivial_pictures_and_a_model_card(run_dir, capsys):
    assert main(["report", str(run_dir), "--device", "cpu"]) == 0
    for name in ("curves", "confusion_matrix", "samples", "mistakes", "reliability"):
        path = run_dir / f"{name}.png"
        image = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert min(image.shape) > 300 and image.std() > 10, name  # a real picture, not blank
        assert path.stat().st_size > 20_000, name
    card = (run_dir / "report.md").read_text()
    # The run tested on its first 256 test images (--limit-eval); the report says so and
    # agrees with the run's own test and with evaluate.
    full_test = evaluate_checkpoint(run_dir / "checkpoints" / "best.pt", device="cpu", limit=256)
    run_test = json.loads((run_dir / "test_metrics.json").read_text())
    assert full_test.accuracy == pytest.approx(run_test["accuracy"])
    assert f"Test accuracy {full_test.accuracy:.4f}** on the first 256 images of the" in card
    assert "57,029,322 parameters" in card and "![confusion matrix](confusion_matrix.png)" in card
    assert "fmnist-alexnet train --preset quick" in card and "--image-size 63" in card
    assert f"| Ankle boot | {full_test.per_class['Ankle boot']:.4f} |" in card
    assert "- Training on 512 images; validation (model selection) on 256 held out of the " in card
    calibration = full_test.calibration
    assert f"- Probabilities: temperature {calibration.temperature:.4f}, fitted on the " in card
    assert f"expected calibration error {calibration.ece:.4f}" in card
    assert "![reliability diagram](reliability.png)" in card
    assert "## Not a Fashion-MNIST item\n- Score `energy`; a picture scoring above " in card
    assert "| handwritten digits (scikit-learn) | 1,797 | 0." in card
    assert "| photo crops (scikit-image) | 1,024 |" in card and "| uniform noise | 1,000 |" in card


@pytest.mark.parametrize(("n", "shown", "cells"), [(1, 1, 8), (9, 9, 16), (100, 40, 40)])
def test_the_samples_grid_fits_a_test_set_smaller_than_itself(n, shown, cells):
    """A run's --limit-eval under the grid's 40 images made the report raise ValueError."""
    images, labels = np.zeros((n, 28, 28), np.uint8), np.zeros(n, np.int64)
    figure = samples_figure(images, labels, labels, ["T-shirt/top"])
    assert (sum(ax.axison for ax in figure.axes), len(figure.axes)) == (shown, cells)
    pyplot().close(figure)


def test_reproduce_command_names_only_what_differs_from_the_preset():
    config = resolve("quick", {"lr": 0.002, "flip": False, "out": "x"}).to_dict()
    assert reproduce_command(config) == "fmnist-alexnet train --preset quick --lr 0.002 --no-flip"
    sized = resolve("quick", {"image_size": 96, "out": "x"}).to_dict()  # no size choice then
    command = "fmnist-alexnet train --preset quick --budget-sizes '' --image-size 96"
    assert reproduce_command(sized) == command
    config = resolve("hour", {"epochs": 28, "time_budget": 0.0}).to_dict()
    assert (
        reproduce_command(config)
        == "fmnist-alexnet train --preset hour --epochs 28 --time-budget 0"
    )


def test_the_card_says_when_a_wall_time_adds_up_several_processes():
    history = [{"elapsed_s": 100.4}, {"elapsed_s": 250.6}]
    assert _time_line(history, {}) == "- Training wall time 251 s over 2 epochs."
    resumed = _time_line(history, {"resumed": {"epoch": 1, "step": 8, "changed": {}}})
    assert resumed == (
        "- Training wall time 251 s over 2 epochs, summed over the processes that trained it "
        "(resumed at least once)."
    )
    assert _time_line([], {}) == "- No epochs recorded."


def test_report_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "says"),
    [("{", "not a readable run config"), ("[1, 2]", "not a run config"), ("\udcff", "UTF-8")],
)
def test_report_on_a_run_whose_config_json_is_damaged(tmp_path, capsys, text, says):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").touch()
    (tmp_path / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert main(["report", str(tmp_path)]) == 2  # was a JSONDecodeError traceback
    err = capsys.readouterr().err
    assert says in err and "config.json" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("contract", ["{", "[1]"])
def test_an_onnx_file_with_a_damaged_contract_is_one_line(tmp_path, contract):
    from onnx import TensorProto, helper, save

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = model.metadata_props.add()
    meta.key, meta.value = "fmnist_alexnet", contract
    save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(FmnistError, match="m.onnx: its fmnist-alexnet contract is not"):
        OnnxModel.load(tmp_path / "m.onnx")


# TorchScript is kept for older runtimes although the pinned torch deprecates torch.jit
# (docs/export.md); its DeprecationWarnings are expected here, and Python hides them from
# CLI users by default.
@pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "onnx"])  # onnx: through the CLI
def test_export_agrees_with_pytorch_and_carries_the_contract(run_dir, tmp_path, fmt):
    path = tmp_path / f"model.{fmt}"
    result = export(run_dir / "checkpoints" / "best.pt", fmt, path, check_images=256)
    assert result["images"] == 256
    assert result["top1_agreement"] == 1.0
    assert result["max_abs_logit_diff"] < 1e-3
    contract = stored_contract(fmt, path)
    assert contract == result["contract"] and contract["image_size"] == 63
    assert contract["class_names"][9] == "Ankle boot" and contract["num_classes"] == 10


@pytest.fixture(scope="module")
def cli_onnx(run_dir, tmp_path_factory):
    """The small run exported to ONNX once, by a real process (the tests below share it)."""
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    best = run_dir / "checkpoints" / "best.pt"
    argv = [sys.executable, "-m", "fmnist_alexnet", "export", str(best), "--format", "onnx"]
    yield path, subprocess.run([*argv, "--out", str(path)], capture_output=True, text=True)
    path.unlink(missing_ok=True)


def test_onnx_export_from_the_cli_agrees_and_says_two_lines_and_nothing_else(run_dir, cli_onnx):
    # A real process: torch's exporter logs to stderr and warns about its own internals
    # (torchvision's ops not installed, a deprecated pytree class) unless export quiets it.
    path, proc = cli_onnx
    best = run_dir / "checkpoints" / "best.pt"
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"wrote {path} (") and "onnx" in lines[0]
    checked = re.fullmatch(
        r"checked on 512 real test images against PyTorch: largest logit difference (\S+), "
        r"top-1 agreement 100\.00 %",
        lines[1],
    )
    assert checked and float(checked[1]) < 1e-3
    contract = stored_contract("onnx", path)
    assert contract == load_model(best, "cpu").spec.export_contract()
    assert contract["image_size"] == 63 and contract["class_names"][9] == "Ankle boot"


def stored_contract(fmt, path) -> dict:
    """The contract as another program would read it from the file."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return json.loads(session.get_modelmeta().custom_metadata_map["fmnist_alexnet"])
    if fmt in ("pt2", "torchscript"):
        extra = {"fmnist_alexnet.json": ""}
        if fmt == "pt2":
            torch.export.load(str(path), extra_files=extra)
        else:
            torch.jit.load(str(path), _extra_files=extra)
        return json.loads(extra["fmnist_alexnet.json"])
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return json.loads(handle.metadata()["fmnist_alexnet"])


def test_predict_through_onnx_matches_torch(run_dir, cli_onnx, real_data):
    best = run_dir / "checkpoints" / "best.pt"
    path, _ = cli_onnx
    images = torch.from_numpy(load_splits(real_data)["test"][0][:64].copy())[:, None]
    onnx_model = OnnxModel.load(path)
    spec = load_model(best, "cpu").spec
    assert onnx_model.spec == dataclasses.replace(spec, precision="auto")  # not in an export
    onnx_logits = onnx_model.logits(images)
    torch_logits = load_model(best, "cpu", precision="fp32").logits(images)  # ONNX is fp32
    assert torch.equal(onnx_logits.argmax(1), torch_logits.argmax(1))
    assert (onnx_logits - torch_logits).abs().max() < 1e-3
    for batch in (1, 7):  # the batch axis is dynamic
        assert onnx_model.logits(images[:batch]).shape == (batch, 10)


def test_predict_picks_onnxruntime_for_an_onnx_file(cli_onnx, tmp_path, real_data, capsys):
    path, _ = cli_onnx
    for i, image in enumerate(load_splits(real_data)["test"][0][:4]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    printed = []
    for engine in ([], ["--engine", "onnx"]):  # auto picks onnx by the suffix
        assert main(["predict", str(path), *map(str, tmp_path.glob("*.png")), *engine]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and printed[0].count("\n") == 4
    again = ["export", str(path), "--format", "pt2", "--out", str(tmp_path / "m.pt2")]
    assert main(again) == 2  # a torch-only command says what it needs
    assert "an ONNX export, not a checkpoint" in capsys.readouterr().err


def test_model_card_names_the_epoch_best_pt_holds_with_no_validation_split(module_tmp):
    out = train_quietly(
        module_tmp / "no-val",
        image_size=63,
        limit_train=256,
        limit_eval=64,
        epochs=2,
        batch_size=64,
        val_size=0,
    )
    loaded = load_model(out / "checkpoints" / "best.pt", "cpu")
    config = json.loads((out / "config.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    confusion = np.eye(10, dtype=np.int64) * 3
    card = model_card(config, history, confusion, loaded, out)
    assert "on `best.pt` (epoch 2, the last epoch: the run held out no validation split)" in card
    assert (
        "- Training on 256 images; no validation split (the last epoch is the one tested);" in card
    )


@pytest.fixture(scope="module")
def int8_onnx(run_dir, tmp_path_factory):
    """The small run's int8 export, written once through the CLI (128 calibration images)."""
    path = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    best = run_dir / "checkpoints" / "best.pt"
    argv = ["export", str(best), "--format", "onnx", "--quantize", "int8", "--out", str(path)]
    proc = subprocess.run(
        [sys.executable, "-m", "fmnist_alexnet", *argv, "--calibration-images", "128"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    yield path, proc.stdout.splitlines()
    path.unlink()


def test_an_int8_export_is_a_quarter_of_the_weights_and_says_how_it_was_made(run_dir, int8_onnx):
    from fmnist_alexnet.infer.quantize import needs_reduce_range

    path, lines = int8_onnx
    assert len(lines) == 3 and "onnx int8" in lines[0]
    assert re.fullmatch(
        r"int8 \(static: .*calibrated on 128 training images; .*\): accuracy .*", lines[2]
    )
    float_bytes = 4 * sum(
        p.numel() for p in load_model(run_dir / "checkpoints" / "best.pt").model.parameters()
    )
    assert path.stat().st_size < float_bytes / 3.5
    contract = stored_contract("onnx", path)
    made = contract.pop("quantization")
    assert contract == load_model(run_dir / "checkpoints" / "best.pt", "cpu").spec.export_contract()
    assert made["dtype"] == "int8" and made["method"] == "static"
    assert made["calibration"] == {"images": 128, "split": "train", "seed": 0, "ranges": "MinMax"}
    assert made["reduce_range"] == needs_reduce_range()
    check = made["check"]
    assert check["images"] == 512 and check["top1_agreement"] >= 0.98
    assert abs(check["accuracy"] - check["float32_accuracy"]) <= 0.02


def test_evaluate_and_predict_take_an_int8_export_as_they_take_a_checkpoint(
    run_dir, int8_onnx, tmp_path, real_data, capsys
):
    path, _ = int8_onnx
    assert main(["evaluate", str(path), "--json", "--limit-eval", "1000"]) == 0
    int8 = json.loads(capsys.readouterr().out)
    best = str(run_dir / "checkpoints" / "best.pt")
    assert main(["evaluate", best, "--json", "--limit-eval", "1000", "--precision", "fp32"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert int8["n"] == fp32["n"] == 1000 and abs(int8["accuracy"] - fp32["accuracy"]) <= 0.02
    assert int8["confusion_matrix"] != fp32["confusion_matrix"] or int8["loss"] != fp32["loss"]
    assert main(["evaluate", str(path), "--split", "val"]) == 2  # an export has no val split
    assert "carries no validation split" in capsys.readouterr().err
    for i, image in enumerate(load_splits(real_data)["test"][0][:8]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    assert main(["predict", str(path), str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and all(row["top"][0]["prob"] > 0 for row in rows)


def test_quantize_is_refused_in_one_line_outside_onnx(run_dir, tmp_path, capsys):
    best = str(run_dir / "checkpoints" / "best.pt")
    argv = ["export", best, "--format", "pt2", "--quantize", "int8", "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only int8, and only with --format onnx" in err
    assert not (tmp_path / "m").exists()


def test_serve_says_an_int8_export_is_int8(int8_onnx):
    from fmnist_alexnet.serve.loading import load_served

    path, _ = int8_onnx
    model, info = load_served(path, threads=1)
    assert (info["engine"], info["precision"]) == ("onnx", "int8")
    assert info["contract"]["quantization"]["method"] == "static"
    assert model.logits(torch.zeros(3, 1, 28, 28, dtype=torch.uint8)).shape == (3, 10)
