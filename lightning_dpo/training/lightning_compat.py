"""The three places the project reaches into Lightning's loop state (not public API), kept here with a
test (tests/test_unit_compat.py) against the pinned range of Lightning (`lightning>=2.5,<2.7` in
pyproject.toml). Everything else uses Lightning's public API only.

- `end_training_at(trainer, step)`: ends a run at `step` as if `max_steps` were that step, with no
  extra validation and no extra checkpoint (StopCheckpoint after a signal). Lightning's public
  `trainer.should_stop` validates once more before stopping, and that validation's checkpoint
  resumes one logging step behind.
- `is_last_batch(trainer)`: whether the batch being finished is the epoch's last (the end of a run
  trained by epochs).
- `set_parallel_sizes(strategy, data_parallel, tensor_parallel)`: the device-mesh sizes of a
  `ModelParallelStrategy` once the process count is known (trainer=fsdp: data parallel over every
  process; the public arguments must be numbers fixed before the devices are).
"""

from __future__ import annotations

from typing import Any

import lightning as L


def end_training_at(trainer: L.Trainer, step: int) -> None:
    trainer.fit_loop.epoch_loop.max_steps = step


def is_last_batch(trainer: L.Trainer) -> bool:
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def set_parallel_sizes(strategy: Any, data_parallel: int, tensor_parallel: int) -> None:
    strategy._data_parallel_size = data_parallel
    strategy._tensor_parallel_size = tensor_parallel
