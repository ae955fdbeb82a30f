import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fmnist_alexnet.config import resolve
from fmnist_alexnet.data import MEAN, STD
from fmnist_alexnet.data.batches import (
    Augment,
    DeviceData,
    Preprocess,
    eval_batches,
    split_train_val,
    train_batches,
)
from fmnist_alexnet.data.pil_resize import pil_bilinear
from fmnist_alexnet.data.sources import load_splits
from fmnist_alexnet.spec import ModelSpec


@pytest.fixture(scope="module")
def data(real_data):
    images, labels = load_splits(real_data)["test"]
    return DeviceData.from_numpy(images[:512], labels[:512], "cpu")


def batches(data, seed, augment, epoch=0, **kwargs):
    return list(train_batches(data, 64, Preprocess(64, MEAN, STD), augment, seed, epoch, **kwargs))


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_train_val(60000, 5000)
    train2, val2 = split_train_val(60000, 5000)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    assert len(val) == 5000 and len(train) == 55000
    assert len(set(train.tolist()) | set(val.tolist())) == 60000
    _, other = split_train_val(60000, 5000, split_seed=1)
    assert not torch.equal(val, other)


def test_same_seed_same_batches_other_seed_other_batches(data):
    augment = Augment(flip=True, translate=3)
    first, again = batches(data, 0, augment), batches(data, 0, augment)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = batches(data, 1, augment)
    assert not torch.equal(first[0][1], other[0][1])
    next_epoch = batches(data, 0, augment, epoch=1)
    assert not torch.equal(first[0][1], next_epoch[0][1])


def test_each_epoch_is_a_permutation_dropping_the_last_partial_batch(data):
    seen = torch.cat([labels for _, labels in batches(data, 0, Augment())])
    assert len(seen) == 512 // 64 * 64
    # Labels of the test subset in a shuffled order: same multiset as the data.
    assert torch.equal(seen.sort().values, data.labels.sort().values)


def test_keeping_the_last_partial_batch_sees_every_image_and_changes_no_other_batch(data):
    part = data.head(500)
    augment = Augment(flip=True, translate=2, erase=0.5)
    dropped = batches(part, 3, augment)
    kept = batches(part, 3, augment, drop_last=False)
    assert [len(b[1]) for b in dropped] == [64] * 7
    assert [len(b[1]) for b in kept] == [64] * 7 + [500 - 7 * 64]
    assert torch.equal(torch.cat([b[1] for b in kept]).sort().values, part.labels.sort().values)
    for a, b in zip(dropped, kept, strict=False):
        assert torch.equal(a[0], b[0])


def test_start_step_replays_the_rest_of_the_epoch(data):
    augment = Augment(flip=True, translate=2)
    full = batches(data, 5, augment)
    rest = batches(data, 5, augment, start_step=3)
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], rest, strict=True))


def test_ranks_take_contiguous_shards_of_the_same_global_batch(data):
    augment = Augment(flip=True, translate=2)
    whole = batches(data, 7, augment)
    shards = [batches(data, 7, augment, rank=r, world_size=2) for r in range(2)]
    for step, (inputs, labels) in enumerate(whole):
        assert torch.equal(torch.cat([s[step][0] for s in shards]), inputs)
        assert torch.equal(torch.cat([s[step][1] for s in shards]), labels)


def test_augmentation_changes_images_but_keeps_their_mass(data):
    plain = batches(data, 0, Augment())[0][0]
    flipped = batches(data, 0, Augment(flip=True))[0][0]
    changed = (plain - flipped).abs().flatten(1).amax(1) > 0
    assert 0.2 < changed.float().mean() < 0.8  # about half of the batch flipped
    # A flip is exactly a mirror image.
    for i in torch.nonzero(changed).flatten()[:5]:
        assert torch.allclose(flipped[i], plain[i].flip(-1))
    shifted = batches(data, 0, Augment(translate=4))[0][0]
    assert ((plain - shifted).abs().flatten(1).amax(1) > 0).float().mean() > 0.5


def test_translation_is_a_shift_with_black_padding():
    image = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    image[0, 0, 10, 12] = 200
    augment = Augment(translate=3)
    draw = augment.draw(1, torch.Generator().manual_seed(0))
    draw = type(draw)(torch.tensor([False]), torch.tensor([[2, -3]]))
    out = augment.apply(image, draw)
    # The crop window moves by (dy, dx) = (2, -3): content moves the other way.
    assert out[0, 0, 8, 15] == 200 and int(out.sum()) == 200


def test_erasing_replaces_one_box_per_chosen_sample_with_noise():
    images = torch.zeros(2000, 1, 28, 28, dtype=torch.uint8)
    augment = Augment(erase=0.5)
    draw = augment.draw(len(images), torch.Generator().manual_seed(0))
    out = augment.apply(images, draw)
    erased = draw.erase  # [B, 28, 28]
    chosen = erased.flatten(1).any(1)
    assert 0.45 < chosen.float().mean() < 0.55
    # Exactly the boxed pixels changed (to noise, so nearly all of them are non-zero)...
    assert torch.equal(out[:, 0] != 0, erased & (draw.noise[:, 0] != 0))
    # ...and each box is a rectangle of 2-33% of the image.
    for mask in erased[chosen][:200]:
        rows, cols = mask.any(1), mask.any(0)
        assert int(mask.sum()) == int(rows.sum()) * int(cols.sum())
        assert 0.02 * 784 * 0.7 <= int(mask.sum()) <= 0.33 * 784 * 1.3
    # Runs without erasing keep the flips and shifts they drew before erasing existed.
    plain = Augment(flip=True, translate=2).draw(64, torch.Generator().manual_seed(3))
    both = Augment(flip=True, translate=2, erase=0.5).draw(64, torch.Generator().manual_seed(3))
    assert torch.equal(plain.flip, both.flip) and torch.equal(plain.shift, both.shift)


def test_erasing_shards_like_the_other_draws(data):
    augment = Augment(flip=True, erase=0.5)
    whole = batches(data, 2, augment)
    shards = [batches(data, 2, augment, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([s[0][0] for s in shards]), whole[0][0])


def _theta(*rows):
    return torch.tensor([rows], dtype=torch.float32)


def test_warp_is_exact_at_identity_and_a_half_turn_and_fills_with_black():
    x = torch.randn(1, 1, 32, 32)
    draw = Augment(zoom=0.1).draw(1, torch.Generator().manual_seed(0))
    same = type(draw)(draw.flip, draw.shift, warp=_theta([1, 0, 0], [0, 1, 0]))
    assert torch.allclose(Augment.warp(x, same, fill=-0.8), x, atol=1e-5)
    half_turn = type(draw)(draw.flip, draw.shift, warp=_theta([-1, 0, 0], [0, -1, 0]))
    assert torch.allclose(Augment.warp(x, half_turn, fill=-0.8), x.flip(-1).flip(-2), atol=1e-5)
    # Zooming out to half size leaves a border of the fill (a black pixel's value).
    pre = Preprocess(32, MEAN, STD)
    image = pre(torch.full((1, 1, 28, 28), 255, dtype=torch.uint8))
    half = type(draw)(draw.flip, draw.shift, warp=_theta([2, 0, 0], [0, 2, 0]))
    out = Augment.warp(image, half, pre.background)
    assert torch.allclose(out[0, 0, :6], torch.full((6, 32), -MEAN / STD), atol=1e-5)
    assert torch.allclose(out[0, 0, 10:22, 10:22], image[0, 0, 10:22, 10:22], atol=1e-5)


def test_warp_draws_stay_in_range_and_come_last():
    augment = Augment(flip=True, translate=2, erase=0.5, zoom=0.1, rotate=15)
    draw = augment.draw(4000, torch.Generator().manual_seed(1))
    theta = draw.warp
    assert theta.shape == (4000, 2, 3) and not theta[:, :, 2].any()
    zoom = theta[:, :2, :2].det().rsqrt()  # det = 1 / zoom**2
    angle = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert 0.9 - 1e-5 <= zoom.min() < 0.91 and 1.09 < zoom.max() <= 1.1 + 1e-5
    assert -15 - 1e-4 <= angle.min() < -14 and 14 < angle.max() <= 15 + 1e-4
    assert torch.allclose(theta[:, 0, 0], theta[:, 1, 1]) and torch.allclose(
        theta[:, 0, 1], -theta[:, 1, 0]
    )  # a rotation and a uniform zoom: no shear, no stretch
    # Runs without the warp keep every draw they had before it existed.
    plain = Augment(flip=True, translate=2, erase=0.5).draw(4000, torch.Generator().manual_seed(1))
    for name in ("flip", "shift", "erase", "noise"):
        assert torch.equal(getattr(plain, name), getattr(draw, name))
    assert plain.warp is None


def test_warped_batches_shard_keep_channels_last_and_change_the_images(data):
    augment = Augment(zoom=0.2, rotate=20)
    whole = batches(data, 4, augment, channels_last=True)
    shards = [batches(data, 4, augment, rank=r, world_size=2) for r in range(2)]
    assert whole[0][0].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(torch.cat([s[0][0] for s in shards]), whole[0][0])
    plain = batches(data, 4, Augment())[0][0]
    assert ((plain - whole[0][0]).abs().flatten(1).amax(1) > 0.1).all()
    # Mass is roughly kept: a 0.8-1.2x zoom scales it by 0.64-1.44 at most.
    ratio = (whole[0][0] - Preprocess(64, MEAN, STD).background).sum((1, 2, 3)) / (
        plain - Preprocess(64, MEAN, STD).background
    ).sum((1, 2, 3))
    assert ratio.min() > 0.6 and ratio.max() < 1.5


def test_resize_keeps_content(real_data):
    images, labels = load_splits(real_data)["test"]
    batch = torch.from_numpy(images[:32].copy()).reshape(-1, 1, 28, 28)
    big = Preprocess(224, MEAN, STD)(batch)
    assert big.shape == (32, 1, 224, 224)
    # Shrinking back recovers the normalised 28x28 image closely.
    small = F.interpolate(big, size=(28, 28), mode="area")
    original = (batch.float() / 255 - MEAN) / STD
    assert (small - original).abs().mean() < 0.1
    # Normalisation is right: the value range maps [0, 255] to [-mean/std, (1-mean)/std].
    assert big.min() >= -MEAN / STD - 1e-4 and big.max() <= (1 - MEAN) / STD + 1e-4


def test_eval_batches_cover_every_image_once_across_ranks(data):
    pre = Preprocess(64, MEAN, STD)
    seen = [lbl for r in range(3) for _, lbl in eval_batches(data, 100, pre, r, 3)]
    assert sum(len(x) for x in seen) == len(data)


def test_device_data_from_numpy_shapes():
    images = np.zeros((5, 28, 28), np.uint8)
    data = DeviceData.from_numpy(images, np.arange(5, dtype=np.uint8), "cpu")
    assert data.images.shape == (5, 1, 28, 28) and data.labels.dtype == torch.int64


def pillow_resized(images: torch.Tensor, size: int) -> np.ndarray:
    """uint8 [B, 1, 28, 28] -> uint8 [B, size, size] by Pillow's own Image.resize."""
    images = images[:, 0]
    resized = [Image.fromarray(a.numpy()).resize((size, size), Image.BILINEAR) for a in images]
    return np.stack([np.asarray(image) for image in resized])


@pytest.mark.parametrize("size", [224, 96, 65, 227, 20])
def test_pil_bilinear_equals_pillow_on_real_images(data, size):
    """Up, down and by a non-integer factor: every pixel as Pillow's Image.resize computes it."""
    images = data.images[:64]
    ours = pil_bilinear(images, size)
    assert ours.dtype == torch.uint8 and ours.shape == (64, 1, size, size)
    assert np.array_equal(ours[:, 0].numpy(), pillow_resized(images, size))


def test_the_d2l_preset_feeds_exactly_what_torchvisions_resize_and_to_tensor_give(data):
    """d2l's pipeline is Resize(224) on the PIL image, then ToTensor (uint8 / 255, float32)."""
    config = resolve("d2l", {})
    assert (config.arch, config.init, config.val_size, config.precision) == (
        "alexnet-d2l",
        "xavier",
        0,  # all 60,000 training images; the last epoch is tested
        "fp32",
    )
    spec = ModelSpec.from_config(config)
    images = data.images[:16]
    ours = spec.preprocess()(images)
    expected = pillow_resized(images, 224).astype(np.float32) / 255
    assert ours.dtype == torch.float32
    assert torch.equal(ours[:, 0], torch.from_numpy(expected))
    # the torch resize of normalised floats differs from it, by Pillow's 8-bit rounding only
    floats = Preprocess(224, 0.0, 1.0, "bilinear")(images)
    assert 0 < (floats - ours).abs().max() <= 1 / 255 + 1e-6
