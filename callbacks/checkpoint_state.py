"""What a checkpoint carries besides the weights, so that a resume can check and rebuild the run:
the run's weight-deciding settings (`RunConfigInCheckpoint`, read by training/plan.py) and the rows
of metrics.csv (`MetricsInCheckpoint`: the checkpoint, not the file, is the source of truth on resume)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L

from lightning_dpo.training.metrics_csv import CHECKPOINT_KEY, MetricsCSVLogger


class RunConfigInCheckpoint(L.Callback):
    """Puts the run's weight-deciding settings (`run_config`) into every checkpoint, where a resume
    finds the settings that produced exactly those weights."""

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = dict(settings)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_config"] = dict(self.settings)


class MetricsInCheckpoint(L.Callback):
    """The rows of metrics.csv in every checkpoint; restored from it on resume."""

    def __init__(self, logger: MetricsCSVLogger):
        self.logger = logger

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"step": trainer.global_step, **self.logger.state()}
        self.logger.save(force=True)  # the file covers at least what the checkpoint covers

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is not None and trainer.is_global_zero:
            self.logger.restore(state, int(state["step"]))
