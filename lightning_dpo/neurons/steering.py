"""Steering: add a multiple of the probe's unit direction to the residual stream, inside a block only.

`alpha` is in units of the steered layer's own residual norm: the shift at layer l is
alpha x median ||h_l|| x u, the median taken over every real position of the prompts (measured first,
`residual_norm_medians`, and reported). An absolute alpha has no scale: one layer's residual norm
is ~10 in a 4-layer toy model and has a median of ~165 (mean ~1,494, a few tokens carrying huge
activations) in the middle of a 135M-parameter Llama, so the same number steers one model to
gibberish and leaves another untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from lightning_dpo.neurons.hooks import decoder_forward, find_decoder_layers, hook_residual
from lightning_dpo.utils.torch_utils import eval_mode, left_pad, model_device, position_ids_from_mask


def resolve_layers(model: nn.Module, layers: Sequence[int] | str) -> list[int]:
    """`middle` (the one middle layer), `all`, or explicit layer indices."""
    n = len(find_decoder_layers(model))
    if layers == "all":
        return list(range(n))
    if layers == "middle":
        return [n // 2]
    return [int(layer) for layer in layers]


@torch.no_grad()
def residual_norm_medians(
    model: nn.Module, prompt_ids: Sequence[Sequence[int]], layers: Sequence[int], pad_token_id: int, batch_size: int = 64
) -> dict[int, float]:
    """Median L2 norm of the residual stream after each listed layer, over every real position of the prompts."""
    n = len(find_decoder_layers(model))
    layers = [layer % n for layer in layers]
    norms: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    device = model_device(model)
    with eval_mode(model):
        for start in range(0, len(prompt_ids), batch_size):
            ids, mask = left_pad([list(p) for p in prompt_ids[start : start + batch_size]], pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            real = mask.bool()

            def record(layer: int, hidden: torch.Tensor, real: torch.Tensor = real) -> torch.Tensor:
                norms[layer].append(hidden.float().norm(dim=-1)[real].cpu())  # (real positions,)
                return hidden

            with hook_residual(model, list(layers), record):
                decoder_forward(model, ids, mask, position_ids_from_mask(mask))
    return {layer: float(torch.cat(values).median()) for layer, values in norms.items()}


@contextlib.contextmanager
def steering(
    model: nn.Module, unit: torch.Tensor, alpha: float, layers: Sequence[int], scale: Mapping[int, float] | None = None
) -> Iterator[None]:
    """Add alpha x scale[layer] x unit to the residual stream after each listed layer, only inside the
    block (`scale`: each layer's median residual norm; None: absolute units)."""
    device = next(model.parameters()).device
    n = len(find_decoder_layers(model))
    layers = [layer % n for layer in layers]
    shifts = {layer: ((alpha * (scale[layer] if scale is not None else 1.0)) * unit.float()).to(device) for layer in layers}

    def add(layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + shifts[layer].to(hidden.dtype)  # (batch, positions, d_model) + (d_model,)

    with hook_residual(model, list(layers), add):
        yield


def describe_scale(scale: Mapping[int, float]) -> str:
    """The steering unit in words: one layer's median norm, or the range over the steered layers."""
    if len(scale) <= 3:
        return ", ".join(f"layer {layer}: {value:.4g}" for layer, value in scale.items())
    layers, values = sorted(scale), list(scale.values())
    return f"layers {layers[0]}-{layers[-1]}: {min(values):.4g} to {max(values):.4g} (each layer its own)"
