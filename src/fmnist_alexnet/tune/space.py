"""tune's search space: the default one, and a TOML ``--space`` file read and checked
before any trial runs, so that a typo or a wrong type is one line naming the table, not a
traceback from Optuna or a study of trials that all fail the same way."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from fmnist_alexnet.config import TrainConfig, resolve
from fmnist_alexnet.errors import FmnistError, not_utf8
from fmnist_alexnet.recipe import FIELD_KINDS, fits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "image_size": {"type": "categorical", "choices": [64, 96, 128]},
    "batch_size": {"type": "categorical", "choices": [64, 128, 256]},
}
# Each kind's keys: those it needs, then those it may have.
KINDS = {
    "float": (("low", "high"), ("log",)),
    "int": (("low", "high"), ("log",)),
    "categorical": (("choices",), ()),
}
_NOT_SEARCHED = ("out", "preset")


def trial_config(
    preset: str, fixed: dict[str, Any], params: dict[str, Any], out: str | Path
) -> TrainConfig:
    """The config a trial runs with: the preset, the fixed flags and the sampled ``params``,
    silent, and never under a time budget: trials are compared at equal epochs, where under
    one (quick's, hour's) each would train what its own measured speed allowed (tune has
    --timeout for the whole study). :class:`FmnistError` for a setting that cannot run."""
    settings = {"progress": False, **fixed, **params}  # --progress may be given
    return resolve(preset, {**settings, "time_budget": 0.0, "out": str(out)})


def read_space(path: str | Path) -> dict[str, Any]:
    """A TOML search space: one table per TrainConfig field, e.g.
    ``[lr]`` with ``type = "float"``, ``low``, ``high``, ``log = true``, or
    ``[image_size]`` with ``type = "categorical"``, ``choices = [64, 96]``."""
    where = f"--space {path}"
    try:
        space = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise FmnistError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise FmnistError(f"{where}: {not_utf8(exc)}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FmnistError(f"{where}: not valid TOML ({exc})") from None
    check_space(space, where)
    return dict(space)


def check_space(space: dict[str, Any], where: str) -> None:
    for name, spec in space.items():
        if name not in FIELD_KINDS or name in _NOT_SEARCHED:
            raise FmnistError(f"{where}: {name!r} is not a setting tune can search")
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise FmnistError(f"{where}: [{name}] needs type = one of {', '.join(KINDS)}")
        needed, optional = KINDS[spec["type"]]
        missing = [key for key in needed if key not in spec]
        if missing:
            raise FmnistError(f"{where}: [{name}] needs {', '.join(missing)}")
        unknown = sorted(set(spec) - {"type", *needed, *optional})
        if unknown:
            allowed = ", ".join(("type", *needed, *optional))
            raise FmnistError(f"{where}: [{name}] has no key {unknown[0]!r} (it takes {allowed})")
        if spec["type"] == "categorical":
            _check_choices(where, name, spec["choices"])
        else:
            _check_range(where, name, spec)


def _check_range(where: str, name: str, spec: dict[str, Any]) -> None:
    kind, field = spec["type"], FIELD_KINDS[name]
    if field not in ("int", "float") or (kind == "float" and field == "int"):
        fits = "int" if field == "int" else "categorical"
        raise FmnistError(f'{where}: [{name}] takes {_kind_words(field)}: use type = "{fits}"')
    low, high = spec["low"], spec["high"]
    for key, value in (("low", low), ("high", high)):
        if not _fits(kind, value):
            raise FmnistError(f"{where}: [{name}] {key} = {value!r} should be {_kind_words(kind)}")
    if not low < high:
        raise FmnistError(f"{where}: [{name}] needs low < high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise FmnistError(f"{where}: [{name}] log = {log!r} should be true or false")
    if log and not low > 0:
        raise FmnistError(f"{where}: [{name}] log = true needs low > 0, got {low!r}")


def _check_choices(where: str, name: str, choices: object) -> None:
    field = FIELD_KINDS[name]
    if not isinstance(choices, list) or not choices:
        raise FmnistError(f"{where}: [{name}] choices should be a non-empty list")
    for value in choices:
        if not _fits(field, value):
            raise FmnistError(f"{where}: [{name}] choice {value!r} should be {_kind_words(field)}")


def _fits(kind: str, value: Any) -> bool:
    """The recipe file's type rule, with finite bounds and choices for a float."""
    return fits(kind, value) and (kind != "float" or math.isfinite(value))


def _kind_words(kind: str) -> str:
    return {
        "bool": "true or false",
        "int": "a whole number",
        "float": "a finite number",
    }.get(kind, "a string")
