"""The transformers model inside a wrapper: peft's LoRA wraps the policy, and what reads the
decoder's layers (log-probs, hooks, value vectors) needs the model inside."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (LoRA), else the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
