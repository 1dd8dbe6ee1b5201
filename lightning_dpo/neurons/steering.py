"""Steering: add a multiple of the probe's unit direction to the residual stream, inside a block only."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from lightning_dpo.neurons.hooks import find_decoder_layers, hook_residual


def resolve_layers(model: nn.Module, layers: Sequence[int] | str) -> list[int]:
    """`middle` (the one middle layer), `all`, or explicit layer indices."""
    n = len(find_decoder_layers(model))
    if layers == "all":
        return list(range(n))
    if layers == "middle":
        return [n // 2]
    return [int(layer) for layer in layers]


@contextlib.contextmanager
def steering(model: nn.Module, unit: torch.Tensor, alpha: float, layers: Sequence[int]) -> Iterator[None]:
    """Add alpha * unit to the residual stream after each listed layer, only inside the block."""
    shift = (alpha * unit.float()).to(next(model.parameters()).device)  # (d_model,)

    def add(_: int, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + shift.to(hidden.dtype)  # (batch, positions, d_model) + (d_model,)

    with hook_residual(model, list(layers), add):
        yield
