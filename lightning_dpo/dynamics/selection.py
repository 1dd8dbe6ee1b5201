"""Which neurons the papers' interventions touch, chosen from snapshots (neurons/interventions.py applies them).

`top_toxic_neurons` (by cosine with the probe, optionally only those with positive mean
activation), `group_neurons` (TP-, TN+, AP+, AN- ... from two snapshots), `values_from` (a
snapshot's mean activations, to patch to), and `editing_assignments` (the later paper version's
tuning-free activation editing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lightning_dpo.dynamics.groups import group_masks
from lightning_dpo.dynamics.measure import Snapshot
from lightning_dpo.neurons.interventions import Assignments, NeuronSet
from lightning_dpo.utils.errors import ConfigError


def _to_set(flat: torch.Tensor, d_mlp: int) -> NeuronSet:
    out: NeuronSet = {}
    for layer in torch.unique(flat // d_mlp).tolist():
        out[int(layer)] = torch.sort(flat[flat // d_mlp == layer] % d_mlp).values
    return out


def _mask_to_set(mask: torch.Tensor) -> NeuronSet:
    return {layer: torch.nonzero(mask[layer]).reshape(-1) for layer in range(mask.shape[0]) if mask[layer].any()}


def top_toxic_neurons(snapshot: Snapshot, n: int, positive_activation_only: bool = False) -> NeuronSet:
    """The top-n neurons by cos(v_i, w) over all layers (optionally only those with a_i > 0)."""
    cos = snapshot.cosine.reshape(-1).clone()
    if positive_activation_only:
        cos[snapshot.mean_activation.reshape(-1) <= 0] = float("-inf")
    n = min(n, int(torch.isfinite(cos).sum()))
    return _to_set(torch.topk(cos, n).indices, snapshot.cosine.shape[1])


def group_neurons(baseline: Snapshot, current: Snapshot, groups: Sequence[str]) -> NeuronSet:
    masks = group_masks(baseline, current)
    unknown = [g for g in groups if g not in masks]
    if unknown:
        raise ConfigError("interventions.patch_groups", f"unknown groups {unknown}; accepted: {sorted(masks)}")
    union = torch.zeros_like(next(iter(masks.values())))
    for g in groups:
        union |= masks[g]
    return _mask_to_set(union)


def values_from(snapshot: Snapshot, neurons: NeuronSet) -> Assignments:
    """Each listed neuron's mean activation in `snapshot` (patching to the DPO model's levels)."""
    return {layer: (index, snapshot.mean_activation[layer, index].clone()) for layer, index in neurons.items()}


def editing_assignments(
    base: Snapshot, alpha: float = 0.05, beta: float = 0.5, percentile: float = 0.8, anti_order: str = "smallest"
) -> Assignments:
    """Tuning-free activation editing from the pre-trained model alone (later paper version, as coded):

    groups by the signs of (cos, a): TP (cos>0, a>0), AN (cos<0, a<0), AP (cos<0, a>0), TN (cos>0, a<0);
    neurons with a above the `percentile` of all mean activations are left out; per group a
    `beta` fraction (floor(n * beta)) is kept, ranked by |cos| (TP, AN: largest; AP, TN: smallest with
    anti_order="smallest", as the published code sorts, or largest); TP and AN are set to
    a (1 - alpha), AP and TN to a (1 + alpha).
    """
    if not 0 < beta <= 1:
        raise ConfigError("interventions.editing.beta", f"must be in (0, 1], got {beta}")
    if not 0 <= percentile <= 1:
        raise ConfigError("interventions.editing.percentile", f"must be in [0, 1], got {percentile}")
    if anti_order not in ("smallest", "largest"):
        raise ConfigError("interventions.editing.anti_order", f"got {anti_order!r}; accepted: ['smallest', 'largest']")
    a, cos = base.mean_activation, base.cosine
    kept = a <= torch.quantile(a.reshape(-1).double(), percentile).float()
    plan = {  # group mask, take the largest |cos|?, factor
        "TP": ((cos > 0) & (a > 0), True, 1 - alpha),
        "AN": ((cos < 0) & (a < 0), True, 1 - alpha),
        "AP": ((cos < 0) & (a > 0), anti_order == "largest", 1 + alpha),
        "TN": ((cos > 0) & (a < 0), anti_order == "largest", 1 + alpha),
    }
    values = torch.full_like(a, float("nan"))
    for mask, largest, factor in plan.values():
        candidates = torch.nonzero((mask & kept).reshape(-1)).reshape(-1)
        k = math.floor(beta * len(candidates))  # int(n * beta), as the published code
        if k == 0:
            continue
        order = torch.topk(cos.reshape(-1)[candidates].abs(), k, largest=largest).indices
        chosen = candidates[order]
        values.view(-1)[chosen] = a.reshape(-1)[chosen] * factor
    selected = ~torch.isnan(values)
    return {layer: (index, values[layer, index]) for layer, index in _mask_to_set(selected).items()}
