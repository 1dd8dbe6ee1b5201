"""What identifies a model's weights (and the computation run with them), for the cache keys (reference log-probs, the probe's quality
record, the probe set's fixed continuation): class, config and every parameter's bytes."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the class, the config and every parameter's name, shape, dtype and bytes (an
    unsharded model). Exact, not a checksum: a model with two neurons swapped is another model.
    SHA-256 runs at about 1.8 GB/s on the development machine (0.3 s for a 135M-parameter fp32 model)."""
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(param.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()[:16]


def computation_key(model: nn.Module) -> str:
    """What else a cached measurement of `model` depends on besides its inputs: the model's
    fingerprint, its device, the thread count and the autocast state (each can change a float, and
    so a greedy token or a tie)."""
    device = next(model.parameters()).device
    autocast = torch.is_autocast_enabled(device.type) and str(torch.get_autocast_dtype(device.type))
    return f"{model_fingerprint(model)}|{device}|{torch.get_num_threads()}|{autocast}"
