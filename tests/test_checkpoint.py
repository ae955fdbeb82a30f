import pytest
import torch

from fmnist_alexnet.atomic import atomic_link_or_copy, atomic_write
from fmnist_alexnet.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fmnist_alexnet.config import TrainConfig
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.model import build_model


def small_state(arch="alexnet"):
    config = TrainConfig(arch=arch).to_dict()
    return {"model": build_model(arch).state_dict(), "config": config, "epoch": 1}


def test_save_then_load_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", small_state())
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == 1 and state["config"]["arch"] == "alexnet"
    model = model_from_checkpoint(load_checkpoint(path), path)
    assert torch.equal(model.features[0].weight, state["model"]["features.0.weight"])


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


def test_link_or_copy_survives_replacing_the_source(tmp_path):
    source = tmp_path / "last.pt"
    atomic_write(source, lambda h: h.write(b"epoch 1"))
    atomic_link_or_copy(source, tmp_path / "best.pt")
    atomic_write(source, lambda h: h.write(b"epoch 2"))
    assert (tmp_path / "best.pt").read_bytes() == b"epoch 1"


def test_missing_garbage_and_foreign_files(tmp_path):
    with pytest.raises(FmnistError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(FmnistError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(FmnistError, match="not an fmnist-alexnet checkpoint"):
        load_checkpoint(foreign)


def test_weights_of_another_architecture(tmp_path):
    state = small_state()
    state["config"]["arch"] = "alexnet-paper"
    path = save_checkpoint(tmp_path / "mixed.pt", state)
    with pytest.raises(FmnistError, match="do not fit architecture 'alexnet-paper'"):
        model_from_checkpoint(load_checkpoint(path), path)
