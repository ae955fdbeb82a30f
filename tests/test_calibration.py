"""Temperature scaling: fitted on the validation split, stored in the checkpoint and its
exports, used by predict, evaluate and serve unless --no-calibration."""

import json
import shutil

import pytest
import torch
from conftest import train_quietly
from PIL import Image

from fmnist_alexnet.checkpoint import load_checkpoint
from fmnist_alexnet.cli import main
from fmnist_alexnet.data.sources import load_splits
from fmnist_alexnet.infer.calibration import expected_calibration_error, fit_temperature


def test_the_fitted_temperature_is_the_one_that_made_the_labels():
    generator = torch.Generator().manual_seed(0)
    true_logits = 2 * torch.randn(20000, 10, generator=generator)
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=generator).squeeze(1)
    assert fit_temperature(2.5 * true_logits, labels) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(0.5 * true_logits, labels) == pytest.approx(0.5, rel=0.05)


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    # Two images at 0.9 confidence, one right; two at 0.6, both right:
    # (2/4) * |0.9 - 0.5| + (2/4) * |0.6 - 1.0| = 0.4.
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(probs.log(), labels) == pytest.approx(0.4, abs=1e-6)


@pytest.fixture(scope="module")
def calibrated(tiny_run, tmp_path_factory):
    """A copy of the small run, calibrated through the CLI (the shared run stays as it is)."""
    run = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(tiny_run, run)
    return run


def test_calibrate_writes_the_temperature_and_lowers_the_validation_nll(calibrated, capsys):
    assert main(["calibrate", str(calibrated), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    best = calibrated / "checkpoints" / "best.pt"
    assert result["path"] == str(best) and result["images"] == 5000
    assert load_checkpoint(best).spec.temperature == pytest.approx(result["temperature"])
    assert result["temperature"] != 1.0 and result["nll"] <= result["nll_uncalibrated"]
    assert set(result) >= {"ece", "ece_uncalibrated"}


def test_predict_evaluate_and_an_export_use_the_temperature(
    calibrated, tmp_path, real_data, capsys
):
    best = calibrated / "checkpoints" / "best.pt"
    if load_checkpoint(best).spec.temperature == 1.0:  # run without the test above
        assert main(["calibrate", str(calibrated)]) == 0
        capsys.readouterr()
    temperature = load_checkpoint(best).spec.temperature
    for i, image in enumerate(load_splits(real_data)["test"][0][:6]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    rows = {}
    for flags in ([], ["--no-calibration"]):
        argv = ["predict", str(calibrated), str(tmp_path), "--json", "--precision", "fp32"]
        assert main([*argv, *flags]) == 0
        rows[bool(flags)] = json.loads(capsys.readouterr().out)
    calibrated_top = [row["top"][0] for row in rows[False]]
    raw_top = [row["top"][0] for row in rows[True]]
    assert [t["label"] for t in calibrated_top] == [t["label"] for t in raw_top]  # same answers
    assert [t["prob"] for t in calibrated_top] != [t["prob"] for t in raw_top]
    assert main(["evaluate", str(calibrated), "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["calibration"]["temperature"] == pytest.approx(temperature)
    assert set(evaluation["calibration"]) == {
        "temperature",
        "ece",
        "ece_uncalibrated",
        "nll",
        "nll_uncalibrated",
    }
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(calibrated), "--format", "onnx", "--out", str(onnx)]) == 0
    capsys.readouterr()
    assert main(["predict", str(onnx), str(tmp_path), "--json"]) == 0
    onnx_rows = json.loads(capsys.readouterr().out)
    through_onnx = [row["top"][0]["prob"] for row in onnx_rows]
    assert through_onnx == pytest.approx([t["prob"] for t in calibrated_top], abs=1e-4)
    # and the same not-clothing verdicts: the threshold travels in the contract too
    assert [row["ood"] for row in onnx_rows] == [row["ood"] for row in rows[False]]
    assert [row["ood_score"] for row in onnx_rows] == pytest.approx(
        [row["ood_score"] for row in rows[False]], abs=1e-3
    )


def test_a_run_without_a_validation_split_cannot_calibrate(tmp_path, capsys):
    run = train_quietly(
        tmp_path / "run", val_size=0, epochs=1, limit_train=64, limit_eval=32, batch_size=32
    )
    assert main(["calibrate", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--val-size 0, so no validation split" in err
