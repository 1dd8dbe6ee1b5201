"""Learning-rate schedules: linear warm-up, then constant (Lee et al.) or cosine decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lightning_dpo.utils.errors import ConfigError

SCHEDULES = ("constant", "cosine")


def warmup_factor(step: int, warmup_steps: int, schedule: str, total_steps: int | None, min_ratio: float) -> float:
    """LR multiplier at optimizer step `step` (0-based).

    Warm-up is the published code's `min(1, (step + 1) / (warmup_steps + 1))`.
    """
    warm = min(1.0, (step + 1) / (warmup_steps + 1))
    if schedule == "constant" or step < warmup_steps:
        return warm
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_schedule(
    optimizer: Optimizer,
    warmup_steps: int = 150,
    schedule: str = "constant",
    total_steps: int | None = None,
    min_ratio: float = 0.0,
) -> LambdaLR:
    if schedule not in SCHEDULES:
        raise ConfigError("optim.schedule", f"unknown schedule {schedule!r}; accepted: {list(SCHEDULES)}")
    if warmup_steps < 0:
        raise ConfigError("optim.warmup_steps", f"must be >= 0, got {warmup_steps}")
    if schedule == "cosine" and (total_steps is None or total_steps <= 0):
        raise ConfigError("optim.total_steps", "a cosine schedule needs the total number of steps (trainer.max_steps)")
    return LambdaLR(optimizer, lambda s: warmup_factor(s, warmup_steps, schedule, total_steps, min_ratio))
