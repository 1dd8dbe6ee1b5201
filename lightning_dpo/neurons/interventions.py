"""Interventions on MLP neurons, as context managers (every hook is removed on exit, also on error).

All of them go through `lightning_dpo.neurons.hooks` (the one hook module): activations are rewritten at the
input of the MLP's output projection, the MLP output at that projection's output.

- `ablate`: zero the activations of a neuron set (= remove their value vectors' output);
- `patch`: write constant values (e.g. the DPO model's mean activations) into a neuron set;
- `subtract_direction`: subtract scale * u from one layer's MLP output (Lee et al.'s intervention).
`positions="all"` rewrites every position of each forward pass; `"last"` only the last one, which
under KV-cached generation is the current token (the published evaluation's `hook_timesteps=-1`).

Which neurons to touch is decided from snapshots: lightning_dpo/dynamics/selection.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from lightning_dpo.neurons.hooks import (
    find_output_projections,
    hook_activations,
    hook_mlp_outputs,
)
from lightning_dpo.utils.errors import ConfigError

NeuronSet = dict[int, torch.Tensor]  # layer -> neuron indices
Assignments = dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (indices, values)
POSITIONS = ("all", "last")


def _position_slice(positions: str) -> slice:
    if positions not in POSITIONS:
        raise ConfigError("interventions.positions", f"got {positions!r}; accepted: {list(POSITIONS)}")
    return slice(None) if positions == "all" else slice(-1, None)


def neuron_count(neurons: NeuronSet | Assignments) -> int:
    return sum(len(v[0] if isinstance(v, tuple) else v) for v in neurons.values())


@contextlib.contextmanager
def patch(model: nn.Module, assignments: Assignments, positions: str = "all") -> Iterator[None]:
    """Overwrite m_i of the listed neurons with constant values."""
    where = _position_slice(positions)

    def rewrite(layer: int, m: torch.Tensor) -> torch.Tensor | None:
        if layer not in assignments:
            return None
        index, values = assignments[layer]
        m = m.clone()
        m[:, where, index.to(m.device)] = values.to(m.device, m.dtype)
        return m

    with hook_activations(find_output_projections(model), rewrite):
        yield


@contextlib.contextmanager
def ablate(model: nn.Module, neurons: NeuronSet, positions: str = "all") -> Iterator[None]:
    """Zero m_i of the listed neurons: their value vectors no longer write to the residual stream."""
    zeros = {layer: (index, torch.zeros(len(index))) for layer, index in neurons.items()}
    with patch(model, zeros, positions):
        yield


@contextlib.contextmanager
def subtract_direction(model: nn.Module, layer: int, direction: torch.Tensor, scale: float, positions: str = "all") -> Iterator[None]:
    """MLP output of `layer` minus scale * direction/|direction|."""
    projections = find_output_projections(model)
    if not -len(projections) <= layer < len(projections):
        raise ConfigError("interventions.subtract.layer", f"layer {layer} does not exist ({len(projections)} layers)")
    unit = direction.float() / direction.float().norm()
    where = _position_slice(positions)

    def shift(_: int, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, where] -= scale * unit.to(out.device, out.dtype)
        return out

    with hook_mlp_outputs([projections[layer]], shift):
        yield
