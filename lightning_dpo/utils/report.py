"""Markdown tables and figure files shared by the commands (analyze, compare, plot)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from lightning_dpo.utils.io import atomic_save


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table; floats with 4 significant digits, NaN as an empty cell."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "/")[:160]

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write a figure as PNG atomically and free it."""
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    pyplot().close(fig)
    return path
