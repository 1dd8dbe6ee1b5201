"""GracefulShutdown: SIGTERM or Ctrl-C saves a resumable checkpoint and stops cleanly.

The signal only sets a flag; at the next optimizer-step boundary the callback writes
`<dirpath>/last.ckpt` (atomically, through the trainer's checkpoint IO) and asks the trainer to
stop. A second Ctrl-C interrupts at once. Resume with `ckpt_path=last`.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class GracefulShutdown(Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt", signals: tuple[str, ...] = ("SIGTERM", "SIGINT")):
        self.path = Path(dirpath) / filename
        self.signals = [getattr(signal, name) for name in signals]
        self.requested: int | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}
        self._last_step_seen: int | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = signum
        log.warning("received %s: saving a checkpoint at the next step boundary, then stopping", signal.Signals(signum).name)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step_seen = trainer.global_step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. a spawned worker): leave signals alone
                pass

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        at_boundary = step != self._last_step_seen
        self._last_step_seen = step
        if self.requested is None or not at_boundary:
            return
        trainer.save_checkpoint(str(self.path))
        self.saved_step = step
        trainer._lightning_dpo_interrupted = True
        trainer.should_stop = True
        log.warning("saved %s at step %d; resume with ckpt_path=last", self.path, step)

    @property
    def interrupted(self) -> bool:
        return self.saved_step is not None
