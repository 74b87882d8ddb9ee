"""Small value readers shared by the parsers: finite numbers, positive ints, JSON ids, box bounds."""

from __future__ import annotations

import math
from collections.abc import Sequence


def finite_number(value: object) -> float | None:
    """A finite float from a JSON/XML/text value, or None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def hashable(value: object) -> bool:
    """JSON ids must be scalars to be looked up (a list id would crash a dict lookup)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def positive_int(value: object) -> int | None:
    number = finite_number(value)
    if number is None or number <= 0 or not number.is_integer():
        return None
    return int(number)


def bounding(points: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def size_problem(x1: float, y1: float, x2: float, y2: float) -> str | None:
    if x2 > x1 and y2 > y1:
        return None
    return f"zero or negative box size (width {x2 - x1:g}, height {y2 - y1:g})"
