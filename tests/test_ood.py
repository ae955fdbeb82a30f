"""'Not a Fashion-MNIST item': the scores, the threshold fitted on validation images, the sets
of real non-clothing pictures, and the verdict in predict, the API and the model card."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist_alexnet.checkpoint import load_checkpoint, load_model
from fmnist_alexnet.cli import main
from fmnist_alexnet.data.sources import load_splits
from fmnist_alexnet.infer.ood import check_scores, fit_threshold, ood_scores
from fmnist_alexnet.infer.ood_sets import OOD_SETS, ood_set, ood_table


def test_scores_are_higher_for_less_confident_logits():
    confident = torch.tensor([[9.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    unsure = torch.tensor([[1.0, 0.9, 0.8], [0.1, 0.0, 0.2]])
    for method in ("msp", "energy"):
        assert ood_scores(unsure, method).min() > ood_scores(confident, method).max(), method
    # msp is the calibrated softmax's top probability, negated
    assert ood_scores(confident, "msp", 2.0)[0] == pytest.approx(
        -(torch.tensor([4.5, 0, 0]).softmax(0)[0])
    )
    assert ood_scores(confident, "energy")[1] == pytest.approx(-torch.logsumexp(confident[1], 0))


def test_the_threshold_keeps_96_percent_and_the_checks_count_what_they_say():
    val = torch.arange(1000.0)
    threshold = fit_threshold(val)
    assert float((val <= threshold).double().mean()) == pytest.approx(0.96, abs=0.002)
    test = torch.arange(0.0, 100.0)  # 95 % of it at or under 94.05
    outliers = torch.tensor([10.0, 50.0, 96.0, 200.0])  # two pass for clothing, two do not
    row = check_scores("x", outliers, test, threshold=60.0)
    assert row.images == 4 and row.fpr_at_95_tpr == 0.5 and row.flagged == 0.5
    # AUROC: the chance an outlier outscores a test image, a tie (10, 50, 96) counting half
    assert row.auroc == pytest.approx((10.5 + 50.5 + 96.5 + 100) / 400, abs=1e-9)


def test_the_sets_are_real_pictures_prepared_as_uploads():
    sizes = {"digits": 1797, "photos": 16 * 64, "noise": 1000}
    for name in OOD_SETS:
        images = ood_set(name)
        assert images.dtype == torch.uint8 and images.shape == (sizes[name], 1, 28, 28), name
        assert len(torch.unique(images.flatten(1), dim=0)) > 0.95 * sizes[name], name
    digits = ood_set("digits")[:, 0].float()
    # light strokes on black, scaled up to fill 28 px on their longest edge
    assert digits[:, :, 0].mean() < 20 and digits[:, 10:18, 10:18].mean() > 60


@pytest.fixture(scope="module")
def calibrated_run(taught_run, module_tmp):
    """A copy of the taught run, whose threshold these tests refit."""
    run = module_tmp / "run"
    shutil.copytree(taught_run, run)
    return run


def test_training_fits_the_threshold_on_validation_and_it_holds_on_test(calibrated_run, real_data):
    spec = load_checkpoint(calibrated_run / "checkpoints" / "best.pt").spec
    assert spec.ood_method == "energy" and spec.ood_threshold is not None
    assert spec.temperature != 1.0
    model = load_model(calibrated_run, "cpu", "fp32")
    test = torch.from_numpy(load_splits(real_data)["test"][0][:2000].copy())[:, None]
    scores = ood_scores(model.logits(test), spec.ood_method, spec.temperature)
    # fitted on the run's 2,000 validation images to keep 96 %: about 4 % of test flagged
    assert 0.02 < float((scores > spec.ood_threshold).double().mean()) < 0.07


def test_predict_json_text_and_csv_say_when_a_picture_is_not_clothing(
    calibrated_run, real_data, tmp_path, capsys
):
    garment = load_splits(real_data)["test"][0][0]
    Image.fromarray(garment).save(tmp_path / "garment.png")
    Image.fromarray(np.asarray(ood_set("noise")[0, 0])).save(tmp_path / "noise.png")
    assert main(["predict", str(calibrated_run), str(tmp_path), "--json"]) == 0
    rows = {row["path"].rsplit("/", 1)[1]: row for row in json.loads(capsys.readouterr().out)}
    threshold = load_checkpoint(calibrated_run / "checkpoints" / "best.pt").spec.ood_threshold
    for row in rows.values():
        assert set(row) == {"path", "top", "ood", "ood_score"}
        assert row["ood"] == (row["ood_score"] > threshold)
    assert main(["predict", str(calibrated_run), str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line in lines:
        name = line.split(":")[0].rsplit("/", 1)[1]
        assert ("does not look like a clothing item" in line) == rows[name]["ood"]
    assert main(["predict", str(calibrated_run), str(tmp_path), "--csv"]) == 0
    csv_rows = capsys.readouterr().out.splitlines()
    assert csv_rows[0] == "path,rank,label,class,prob,error,ood"
    assert {row.split(",")[6] for row in csv_rows[1:]} <= {"true", "false"}


def test_calibrate_refits_with_the_other_score(calibrated_run, capsys):
    assert main(["calibrate", str(calibrated_run), "--ood-score", "msp", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    spec = load_checkpoint(calibrated_run / "checkpoints" / "best.pt").spec
    assert result["ood_method"] == spec.ood_method == "msp"
    assert result["ood_threshold"] == pytest.approx(spec.ood_threshold)
    assert -1 < spec.ood_threshold < 0  # a negated probability
    assert main(["calibrate", str(calibrated_run)]) == 0  # back to the default
    assert "not-a-garment threshold: energy score above" in capsys.readouterr().out


def test_the_table_measures_each_set_with_the_stored_threshold(calibrated_run, real_data):
    model = load_model(calibrated_run, "cpu", "fp32")
    test = torch.from_numpy(load_splits(real_data)["test"][0][:1000].copy())[:, None]
    table = ood_table(model, model.logits(test))
    assert [row.name for row in table.sets] == list(OOD_SETS)
    assert table.threshold == model.spec.ood_threshold and table.test_images == 1000
    for row in table.sets:
        assert 0 <= row.auroc <= 1 and 0 <= row.fpr_at_95_tpr <= 1 and 0 <= row.flagged <= 1
    # even this small network tells handwritten digits from clothing (AlexNet: docs/ood.md)
    digits = table.sets[OOD_SETS.index("digits")]
    assert digits.auroc > 0.92 and digits.flagged > 0.5, digits
