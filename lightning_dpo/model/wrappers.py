"""The model inside its wrappers: peft's LoRA wraps the policy (what reads the decoder's layers
needs the transformers model inside), and FSDP2 (trainer=fsdp) shards its weights (what reads a
weight outside a forward needs it gathered)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (LoRA), else the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded parameter (FSDP2's DTensor) gathered whole, else the tensor itself. Gathering is a
    collective: under trainer=fsdp every process must call this for the same tensors, in order."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's slice of a sharded tensor (no communication), else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: the weights FSDP2 keeps at the root of `model` (embeddings, final norm, LM head) are
    whole, plain tensors, so code that calls those modules directly (the logit lens, a probe's pooled
    hidden states) works as on one process. The decoder blocks gather themselves in their forwards.
    A collective: every process enters it. Outside trainer=fsdp it does nothing."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield model
        return
    model.unshard()
    try:
        yield model
    finally:
        model.reshard()


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 shards `model` (trainer=fsdp)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
