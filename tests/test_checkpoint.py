"""What a checkpoint holds: atomic writes, safe loads, the format version, format 1."""

import errno
import os

import pytest
import torch

from fmnist_alexnet.atomic import atomic_link_or_copy, atomic_write
from fmnist_alexnet.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from fmnist_alexnet.config import TrainConfig
from fmnist_alexnet.data import CLASS_NAMES, MEAN, STD
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import build_model
from fmnist_alexnet.spec import ModelSpec


def small_checkpoint(arch="alexnet", weights_arch=None, **config):
    config = TrainConfig(arch=arch, **config)
    weights = build_model(weights_arch or arch).state_dict()
    return Checkpoint(spec=ModelSpec.from_config(config), config=config, model=weights, epoch=1)


def test_save_then_load_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", small_checkpoint(image_size=96, precision="fp32"))
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == FORMAT_VERSION == 3
    assert state["spec"]["image_size"] == 96 and state["spec"]["num_classes"] == 10
    loaded = load_model(path, "cpu")
    assert torch.equal(loaded.model.features[0].weight, state["model"]["features.0.weight"])
    assert loaded.spec == ModelSpec("alexnet", 96, MEAN, STD, "bilinear", CLASS_NAMES, "fp32")
    assert loaded.precision == "fp32" and loaded.epoch == 1
    assert loaded.preprocess.image_size == 96 and loaded.config.image_size == 96


def format_1_state(tmp_path):
    """A checkpoint exactly as fmnist-alexnet 0.1 (format 1) wrote it, EMA keys included."""
    config = {**TrainConfig(image_size=72, precision="bf16").to_dict(), "num_classes": 10}
    weights = build_model("alexnet").state_dict()
    state = {
        "format_version": 1,
        "model": weights,
        "train_model": weights,
        "ema_updates": 7,
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {"last_epoch": 7},
        "epoch": 1,
        "step": 7,
        "best_val_acc": 0.5,
        "best_epoch": 1,
        "elapsed_s": 3.0,
        "epoch_sums": torch.zeros(3, dtype=torch.float64),
        "rng": {"torch": torch.get_rng_state(), "cuda": []},
        "config": config,
    }
    torch.save(state, tmp_path / "v1.pt")
    return tmp_path / "v1.pt"


def test_format_1_checkpoints_still_load(tmp_path):
    checkpoint = load_checkpoint(format_1_state(tmp_path))
    assert checkpoint.spec == ModelSpec("alexnet", 72, MEAN, STD, "bilinear", CLASS_NAMES, "bf16")
    assert (checkpoint.epoch, checkpoint.step, checkpoint.ema_updates) == (1, 7, 7)
    assert checkpoint.best_val_acc == 0.5 and checkpoint.config.image_size == 72
    assert load_model(tmp_path / "v1.pt", "cpu", "fp32").spec.image_size == 72
    # Saved again, it is the current format with the same contents; early stopping's
    # counters (format 3) start at zero.
    again = load_checkpoint(save_checkpoint(tmp_path / "v3.pt", checkpoint))
    assert again.spec == checkpoint.spec and again.step == 7
    assert (again.stale_epochs, again.plateau_best) == (0, None)


@pytest.mark.parametrize(
    ("version", "shown", "says"),
    [(4, "4", "upgrade to load it"), (None, "None", "no fmnist-alexnet"), ("x", "'x'", "no fm")],
)
def test_a_newer_or_unknown_format_is_one_clear_error(tmp_path, version, shown, says):
    state = small_checkpoint().to_state()
    state["format_version"] = version
    torch.save(state, tmp_path / "new.pt")
    with pytest.raises(FmnistError, match=f"checkpoint format {shown} is not one") as error:
        load_checkpoint(tmp_path / "new.pt")
    assert says in str(error.value) and "\n" not in str(error.value)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")

    def crash(handle):
        handle.write(b"half of a new file")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_write_error_wrapped_by_a_library_is_one_line_naming_file_and_cause(tmp_path):
    """torch's zip writer turns EFBIG/ENOSPC into a RuntimeError; the OSError behind it is
    what the user is told about, and the old file stays."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")
    for code, says in ((errno.EFBIG, "file-size limit"), (errno.ENOSPC, "the disk is full")):

        def full(handle, code=code):
            try:
                raise OSError(code, os.strerror(code))
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

        with pytest.raises(FmnistError, match=f"{path}: cannot write .*{says}") as error:
            atomic_write(path, full)
        assert "\n" not in str(error.value)
        assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_link_or_copy_survives_replacing_the_source(tmp_path):
    source = tmp_path / "last.pt"
    atomic_write(source, lambda h: h.write(b"epoch 1"))
    atomic_link_or_copy(source, tmp_path / "best.pt")
    atomic_write(source, lambda h: h.write(b"epoch 2"))
    assert (tmp_path / "best.pt").read_bytes() == b"epoch 1"


def test_link_or_copy_onto_the_same_file_leaves_no_temp(tmp_path):
    """rename() between two links of one file does nothing: the temp link would stay."""
    source = tmp_path / "last.pt"
    atomic_write(source, lambda h: h.write(b"epoch 1"))
    atomic_link_or_copy(source, tmp_path / "best.pt")
    atomic_link_or_copy(source, tmp_path / "best.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_missing_garbage_and_foreign_files(tmp_path):
    with pytest.raises(FmnistError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(FmnistError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    text = tmp_path / "notes.pt"  # torch's unpickler raised a bare KeyError on this one
    text.write_text("hello world\n")
    with pytest.raises(FmnistError, match=r"not a readable checkpoint \(not a zip archive"):
        load_checkpoint(text)
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(FmnistError, match=r"not a readable checkpoint \(the file is empty\)"):
        load_checkpoint(empty)
    whole = save_checkpoint(tmp_path / "whole.pt", small_checkpoint()).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FmnistError, match=r"\(a damaged or truncated zip archive\)"):
        load_checkpoint(cut)
    cut.write_bytes(whole[:-26] + (2).to_bytes(4, "little") + whole[-22:])  # zip64 "disks"
    with pytest.raises(FmnistError, match=r"\(a damaged or truncated zip archive\)"):
        load_checkpoint(cut)  # zipfile.is_zipfile itself raised BadZipFile on this one
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(FmnistError, match="not an fmnist-alexnet checkpoint"):
        load_checkpoint(foreign)


def test_weights_of_another_architecture(tmp_path):
    checkpoint = small_checkpoint(arch="alexnet-paper", weights_arch="alexnet")
    path = save_checkpoint(tmp_path / "mixed.pt", checkpoint)
    with pytest.raises(FmnistError, match="do not fit architecture 'alexnet-paper'"):
        load_model(path, "cpu")


def test_a_contract_without_its_fields_is_refused(tmp_path):
    state = small_checkpoint().to_state()
    del state["spec"]["mean"]
    torch.save(state, tmp_path / "x.pt")
    with pytest.raises(FmnistError, match="model contract lacks mean"):
        load_checkpoint(tmp_path / "x.pt")
