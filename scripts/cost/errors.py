"""The one error type for bad input, so the CLI can print it as a single line and exit non-zero."""

from __future__ import annotations

import re


class CostInputError(ValueError):
    """Bad user input: names the field and what it allows."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_range(
    field: str,
    value: float,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    integer: bool = False,
) -> None:
    """Refuse `value` outside [low, high] (or (low, high] with `low_open`), naming the range."""
    numeric = not isinstance(value, bool) and isinstance(value, int if integer else int | float)
    if numeric and (low < value if low_open else low <= value) and value <= high:  # NaN fails too
        return
    interval = f"{'(' if low_open else '['}{number(low)}, {number(high)}]"
    if not numeric:
        kind = "a whole number" if integer else "a number"
        raise CostInputError(field, f"must be {kind} in {interval}, got {value!r}")
    raise CostInputError(field, f"must be in {interval}, got {number(value)}")


def number(value: float, digits: int = 6) -> str:
    """Compact form for messages: 1e12 rather than 1e+12, 1e9 rather than 1e+09."""
    return re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{value:.{digits}g}")
