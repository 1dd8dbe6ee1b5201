"""Where an optimizer step ends: the one rule every callback uses.

Lightning calls `on_train_batch_end` after every micro-batch; with gradient accumulation only some
of them end an optimizer step. A batch ends one exactly when `trainer.global_step` changed since
the previous batch (Lightning increments it in the optimizer step), so callbacks compare the step
they saw last with the current one instead of asking Lightning's private accumulation state.
"""

from __future__ import annotations

import lightning as L

from lightning_dpo.training.lightning_compat import is_last_batch


class StepBoundary:
    """Remembers the last `global_step` seen; `crossed(step)` is True once per optimizer step."""

    def __init__(self) -> None:
        self.last: int | None = None

    def start(self, step: int) -> None:
        self.last = step

    def crossed(self, step: int) -> bool:
        crossed = step != self.last
        self.last = step
        return crossed


def is_final_step(trainer: L.Trainer) -> bool:
    """True in `on_train_batch_end` of the last optimizer step (max_steps, or the last batch of the last epoch)."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return trainer.global_step >= trainer.max_steps
    return is_last_batch(trainer) and trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
