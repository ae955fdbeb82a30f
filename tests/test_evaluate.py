"""Evaluation: flip test-time augmentation on real test images."""

from contextlib import nullcontext

import pytest
import torch
from torch import nn

from fmnist_alexnet.data import MEAN, STD
from fmnist_alexnet.data.batches import DeviceData, Preprocess
from fmnist_alexnet.data.sources import load_splits
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.infer.evaluate import evaluate


@pytest.fixture(scope="module")
def real_test_images(real_data):
    images, labels = load_splits(real_data)["test"]
    return DeviceData.from_numpy(images[:500], labels[:500], "cpu")


@pytest.fixture(scope="module")
def lopsided_model():
    """A linear classifier that looks at the two halves of an image differently."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()


PREPROCESS = Preprocess(28, MEAN, STD)


def run(model, data, tta="none"):
    return evaluate(
        model,
        data,
        PREPROCESS,
        batch_size=128,
        autocast=nullcontext(),
        num_classes=10,
        tta=tta,
    )


def mirrored(data):
    return DeviceData(data.images.flip(-1), data.labels)


def test_flip_tta_is_the_mean_softmax_of_an_image_and_its_mirror(lopsided_model, real_test_images):
    x = PREPROCESS(real_test_images.images)
    with torch.no_grad():
        p = (lopsided_model(x).softmax(1) + lopsided_model(x.flip(-1)).softmax(1)) / 2
    labels = real_test_images.labels
    result = run(lopsided_model, real_test_images, "flip")
    assert result.n == 500
    assert result.accuracy == pytest.approx((p.argmax(1) == labels).float().mean().item())
    assert result.loss == pytest.approx(-p[torch.arange(500), labels].log().mean().item())


def test_flip_tta_does_not_care_which_way_the_data_faces(lopsided_model, real_test_images):
    plain, plain_mirrored = (
        run(lopsided_model, real_test_images),
        run(lopsided_model, mirrored(real_test_images)),
    )
    # The model itself is not mirror-invariant, so the plain numbers differ...
    assert abs(plain.loss - plain_mirrored.loss) > 1e-3
    # ...and flip TTA scores both ways round identically.
    tta, tta_mirrored = (
        run(lopsided_model, real_test_images, "flip"),
        run(lopsided_model, mirrored(real_test_images), "flip"),
    )
    assert tta.confusion_matrix == tta_mirrored.confusion_matrix
    assert tta.loss == pytest.approx(tta_mirrored.loss, rel=1e-5)


def test_unknown_tta_is_a_user_error(lopsided_model, real_test_images):
    with pytest.raises(FmnistError, match="unknown test-time augmentation 'rotate'"):
        run(lopsided_model, real_test_images, "rotate")
