"""StopCheckpoint: `last.ckpt` is written where a run stops, so `ckpt_path=last` resumes it exactly.

- at the final optimizer step (max_steps, or the last batch of the last epoch);
- after SIGTERM or Ctrl-C: the signal only sets a flag; at the next optimizer-step boundary the
  checkpoint is written and the trainer is asked to stop (a second Ctrl-C interrupts at once).
The save happens in `on_train_batch_end` like Lightning's own step checkpoints, and, being a
`Checkpoint`, this callback runs after every other callback's hook, so the measuring callbacks'
state for that step is inside the file. Writing goes through the trainer's (atomic) checkpoint IO.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from callbacks.periodic import is_final_step

log = logging.getLogger(__name__)


class StopCheckpoint(Checkpoint):
    def __init__(self, dirpath: str, filename: str = "last.ckpt", signals: tuple[str, ...] = ("SIGTERM", "SIGINT"), at_end: bool = True):
        self.path = Path(dirpath) / filename
        self.signals = [getattr(signal, name) for name in signals]
        self.at_end = at_end
        self.requested: int | None = None
        self.interrupted_at: int | None = None
        self._previous: dict[int, Any] = {}
        self._last_step_seen: int | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = signum
        log.warning("received %s: saving a checkpoint at the next step boundary, then stopping", signal.Signals(signum).name)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Installed here, after Lightning's own SIGTERM handler (which would end the run with
        # SIGTERMException before any checkpoint): ours replaces it for the training loop.
        self._last_step_seen = trainer.global_step
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. a spawned worker): leave signals alone
                pass

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_signals()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_signals()

    def _restore_signals(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        at_boundary = step != self._last_step_seen
        self._last_step_seen = step
        if not at_boundary:
            return  # still accumulating gradients
        stop = self.requested is not None
        if trainer.world_size > 1:  # any rank's signal stops every rank at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self._save(trainer)
            self.interrupted_at = step
            trainer._lightning_dpo_interrupted = True
            trainer.should_stop = True
            log.warning("saved %s at step %d; resume with ckpt_path=last", self.path, step)
        elif self.at_end and is_final_step(trainer):
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(str(self.path))
        for logger in trainer.loggers:  # as after ModelCheckpoint: metrics.csv covers what the checkpoint covers
            if hasattr(logger, "truncate_after"):
                logger.after_save_checkpoint(self)

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1}

    @property
    def interrupted(self) -> bool:
        return self.interrupted_at is not None
