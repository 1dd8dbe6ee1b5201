"""StopCheckpoint: the one writer of `last.ckpt`, so that `ckpt_path=last` resumes a run exactly.

`last.ckpt` is written
- after every validation (as ModelCheckpoint's `save_last` would);
- every `every_n_steps` optimizer steps, if set;
- at the final optimizer step (max_steps, or the last batch of the last epoch), where it also asks
  Lightning for a final validation (`trainer.should_stop`, as EarlyStopping does), so that the final
  weights compete for the best checkpoint and the validation's results are in `last.ckpt`;
- after SIGTERM or Ctrl-C: the signal only sets a flag; at the next optimizer-step boundary the
  checkpoint is written and training ends there (a second Ctrl-C interrupts at once).
ModelCheckpoint keeps only the best checkpoint by `val/loss` (`save_last: false` in
conf/callbacks/model_checkpoint.yaml): its own `last.ckpt` logic also saves at the end of
training, after the loop has closed the epoch, a state that resumes into the next epoch.

Why not Lightning's own handling: Lightning's SIGTERM handler raises `SIGTERMException` (a
`SystemExit` with code 0) before anything is saved, and `trainer.should_stop` makes Lightning run
an extra validation whose checkpoint resumes with its logging counter one step behind. Here the
stop lowers the training loop's step budget to the current step instead (training/lightning_compat.py), so the run ends exactly as a
run with that `max_steps` would: no extra validation, no extra checkpoint.

The handlers are installed by `install_signal_handlers()` (the training entry point calls it
before anything loads; `setup` does it otherwise), so a signal during model loading or the step-0
measurements is honoured too: training then stops at step 0 with a checkpoint. Lightning
registers its own SIGTERM handler afterwards; `on_train_start` puts ours back.

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

from lightning_dpo.training.lightning_compat import end_training_at
from lightning_dpo.training.steps import StepBoundary, is_final_step
from lightning_dpo.utils.errors import ConfigError

log = logging.getLogger(__name__)


class StopCheckpoint(Checkpoint):
    def __init__(
        self,
        dirpath: str,
        filename: str = "last.ckpt",
        signals: tuple[str, ...] = ("SIGTERM", "SIGINT"),
        at_end: bool = True,
        every_n_steps: int | None = None,
        after_validation: bool = True,
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError("callbacks.stop_checkpoint.every_n_steps", f"must be >= 1 or null, got {every_n_steps}")
        self.path = Path(dirpath) / filename
        self.signals = [getattr(signal, name) for name in signals]
        self.at_end, self.every_n_steps, self.after_validation = at_end, every_n_steps, after_validation
        self.requested: int | None = None  # the signal received, if any
        self.interrupted_at: int | None = None  # the step training stopped at after a signal
        self.saved_at: int | None = None  # the step of the last save, to save again after its validation
        self._previous: dict[int, Any] = {}
        self._boundary = StepBoundary()

    # -- signal handling ------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = signum
        log.warning("received %s: saving a checkpoint at the next step boundary, then stopping", signal.Signals(signum).name)

    def install_signal_handlers(self) -> None:
        """Route SIGTERM/SIGINT to this callback (idempotent; the previous handlers come back at the end)."""
        for sig in self.signals:
            try:
                previous = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. a spawned worker): leave signals alone
                continue
            self._previous.setdefault(sig, previous)

    def restore_signal_handlers(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def interrupted(self) -> bool:
        return self.interrupted_at is not None

    # -- hooks --------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.install_signal_handlers()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registered its SIGTERM handler after `setup`: ours replaces it again. This hook
        # runs after every other callback's (step-0 measurements included).
        self.install_signal_handlers()
        self._boundary.start(trainer.global_step)
        if self._stop_requested(trainer):  # a signal during loading or the step-0 measurements
            self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore_signal_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore_signal_handlers()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self._boundary.crossed(trainer.global_step):
            return  # still accumulating gradients
        step = trainer.global_step
        if self._stop_requested(trainer):
            self._stop(trainer)
        elif self.at_end and is_final_step(trainer):
            # ask Lightning for a validation at this step (its own early-stopping flag, which it honours
            # with a validation before stopping): the final weights then compete for the best checkpoint
            # like every other validation, also in a run shorter than trainer.val_check_interval
            trainer.should_stop = True
            self._save(trainer)
        elif self.every_n_steps and step % self.every_n_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning validates after `on_train_batch_end`, so a validation at a step just saved
        # (the final step, a stop) is saved again here, with its results.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self.after_validation or self.saved_at == trainer.global_step:
            self._save(trainer)

    # -- stopping -----------------------------------------------------------------------------------
    def _stop_requested(self, trainer: L.Trainer) -> bool:
        stop = self.requested is not None
        if trainer.world_size > 1:  # any rank's signal stops every rank at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        return stop

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(str(self.path), weights_only=False)  # the full state: resume needs all of it
        self.saved_at = trainer.global_step

    def _stop(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        self._save(trainer)
        self.interrupted_at = step
        end_training_at(trainer, step)  # ends the run here, as if max_steps were this step
        log.warning("saved %s at step %d", self.path, step)

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1}


def stop_checkpoint_of(trainer: L.Trainer) -> StopCheckpoint | None:
    """The trainer's StopCheckpoint, if it has one."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, StopCheckpoint)), None)


def was_interrupted(trainer: L.Trainer) -> bool:
    """True when a signal ended training (rather than the step budget)."""
    callback = stop_checkpoint_of(trainer)
    return callback is not None and callback.interrupted
