"""Learning-rate schedules: linear warm-up, then constant (Lee et al.) or cosine decay."""

from __future__ import annotations

import logging
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from lightning_dpo.utils.errors import ConfigError

log = logging.getLogger(__name__)

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


def effective_warmup(
    warmup_steps: int | None, total_steps: int | None, warmup_fraction: float | None = None, warmup_cap: float | None = 0.1
) -> int:
    """The warm-up length of a run: `warmup_fraction` x total steps when given; else `warmup_steps`,
    capped at `warmup_cap` x total steps (a short run must reach its learning rate: Lee et al.'s 150
    warm-up steps would keep a 60-step run below half its rate throughout)."""
    if warmup_fraction is not None:
        if not total_steps or total_steps <= 0:
            raise ConfigError("optim.warmup_fraction", "needs the run's length (trainer.max_steps > 0)")
        return round(warmup_fraction * total_steps)
    steps = int(warmup_steps or 0)
    if warmup_cap is not None and total_steps and total_steps > 0:
        capped = max(1, int(warmup_cap * total_steps)) if steps else 0
        if capped < steps:
            log.info(
                "warm-up capped at %d steps (optim.warmup_cap=%s of trainer.max_steps=%d; optim.warmup_steps=%d)",
                capped,
                warmup_cap,
                total_steps,
                steps,
            )
            return capped
    return steps


def warmup_schedule(
    optimizer: Optimizer,
    warmup_steps: int = 150,
    schedule: str = "constant",
    total_steps: int | None = None,
    min_ratio: float = 0.0,
    warmup_fraction: float | None = None,
    warmup_cap: float | None = None,
) -> LambdaLR:
    if schedule not in SCHEDULES:
        raise ConfigError("optim.schedule", f"unknown schedule {schedule!r}; accepted: {list(SCHEDULES)}")
    if warmup_steps is not None and warmup_steps < 0:
        raise ConfigError("optim.warmup_steps", f"must be >= 0, got {warmup_steps}")
    warmup_steps = effective_warmup(warmup_steps, total_steps, warmup_fraction, warmup_cap)
    if schedule == "cosine" and (total_steps is None or total_steps <= 0):
        raise ConfigError("optim.total_steps", "a cosine schedule needs the total number of steps (trainer.max_steps)")
    return LambdaLR(optimizer, lambda s: warmup_factor(s, warmup_steps, schedule, total_steps, min_ratio))
