import gzip

import numpy as np
import pytest
from conftest import write_idx

from fmnist_alexnet.data.idx import read_images, read_labels, read_split
from fmnist_alexnet.errors import FmnistError

IMAGES = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
LABELS = np.array([0, 9, 4], dtype=np.uint8)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_reads_good_files_raw_and_gz(tmp_path, suffix):
    images = write_idx(tmp_path / f"img{suffix}", IMAGES, 0x803)
    labels = write_idx(tmp_path / f"lab{suffix}", LABELS, 0x801)
    got_images, got_labels = read_split(images, labels)
    np.testing.assert_array_equal(got_images, IMAGES)
    np.testing.assert_array_equal(got_labels, LABELS)


def test_gzip_detected_by_magic_even_without_suffix(tmp_path):
    path = write_idx(tmp_path / "img", IMAGES, 0x803, compress=True)
    np.testing.assert_array_equal(read_images(path), IMAGES)


def test_bad_magic_names_the_file(tmp_path):
    path = write_idx(tmp_path / "img", IMAGES, 0x801 + 0x100)
    with pytest.raises(FmnistError, match=f"{path}: bad IDX magic"):
        read_images(path)


def test_labels_file_given_as_images(tmp_path):
    path = write_idx(tmp_path / "lab", LABELS, 0x801)
    with pytest.raises(FmnistError, match="bad IDX magic 0x00000801, expected 0x00000803"):
        read_images(path)


def test_truncated_raw_file(tmp_path):
    path = write_idx(tmp_path / "img", IMAGES, 0x803)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(FmnistError, match=f"{path}: length .*truncated"):
        read_images(path)


def test_trailing_data(tmp_path):
    path = write_idx(tmp_path / "lab", LABELS, 0x801)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(FmnistError, match="trailing data"):
        read_labels(path)


def test_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "img.gz", IMAGES, 0x803)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(FmnistError, match=f"{path}: .*gzip"):
        read_images(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "img.gz"
    data = bytearray(gzip.compress(b"\0" * 5000))
    data[20:40] = b"\xff" * 20
    path.write_bytes(bytes(data))
    with pytest.raises(FmnistError, match=str(path)):
        read_images(path)


def test_not_gzip_despite_name(tmp_path):
    path = write_idx(tmp_path / "img.gz", IMAGES, 0x803, compress=False)
    with pytest.raises(FmnistError, match="not a gzip file"):
        read_images(path)


def test_wrong_image_dimensions(tmp_path):
    path = write_idx(tmp_path / "img", np.zeros((2, 32, 32), np.uint8), 0x803)
    with pytest.raises(FmnistError, match="32x32, expected 28x28"):
        read_images(path)


def test_header_too_short(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(b"\0\0\x08")
    with pytest.raises(FmnistError, match="too short"):
        read_images(path)


def test_label_out_of_range(tmp_path):
    path = write_idx(tmp_path / "lab", np.array([1, 10, 2], np.uint8), 0x801)
    with pytest.raises(FmnistError, match="label 10 at index 1 is outside 0..9"):
        read_labels(path)


def test_count_mismatch_names_both_files(tmp_path):
    images = write_idx(tmp_path / "img", IMAGES, 0x803)
    labels = write_idx(tmp_path / "lab", LABELS[:2], 0x801)
    with pytest.raises(FmnistError, match=f"{images}: 3 images but {labels} has 2 labels"):
        read_split(images, labels)


def test_missing_file(tmp_path):
    with pytest.raises(FmnistError, match="file not found"):
        read_images(tmp_path / "nope")
