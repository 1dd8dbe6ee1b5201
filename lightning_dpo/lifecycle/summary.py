"""What a finished run reports: the end-of-run summary (printed, and appended to train.log) and
the objective a hyper-parameter search minimises."""

from __future__ import annotations

import logging
import math
import shlex
from pathlib import Path
from typing import Any

import lightning as L

from lightning_dpo.callbacks.periodic import PeriodicMeasurement
from lightning_dpo.training.plan import resume_command, task_overrides
from lightning_dpo.utils.config import override_arg

log = logging.getLogger("lightning_dpo.train")


def print_summary(
    trainer: L.Trainer, datamodule: Any, run_dir: Path, best: dict[str, Any] | None = None, report: Path | None = None
) -> None:
    """The end-of-run summary, printed and appended to the run's train.log."""
    lines = [f"run directory: {run_dir}", f"data: {datamodule.summary()}"]
    if best is not None:
        lines.append(
            f"best checkpoint by {best['monitor']}: step {best['step']} ({best['value']:.4f}) -> hf_model_best/; final -> hf_model/"
        )
    metrics = trainer.callback_metrics
    for key in ("val/loss", "val/rewards/accuracies", "val/rewards/margins"):
        if key in metrics:
            lines.append(f"{key}: {float(metrics[key]):.4f}")
    for callback in trainer.callbacks:
        if isinstance(callback, PeriodicMeasurement) and callback.summary():
            lines.append(callback.summary())
    if report is not None:
        figures = run_dir / "plots"
        lines.append(f"report: {report}" + (f"   figures: {figures}/" if figures.is_dir() else ""))
    lines += [
        "next:",
        f"  python -m lightning_dpo.analyze {override_arg('dpo', run_dir)}    # the papers' interventions on the best model",
        f"  python -m lightning_dpo.plot {shlex.quote(str(run_dir))}    # redraw the figures",
        f"  {train_on_command(trainer, run_dir)}    # train on from last.ckpt",
    ]
    text = "\n".join(["", "== lightning-dpo summary =="] + lines)
    print(text, flush=True)
    try:
        with open(run_dir / "train.log", "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:  # the summary was printed; the log is a copy
        log.warning("could not append the summary to %s: %s", run_dir / "train.log", exc)


def train_on_command(trainer: L.Trainer, run_dir: Path) -> str:
    """The resume command with twice the steps (the run is complete at its own trainer.max_steps)."""
    overrides = [o for o in task_overrides() if not o.lstrip("+").startswith("trainer.max_steps=")]
    return resume_command(run_dir, overrides + [f"trainer.max_steps={2 * max(trainer.global_step, 1)}"])


def objective_value(trainer: L.Trainer, key: str | None) -> float | None:
    """The value a hyper-parameter search minimises (default `val/loss`); NaN when it was never logged."""
    if not key:
        return None
    value = trainer.callback_metrics.get(key)
    if value is None:
        measured = [cb.latest(key) for cb in trainer.callbacks if isinstance(cb, PeriodicMeasurement)]
        value = next((v for v in measured if v is not None), None)
    return float(value) if value is not None else math.nan
