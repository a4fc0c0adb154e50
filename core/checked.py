"""Checks shared by the validated per-session settings (core.sensitivity, core.accommodations): numbers within
bounds and error messages that name what was sent without echoing a hostile value whole."""

from __future__ import annotations

import math
from typing import Any


def number(where: str, value: Any, lo: float, hi: float) -> float:
    # bool is an int in Python, and true/false are no number of seconds.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {kind_of(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise ValueError(f"{where}: must be between {num(lo)} and {num(hi)}, got an integer beyond any float") \
            from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: must be a finite number, got {number}")
    if number < lo or number > hi:
        raise ValueError(f"{where}: must be between {num(lo)} and {num(hi)}, got {num(number)}")
    return number


def num(value: float) -> str:
    return f"{value:g}"


def show(value: Any, limit: int = 40) -> str:
    """A value for an error message, cut short: a hostile 1 MB key must not come back in the 400."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float, str)):
        return f"{type(value).__name__} {show(value)}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return "an object" if isinstance(value, dict) else type(value).__name__
