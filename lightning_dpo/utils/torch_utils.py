"""Small torch helpers shared by callbacks and commands."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def pinned_threads(count: int = 1) -> Iterator[None]:
    """torch and the BLAS libraries (numpy, scikit-learn) on `count` threads for the duration: float
    results that must not depend on the machine's thread count (the demo world) are computed here."""
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration, then every submodule's own train/eval flag restored exactly."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask: the last real token of every row is at the last column."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, length - len(seq) :] = 1
    return ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift GPT-2's positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; or any torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """fp32 sum of x (..., d) over the positions where `mask` (...) is true, as one matrix-vector
    product: no gathered copy of the selected rows (the snapshot's hooks run this on every layer).
    Autocast is off so that bf16 training does not round the sum's inputs."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return mask.reshape(1, -1).float() @ x.reshape(-1, x.shape[-1]).float()  # (1, N) @ (N, d) -> (1, d)
