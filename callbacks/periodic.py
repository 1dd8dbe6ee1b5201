"""PeriodicMeasurement: the schedule and resume bookkeeping shared by the measuring callbacks.

A measurement runs at step 0 (before any update), every `every_n_steps` optimizer steps and at
the end of training; each is keyed by its global step. Its history is part of the checkpoint,
so after a resume the history equals an uninterrupted run's: entries the restored checkpoint
had not reached are dropped (and recomputed identically), none is taken twice.
Measurements run without gradients, in eval mode, and without touching the training RNG stream.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.seed import isolate_rng

from lightning_dpo.callbacks.stop_checkpoint import was_interrupted
from lightning_dpo.training.steps import StepBoundary, is_final_step
from lightning_dpo.utils.errors import ConfigError
from lightning_dpo.utils.torch_utils import eval_mode

log = logging.getLogger(__name__)


class PeriodicMeasurement(Callback):
    STATE_VERSION = 1

    def __init__(self, every_n_steps: int, at_start: bool = True, at_end: bool = True, name: str | None = None):
        if every_n_steps < 1:
            raise ConfigError(f"callbacks.{name or type(self).__name__}.every_n_steps", f"must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.at_start, self.at_end = at_start, at_end
        self.name = name
        self.history: list[dict[str, Any]] = []
        self._boundary = StepBoundary()
        self._started = False  # on_train_start ran (Lightning skips it when a resume is at max_steps already)

    # subclasses implement this; it returns the scalars to log (already reduced across ranks)
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        raise NotImplementedError

    def on_history_changed(self, trainer: L.Trainer) -> None:
        """Write files derived from `history` (rank 0); called after every measurement and on resume."""

    def on_resume(self, trainer: L.Trainer, step: int) -> None:
        """Bring the files in line with `history` (restored, cut at `step`): verify or rebuild what
        the history covers, remove what came after `step` (a future the checkpoint never reached)."""

    # -- schedule -------------------------------------------------------------------------------
    @property
    def steps_done(self) -> set[int]:
        return {entry["step"] for entry in self.history}

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step in self.steps_done:
            return
        with torch.no_grad(), isolate_rng(), eval_mode(pl_module):
            metrics = self.measure(trainer, pl_module, step)
        self.history.append({"step": step, **metrics})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if trainer.is_global_zero:
            self.on_history_changed(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = True
        step = trainer.global_step
        if self.history:  # restored from a checkpoint (of any step, 0 included)
            self.history = [e for e in self.history if e["step"] <= step]
            if trainer.is_global_zero:
                self.on_resume(trainer, step)
                self.on_history_changed(trainer)
        self._boundary.start(step)
        if self.at_start and step == 0:
            self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not self._boundary.crossed(step):
            return  # still accumulating gradients: no optimizer step yet
        if step % self.every_n_steps == 0 or (self.at_end and is_final_step(trainer)):
            # the end-of-training measurement happens here when the step budget is reached, so the
            # last.ckpt written right after it (StopCheckpoint) already holds it
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_end and not was_interrupted(trainer):
            self._run(trainer, pl_module)

    # -- a run resumed at its final step -----------------------------------------------------------
    def missing_final(self, trainer: L.Trainer) -> bool:
        """True when the end-of-training measurement of the final step is missing: a resume whose
        checkpoint is already at `max_steps` makes Lightning skip its training loop and its hooks."""
        return self.at_end and not was_interrupted(trainer) and trainer.global_step not in self.steps_done

    def measure_final(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take the end-of-training measurement outside the loop (after the set-up the loop would do)."""
        if not self._started:
            self.on_train_start(trainer, pl_module)
        self._run(trainer, pl_module)

    # -- state ------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        # a stable key; `name` tells several instances of one class apart in a checkpoint
        return self._generate_state_key(name=self.name) if self.name else super().state_key

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.STATE_VERSION, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

    def value_at(self, step: int, key: str) -> float | None:
        for entry in self.history:
            if entry["step"] == step:
                return entry.get(key)
        return None

    # -- what the run reports at its end (the one protocol train.py reads) -------------------------
    def latest(self, key: str) -> float | None:
        """The last measured value of `key` (e.g. an objective for a search), or None."""
        return next((entry[key] for entry in reversed(self.history) if key in entry), None)

    def summary(self) -> str:
        """Lines for the end-of-run summary."""
        return ""
