"""Uncertainty over prompts: the delete-one-bucket jackknife.

Every snapshot keeps its sums per bucket of prompts (probe_set.py). Leaving bucket b out gives the
means of the other buckets, (S - S_b) / (N - N_b); any quantity computed from means (a group's
delta_sum or share, a component's value or delta) is computed again on each of these B
leave-one-out copies, and its standard error is

    se = sqrt((B - 1) / B * sum_b (theta_(-b) - mean_b theta_(-b))^2)

over the B buckets that hold positions at both steps. This is what the published analyses did not
report: how much a share would move with another sample of prompts.
"""

from __future__ import annotations

import math

import torch


def usable_buckets(*positions: torch.Tensor) -> torch.Tensor:
    """(B,) bool: buckets with averaged positions in every given measurement."""
    mask = torch.ones_like(positions[0], dtype=torch.bool)
    for p in positions:
        mask &= p > 0
    return mask


def leave_one_out(sums: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B', ...) the means without each kept bucket: (S - S_b) / (N - N_b), from per-bucket sums (B, ...)."""
    total, count = sums.sum(0), positions.sum()
    out = (total.unsqueeze(0).double() - sums.double()) / (count - positions).clamp(min=1e-12).reshape(-1, *[1] * (sums.dim() - 1))
    return out[keep]


def jackknife_se(copies: torch.Tensor) -> torch.Tensor:
    """The jackknife standard error over the leading dim (B' leave-one-out copies); NaN for B' < 2."""
    b = copies.shape[0]
    if b < 2:
        return torch.full(copies.shape[1:], math.nan, dtype=torch.float64)
    copies = copies.double()
    return torch.sqrt((b - 1) / b * ((copies - copies.mean(0, keepdim=True)) ** 2).sum(0))
