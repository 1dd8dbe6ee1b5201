"""What identifies a model's weights (and the computation run with them), for the cache keys
(reference log-probs, the probe's quality record, the probe set's fixed continuation): class,
config and every parameter's bytes."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch
from torch import nn

_FIXED: dict[int, str] | None = None  # inside `weights_fixed`: id(model) -> its fingerprint


@contextlib.contextmanager
def weights_fixed() -> Iterator[None]:
    """A stretch in which no model's weights change (a run's start: each probe's quality record and
    the probe set's continuation each ask for the same model's fingerprint): each model is hashed once."""
    global _FIXED
    outer, _FIXED = _FIXED, {} if _FIXED is None else _FIXED
    try:
        yield
    finally:
        _FIXED = outer


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the class, the config and every parameter's name, shape, dtype and bytes (an
    unsharded model). Exact, not a checksum: a model with two neurons swapped is another model.
    SHA-256 runs at about 1.8 GB/s on the development machine (0.3 s for a 135M-parameter fp32 model)."""
    if _FIXED is not None and id(model) in _FIXED:
        return _FIXED[id(model)]
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(param.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
    fingerprint = digest.hexdigest()[:16]
    if _FIXED is not None:
        _FIXED[id(model)] = fingerprint
    return fingerprint


def computation_key(model: nn.Module) -> str:
    """What else a cached measurement of `model` depends on besides its inputs: the model's
    fingerprint, its device, the thread count and the autocast state (each can change a float, and
    so a greedy token or a tie)."""
    device = next(model.parameters()).device
    autocast = torch.is_autocast_enabled(device.type) and str(torch.get_autocast_dtype(device.type))
    return f"{model_fingerprint(model)}|{device}|{torch.get_num_threads()}|{autocast}"
