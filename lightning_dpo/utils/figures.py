"""Figure files shared by the commands and callbacks: a file-only pyplot, atomic PNGs, readable heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_dpo.utils.io import atomic_save


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


def annotate_cells(ax: Any, image: Any, grid: Any, fmt: str = "{:.3g}", fontsize: int = 8) -> None:
    """Write each cell's value on a heatmap, dark on light cells and light on dark ones (by the
    luminance of the cell's colour), so every value is readable whatever the colour map."""
    import numpy as np

    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value = grid[i, j]
            if not np.isfinite(value):
                continue
            r, g, b, _ = image.cmap(image.norm(value))
            luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=fontsize, color="black" if luminance > 0.5 else "white")
