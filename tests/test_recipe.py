"""Recipe files: TOML and a run's config.json read back as the flags they stand for."""

import json

import pytest

from fmnist_alexnet.cli import main
from fmnist_alexnet.config import resolve
from fmnist_alexnet.errors import FmnistError
from fmnist_alexnet.recipe import read_recipe, recipe_of, write_recipe
from fmnist_alexnet.train.start import plan_run
from fmnist_alexnet.tune.space import read_space


def test_a_recipe_written_as_toml_resolves_to_the_same_config(tmp_path):
    config = resolve(
        "d2l", {"lr": 0.02, "translate": 2, "ema": 0.999, "flip": True, "out": "somewhere"}
    )
    path = write_recipe(tmp_path / "r.toml", recipe_of(config), header="a header\nline two")
    assert path.read_text().startswith("# a header\n# line two\n")
    again, _ = plan_run(None, {"out": "somewhere"}, None, read_recipe(path))
    assert again == config


def test_a_runs_config_json_reruns_it_into_a_new_folder(tmp_path):
    config = resolve("seed", {"epochs": 2, "seed": 3, "out": str(tmp_path / "run")})
    (tmp_path / "config.json").write_text(
        json.dumps({**config.to_dict(), "runtime": {"device": "cpu"}})
    )
    recipe = read_recipe(tmp_path / "config.json")
    assert "out" not in recipe and "runtime" not in recipe
    again, _ = plan_run(None, {}, None, recipe)
    assert again.out != config.out and again.out.startswith("runs/")
    assert again.to_dict() | {"out": None} == config.to_dict() | {"out": None}


def test_flags_override_the_file_and_the_file_the_preset(tmp_path):
    (tmp_path / "r.toml").write_text('preset = "seed"\nlr = 0.05\nbatch-size = 32\n')
    config, _ = plan_run(None, {"batch_size": 16}, None, read_recipe(tmp_path / "r.toml"))
    assert (config.preset, config.lr, config.batch_size) == ("seed", 0.05, 16)
    assert config.momentum == resolve("seed", {}).momentum  # the rest from the preset
    config, _ = plan_run("quick", {}, None, read_recipe(tmp_path / "r.toml"))
    assert config.preset == "quick" and config.lr == 0.05


def test_a_recipe_or_space_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "r.toml").write_bytes(b"lr = 0.1\n# caf\xe9\n")  # Latin-1, say
    with pytest.raises(FmnistError, match=r"r.toml: not UTF-8 text \(byte 0xe9 at offset 14\)"):
        read_recipe(tmp_path / "r.toml")  # was a UnicodeDecodeError traceback
    with pytest.raises(FmnistError, match=r"--space .*r.toml: not UTF-8 text"):
        read_space(tmp_path / "r.toml")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("lr = 0.1\nlearning_rate = 0.1\n", "unknown setting 'learning_rate'"),
        ('epochs = "ten"\n', "epochs = 'ten' should be an int"),
        ("flip = 1\n", "flip = 1 should be true or false"),
        ("lr = [\n", "not valid TOML"),
    ],
)
def test_a_bad_recipe_is_one_line_and_exit_2(tmp_path, capsys, text, says):
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(FmnistError, match=says):
        read_recipe(tmp_path / "r.toml")
    assert main(["train", "--config", str(tmp_path / "r.toml")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
