"""Deliver a real signal to this process at a chosen point of training (in-process interruption tests)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAt(L.Callback):
    """Send `signal_name` to this process at optimizer step `step`.

    `step=0` signals during the step-0 measurements (in `on_train_start`, before the measuring
    callbacks run theirs); any other step signals at the end of the batch that completes that
    optimizer step, or, with `micro_batch=True`, at the end of the first micro-batch after it
    (in the middle of gradient accumulation).
    """

    def __init__(self, step: int, signal_name: str = "SIGTERM", micro_batch: bool = False):
        self.step, self.signum, self.micro_batch = step, getattr(signal, signal_name), micro_batch
        self.sent = False

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.step == 0 and trainer.global_step == 0:
            self._send()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.step > 0 and trainer.global_step == self.step and not self.micro_batch:
            self._send()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.step > 0 and trainer.global_step == self.step and self.micro_batch:
            self._send()
