"""Numeric flag types for argparse: a value out of range is refused while parsing, in one
line naming the flag, before a checkpoint, the dataset or torch's kernels are touched."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

INT_MAX = 2**31 - 1  # counts, sizes and seeds: anything larger is a typo, not a setting


def integer(least: int = -INT_MAX - 1, most: int = INT_MAX) -> Callable[[str], int]:
    """A whole number in ``least..most`` (a 32-bit int unless narrowed)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            bound = f">= {least}" if most == INT_MAX else f"in {least}..{most}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(least: float | None = None, above: float | None = None) -> Callable[[str], float]:
    """A finite float, ``>= least`` or ``> above`` when given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if least is not None and value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least:g}, got {value:g}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?\s*(?:{_NUMBER}m)?\s*(?:{_NUMBER}s)?")


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``1h``, ``1h30m`` or ``2.5h``; ``0`` is off."""
    text = text.strip().lower()
    match = _DURATION.fullmatch(text)
    try:
        seconds = float(text)
    except ValueError:
        if not text or not match:
            raise argparse.ArgumentTypeError(
                f"expected a duration such as 90s, 15m, 1h or 1h30m, got {text!r}"
            ) from None
        hours, minutes, secs = (float(part or 0) for part in match.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"must be a finite duration >= 0, got {text!r}")
    return seconds
