"""The progress line: optimizer steps against `max_steps`, loss and accuracy, on one line.

Lightning's bars count batches per epoch ("Epoch 4/-2" when training by steps) and wrap their
metric names over several lines. This one prints

    step 120/150  loss 0.0123  acc 0.98  val/loss 0.0110  4.1 step/s  ETA 0:07

in at most 79 columns. On a terminal it redraws in place; in a pipe or a log file it prints a line
every `log_every_percent` percent of the run, so a batch job's log stays short.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

WIDTH = 79


def _format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(step: int, max_steps: int | None, metrics: dict[str, float], rate: float | None, width: int = WIDTH) -> str:
    """The line for `step`; fields are dropped from the right until it fits `width` columns."""
    total = f"/{max_steps}" if max_steps else ""
    fields = [f"step {step}{total}"]
    for key, label, fmt in (
        ("train/loss", "loss", "{:.4f}"),
        ("train/rewards/accuracies", "acc", "{:.2f}"),
        ("val/loss", "val/loss", "{:.4f}"),
    ):
        if key in metrics:
            fields.append(f"{label} {fmt.format(metrics[key])}")
    if rate:
        fields.append(f"{rate:.2f} step/s" if rate < 10 else f"{rate:.0f} step/s")
        if max_steps and step < max_steps:
            fields.append(f"ETA {_format_eta((max_steps - step) / rate)}")
    while len(fields) > 1 and len("  ".join(fields)) > width:
        fields.pop()
    return "  ".join(fields)[:width]


class StepProgressBar(ProgressBar):
    """One line of progress by optimizer step (see the module docstring)."""

    def __init__(self, log_every_percent: int = 10, stream: TextIO | None = None):
        super().__init__()
        self.log_every_percent = log_every_percent
        self._stream = stream
        self._enabled = True
        self._started = 0.0
        self._first_step = 0
        self._last_step = -1
        self._last_logged_percent = -1
        self._drawn = False

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started, self._first_step = time.perf_counter(), trainer.global_step
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.is_enabled or step == self._last_step:  # mid-accumulation: no optimizer step yet
            return
        self._last_step = step
        self._show(trainer, step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_enabled and not trainer.sanity_checking and self._tty():
            self._show(trainer, trainer.global_step)  # the fresh val/loss

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_enabled and self._drawn and self._tty():
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        if self._drawn and self._tty():  # keep the line: print above it
            self.stream.write("\n")
            self._drawn = False
        print(*args, sep=sep, file=self.stream, **kwargs)

    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def _show(self, trainer: L.Trainer, step: int) -> None:
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        elapsed = time.perf_counter() - self._started
        done = step - self._first_step
        rate = done / elapsed if done > 0 and elapsed > 0 else None
        metrics = {k: float(v) for k, v in trainer.progress_bar_metrics.items() if isinstance(v, (int, float))}
        if self._tty():
            width = min(WIDTH, shutil.get_terminal_size((WIDTH + 1, 24)).columns - 1)
            self.stream.write("\r" + progress_line(step, max_steps, metrics, rate, width).ljust(width))
            self.stream.flush()
            self._drawn = True
            return
        percent = int(100 * step / max_steps) if max_steps else step
        bucket = percent // max(1, self.log_every_percent)
        if bucket != self._last_logged_percent or step == max_steps:
            self._last_logged_percent = bucket
            print(progress_line(step, max_steps, metrics, rate), file=self.stream, flush=True)
