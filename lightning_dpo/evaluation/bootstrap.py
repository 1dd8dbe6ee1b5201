"""How sure a toxicity number is: every row of Table 1 scores the same prompts, so differences
between rows are paired, and the prompts are resampled together (a paired bootstrap over prompts).

A crude scorer on ~100 prompts gives a mean toxicity whose standard error is about the size of
DPO's whole drop; a `recovered` share from such rows can be anything from -1 to +1 by chance.
The interval says so; the point value alone cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def mean_se(scores: Sequence[float]) -> float:
    """Standard error of a mean over prompts (sample std / sqrt(n)); NaN below two prompts."""
    n = len(scores)
    if n < 2:
        return math.nan
    return float(torch.tensor(scores, dtype=torch.float64).std(unbiased=True)) / math.sqrt(n)


def paired_difference(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """mean(after - before) over the same prompts, and its standard error."""
    if len(before) != len(after):
        raise ValueError(f"paired scores need the same prompts: {len(before)} != {len(after)}")
    diff = [a - b for a, b in zip(after, before)]
    return (sum(diff) / len(diff) if diff else math.nan), mean_se(diff)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    undefined_share: float  # resamples in which DPO's drop was not positive (the share is undefined there)

    def contains(self, value: float) -> bool:
        return math.isfinite(self.low) and self.low <= value <= self.high


def recovered_interval(
    base: Sequence[float], row: Sequence[float], dpo: Sequence[float], resamples: int = 2000, level: float = 0.9, seed: int = 0
) -> Interval:
    """Percentile interval of (tox_base - tox_row) / (tox_base - tox_dpo) over prompts resampled
    with replacement (the same resample for all three models). Where more than 5% of resamples
    have no positive DPO drop, the share has no stable value and the interval is NaN."""
    if not (len(base) == len(row) == len(dpo)) or len(base) < 2:
        return Interval(math.nan, math.nan, math.nan)
    scores = torch.tensor([list(base), list(row), list(dpo)], dtype=torch.float64)  # (3, n)
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, scores.shape[1], (resamples, scores.shape[1]), generator=g)  # (B, n)
    means = scores[:, picks].mean(dim=2)  # (3, B): each model's mean toxicity per resample
    drop = means[0] - means[2]
    undefined = float((drop <= 0).double().mean())
    if undefined > 0.05:
        return Interval(math.nan, math.nan, undefined)
    ratio = ((means[0] - means[1]) / drop)[drop > 0]
    tail = (1 - level) / 2
    low, high = torch.quantile(ratio, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Interval(low, high, undefined)
