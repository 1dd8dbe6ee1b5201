"""Markdown tables with one number format per column (analyze, compare, the summaries)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def column_format(values: Sequence[Any], digits: int = 4) -> str:
    """One number format for a whole column: `digits` significant digits for its largest value,
    the same decimals for every row (so 0.4500 and 0.0011 line up); scientific notation for the
    whole column when its largest magnitude is below 1e-3 or at least 1e6."""
    numbers = [abs(float(v)) for v in values if _is_number(v) and math.isfinite(float(v))]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values if _is_number(v)):
        return "{:,d}"
    largest = max(numbers, default=0.0)
    if largest and (largest < 1e-3 or largest >= 1e6):
        return f"{{:.{digits - 1}e}}"
    decimals = max(0, digits - 1 - math.floor(math.log10(largest))) if largest else digits - 1
    if any(0 < n < 0.5 * 10**-decimals for n in numbers):  # a value the shared decimals would show as 0 (a column of
        return f"{{:.{digits}g}}"  # learning rates 1e-4 .. 1): each its own significant digits
    return f"{{:.{decimals}f}}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_cell(value: Any, fmt: str) -> str:
    if _is_number(value):
        return "" if isinstance(value, float) and math.isnan(value) else fmt.format(value)
    return "" if value is None else str(value).replace("|", "/").replace("\n", " ")[:160]


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 4) -> str:
    """A Markdown table: each numeric column in one format (`column_format`), NaN as an empty cell."""
    formats = {c: column_format([row.get(c) for row in rows], digits) for c in columns}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c, ""), formats[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
