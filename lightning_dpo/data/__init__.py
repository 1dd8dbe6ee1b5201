"""Preference data: rows -> tokenized examples -> right-padded chosen/rejected batches."""

from lightning_dpo.data.datamodule import PreferenceDataModule
from lightning_dpo.data.records import (
    FIELD_PRESETS,
    PreferenceRecord,
    read_preference_rows,
)

__all__ = ["FIELD_PRESETS", "PreferenceDataModule", "PreferenceRecord", "read_preference_rows"]
