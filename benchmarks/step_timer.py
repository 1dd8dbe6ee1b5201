"""A callback for benchmarks/scale.py: the wall time of every optimizer step and this process's
peak memory, written per process to `<dir>/step_times_rank<r>.json` when training ends.

Added to a run with
    +callbacks.step_timer._target_=step_timer.StepTimer +callbacks.step_timer.out_dir=<dir>
and `benchmarks/` on PYTHONPATH. Steps in which a measuring callback ran (snapshot, evaluation,
validation) are slower; scale.py reports the median, which those few steps do not move.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L


class StepTimer(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.durations: list[float] = []
        self._last: float | None = None
        self._step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last, self._step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self._step and self._last is not None:  # an optimizer step ended
            now = time.perf_counter()
            self.durations.append(now - self._last)
            self._last, self._step = now, trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "step_seconds": self.durations,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        (self.out_dir / f"step_times_rank{trainer.global_rank}.json").write_text(json.dumps(record))
