"""What the measuring callbacks need from the run, declared: from the data module the tokenizer and
the validation pairs' texts (the held-out prompts measurements default to), from the LightningModule
the model being trained as `policy`. `PreferenceDataModule` and `DPOModule` provide them; a user's
own modules must too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import nn

from lightning_dpo.utils.errors import ConfigError


@runtime_checkable
class MeasuredData(Protocol):
    tokenizer: Any

    @property
    def val_records(self) -> Sequence[Any]: ...  # objects with .prompt and .chosen texts


def measured_data(trainer: Any, key: str) -> MeasuredData:
    """The trainer's data module, checked to provide `tokenizer` and `val_records` (naming the callback's key)."""
    datamodule = getattr(trainer, "datamodule", None)
    if not isinstance(datamodule, MeasuredData):
        raise ConfigError(
            key,
            f"measures on the run's data, but the data module ({type(datamodule).__name__}) does not provide "
            "`tokenizer` and `val_records` (lightning_dpo.data.protocol.MeasuredData)",
        )
    return datamodule


def measured_policy(pl_module: Any, key: str) -> nn.Module:
    """The LightningModule's `policy` (the model the callbacks measure), checked (naming the callback's key)."""
    policy = getattr(pl_module, "policy", None)
    if not isinstance(policy, nn.Module):
        raise ConfigError(
            key,
            f"measures the model being trained, but {type(pl_module).__name__} has no `policy` module "
            "(lightning_dpo.data.protocol.measured_policy)",
        )
    return policy
