"""The run's own figures, from metrics.csv: how training went and what the held-out evaluation saw.

- plots/training.png: train and val loss, reward accuracy and margins, KL(policy || reference), the
  learning rate, over optimizer steps;
- plots/evaluation.png: the held-out toxicity (with its scorer) and perplexity (with its text) over steps.
Drawn by the report and the plot command, beside the dynamics figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lightning_dpo.training.metrics_csv import read_metrics_csv
from lightning_dpo.utils.figures import pyplot, save_figure

TRAINING_PANELS = (
    ("loss", ("train/loss", "val/loss"), "DPO loss"),
    ("reward accuracy", ("train/rewards/accuracies", "val/rewards/accuracies"), "share of pairs with chosen reward > rejected"),
    ("reward margin", ("train/rewards/margins", "val/rewards/margins"), "beta x (log-ratio chosen - rejected)"),
    ("KL(policy || reference)", ("train/kl", "val/kl"), "mean per completion token"),
    ("learning rate", ("train/lr",), "lr"),
)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], float(r[key])) for r in rows if key in r and isinstance(r[key], (int, float)) and math.isfinite(float(r[key]))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training(run_dir: Path, rows: list[dict[str, Any]]) -> Path | None:
    panels = [p for p in TRAINING_PANELS if any(_series(rows, k)[0] for k in p[1])]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), layout="constrained", squeeze=False)
    for ax, (title, keys, unit) in zip(axes[0], panels):
        for key, style in zip(keys, ("-", "o-")):
            steps, values = _series(rows, key)
            if steps:
                ax.plot(steps, values, style, ms=3, lw=1.2 if key.startswith("train") else 1.6, label=key.split("/")[0])
        ax.set(title=title, xlabel="optimizer step", ylabel=unit)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    return save_figure(fig, run_dir / "plots" / "training.png")


def plot_evaluation(run_dir: Path, rows: list[dict[str, Any]]) -> Path | None:
    keys = [k for k in ("eval/toxicity", "eval/perplexity") if _series(rows, k)[0]]
    if not keys:
        return None
    meta = _meta(run_dir)
    text = str(meta.get("perplexity_text") or "the held-out text")
    text = Path(text).name if "/" in text and len(text) > 40 else text  # a file: its name
    units = {"eval/toxicity": f"mean score ({meta.get('scorer', 'scorer not recorded')})", "eval/perplexity": f"perplexity on {text}"}
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 3.6), layout="constrained", squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = _series(rows, key)
        ax.plot(steps, values, "o-", ms=4)
        for step, value in zip(steps, values):
            ax.annotate(f"{value:.3g}", (step, value), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        ax.set(title=f"held-out {key.split('/')[1]} over training", xlabel="optimizer step", ylabel=_wrap(units[key]))
        ax.grid(alpha=0.3)
    return save_figure(fig, run_dir / "plots" / "evaluation.png")


def _wrap(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width] + "\n" + text[width : 2 * width]


def _meta(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "eval" / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def make_run_plots(run_dir: str | Path) -> list[Path]:
    """plots/training.png and plots/evaluation.png of a run (those whose metrics exist)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    rows = read_metrics_csv(path)
    return [p for p in (plot_training(run_dir, rows), plot_evaluation(run_dir, rows)) if p is not None]
