"""One snapshot: mean activation a_i and value projection p_i of every MLP neuron.

a_i = mean over the probe set's averaged positions of m_i (fp32 sums on the device, only the
selected positions are summed); p_i = v_i . w/|w| with the current weights; |v_i| as well, so
that cos(v_i, w) = p_i / |v_i|. Only the transformer body runs (no LM head).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from lightning_dpo.neurons.components import Components, ComponentSums
from lightning_dpo.neurons.hooks import (
    find_output_projections,
    hook_activations,
    value_norms,
    value_projections,
)
from lightning_dpo.utils.torch_utils import (
    eval_mode,
    masked_sum,
    model_device,
    position_ids_from_mask,
)

Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ProbeTokens:
    input_ids: torch.Tensor  # (N, P + n) left-padded prompts + generated tokens
    attention_mask: torch.Tensor  # (N, P + n)
    positions: torch.Tensor  # (N, P + n) bool: the averaged positions

    def shard(self, rank: int, world: int) -> "ProbeTokens":
        return ProbeTokens(self.input_ids[rank::world], self.attention_mask[rank::world], self.positions[rank::world])

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "positions": self.positions}


@dataclass
class Snapshot:
    step: int
    mean_activation: torch.Tensor  # (n_layers, d_mlp) fp32
    value_projection: torch.Tensor  # (n_layers, d_mlp) fp32
    value_norm: torch.Tensor  # (n_layers, d_mlp) fp32

    @property
    def contribution(self) -> torch.Tensor:
        """P_i = a_i * p_i: the neuron's mean write along the probe direction."""
        return self.mean_activation * self.value_projection

    @property
    def cosine(self) -> torch.Tensor:
        return self.value_projection / self.value_norm.clamp(min=1e-12)


@dataclass
class Measurement:
    """One model on one probe set, for several probes at once: what one forward yields."""

    step: int
    mean_activation: torch.Tensor  # (n_layers, d_mlp) fp32, shared by every probe
    value_norm: torch.Tensor  # (n_layers, d_mlp)
    value_projection: dict[str, torch.Tensor]  # probe -> (n_layers, d_mlp): p_i = v_i . u for that probe
    components: dict[str, Components]  # probe -> every component's projection ({} when not measured)

    def snapshot(self, probe: str) -> Snapshot:
        return Snapshot(self.step, self.mean_activation, self.value_projection[probe], self.value_norm)


def _forward_probe_set(model: nn.Module, tokens: ProbeTokens, batch_size: int, selected: list[torch.Tensor]) -> torch.Tensor:
    """Run the transformer body over the probe set, pointing `selected` at each batch's averaged
    positions for the hooks installed around this call; returns the number of averaged positions."""
    device = model_device(model)
    base = getattr(model, "base_model", model)
    count = torch.zeros((), dtype=torch.float64, device=device)
    used = torch.nonzero(tokens.positions.any(0))
    width = int(used.max()) + 1 if len(used) else 0  # later columns influence no averaged position
    for start in range(0, tokens.input_ids.shape[0], batch_size):
        ids = tokens.input_ids[start : start + batch_size, :width].to(device)  # (B, width), left-padded
        mask = tokens.attention_mask[start : start + batch_size, :width].to(device)
        selected[:] = [tokens.positions[start : start + batch_size, :width].to(device)]  # (B, width) bool
        count += selected[0].sum()
        base(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    return count


@torch.no_grad()
def measure(
    model: nn.Module, tokens: ProbeTokens, units: Mapping[str, torch.Tensor], step: int, batch_size: int = 64,
    reduce: Reduce | None = None, center_writing_weights: bool = False, components: bool = True,
) -> Measurement:
    """Mean activations of every MLP neuron, value projections on every probe, and (`components`)
    every component's projection (neurons/components.py), from one forward over the probe set.
    Sums are fp32 over the selected positions only; `reduce` sums them across ranks."""
    projections = find_output_projections(model)
    device = model_device(model)
    sums = torch.zeros(len(projections), projections[0].d_mlp, dtype=torch.float32, device=device)
    selected: list[torch.Tensor] = []  # the positions mask of the batch being run

    def accumulate(layer: int, activation: torch.Tensor) -> None:
        # activation: (B, width, d_mlp) inputs of the output projection; selected: (B, width) bool
        sums[layer] += masked_sum(activation, selected[0])[0]  # (d_mlp,) over the selected positions
        return None

    parts = ComponentSums(model, units, selected, sums, center_writing_weights) if components else None
    with eval_mode(model), hook_activations(projections, accumulate), (parts.hooks() if parts else contextlib.nullcontext()):
        count = _forward_probe_set(model, tokens, batch_size, selected)
    total = reduce(count) if reduce is not None else count
    # the components first: they project this rank's neuron sums, then reduce their own sums across ranks
    parts_result = parts.result(total, reduce) if parts else {}
    if reduce is not None:
        sums = reduce(sums)
    return Measurement(
        step=step,
        mean_activation=(sums / total.clamp(min=1)).float().cpu(),
        value_norm=value_norms(projections, center_writing_weights).cpu(),
        value_projection={name: value_projections(projections, u, center_writing_weights).cpu() for name, u in units.items()},
        components=parts_result,
    )


def mean_activations(model: nn.Module, tokens: ProbeTokens, batch_size: int = 64, reduce: Reduce | None = None) -> torch.Tensor:
    """(n_layers, d_mlp) fp32 mean of m_i over the selected positions (summed across ranks by `reduce`)."""
    unit = torch.zeros(find_output_projections(model)[0].d_model)
    return measure(model, tokens, {"_": unit}, 0, batch_size, reduce, components=False).mean_activation


@torch.no_grad()
def take_snapshot(
    model: nn.Module, tokens: ProbeTokens, unit_direction: torch.Tensor, step: int, batch_size: int = 64,
    reduce: Reduce | None = None, center_writing_weights: bool = False,
) -> Snapshot:
    """One probe's snapshot (no components): see `measure` for several probes and the components."""
    return measure(model, tokens, {"probe": unit_direction}, step, batch_size, reduce, center_writing_weights, components=False).snapshot("probe")
