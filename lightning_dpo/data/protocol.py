"""What the measuring callbacks need from the run's data module, declared: the tokenizer and the
validation pairs' texts (the held-out prompts measurements default to). `PreferenceDataModule`
provides them; a user's own data module must too."""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

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
        raise ConfigError(key, f"measures on the run's data, but the data module ({type(datamodule).__name__}) does not provide "
                          "`tokenizer` and `val_records` (lightning_dpo.data.protocol.MeasuredData)")
    return datamodule
