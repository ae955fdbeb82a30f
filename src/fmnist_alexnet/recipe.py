"""Recipe files: a TrainConfig's values in TOML (written by ``tune``, by hand) or a run's own
``config.json``, read back as the flags they stand for.

Keys are TrainConfig field names (``batch_size`` or ``batch-size``); a key that is not one,
or a value of the wrong type, is one error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from fmnist_alexnet.atomic import atomic_write_text
from fmnist_alexnet.config import PRESETS, TrainConfig
from fmnist_alexnet.errors import FmnistError, not_utf8

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Each field's annotation as written: "int", "str | None"...
FIELD_KINDS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
# What a run's config.json holds besides the recipe, and what a rerun must not reuse:
# its own folder (a rerun writing there would overwrite the run it reruns).
_RUN_ONLY = {"runtime"}
_NOT_RERUN = {"out"}
# Settings that do not change what is trained, left out of a reproducing command.
NOT_RECIPE = {"out", "data_dir", "progress", "preset", "log_every", "tensorboard"}


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The file's settings by field name, type-checked; ``preset`` among them if it names
    one. A run's ``config.json`` leaves out its ``out`` folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FmnistError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise FmnistError(f"--config {path}: {not_utf8(exc)}") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise FmnistError(f"--config {path}: not valid {kind} ({exc})") from None
    if not isinstance(values, dict):
        raise FmnistError(f"--config {path}: expected a table of settings")
    is_run_config = path.suffix == ".json" and "runtime" in values
    recipe = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name in _RUN_ONLY or (is_run_config and name in _NOT_RERUN):
            continue
        if name not in FIELD_KINDS:
            raise FmnistError(f"--config {path}: unknown setting {key!r}")
        recipe[name] = _checked(path, key, value, FIELD_KINDS[name])
    return recipe


def write_recipe(path: str | Path, values: dict[str, Any], header: str = "") -> Path:
    """``values`` (field name -> value) as a TOML file ``read_recipe`` reads back equal.
    None values are left out (TOML has no null; a missing key means the default)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name, value in values.items():
        if value is not None:
            lines.append(f"{name} = {_toml_value(value)}")
    return atomic_write_text(Path(path), "\n".join(lines) + "\n")


def recipe_of(config: TrainConfig) -> dict[str, Any]:
    """The settings that make ``config``: every field but the run folder."""
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_RERUN}


def fits(kind: str, value: object) -> bool:
    """Whether ``value`` (as TOML or JSON gives it) has the type of a field of ``kind``."""
    return {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "str | None": value is None or isinstance(value, str),
    }[kind]


def _checked(path: Path, key: str, value: Any, kind: str) -> Any:
    if not fits(kind, value):
        expected = {"str | None": "a string", "bool": "true or false"}.get(kind, f"an {kind}")
        expected = "a float" if kind == "float" else expected
        raise FmnistError(f"--config {path}: {key} = {value!r} should be {expected}")
    return float(value) if kind == "float" else value


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {True: "inf", False: "-inf"}[value > 0] if math.isinf(value) else "nan"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string for any printable text


def reproduce_command(config: dict[str, Any]) -> str:
    """The shortest ``train`` command that gives this config: the preset plus what differs."""
    preset = config.get("preset", "quick")
    base = TrainConfig(preset=preset, **PRESETS.get(preset, {})).to_dict()
    flags = [f"fmnist-alexnet train --preset {preset}"]
    for key, default in base.items():
        value = config.get(key, default)
        if key in NOT_RECIPE or value == default:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # --time-budget 0, not 0.0
            flags.append(f"{flag} {shlex.quote(str(value))}")  # an empty value as ''
    return " ".join(flags)
