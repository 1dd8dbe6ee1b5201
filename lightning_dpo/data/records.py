"""Preference rows from a file (JSONL, or .json/.csv/.parquet: lightning_dpo/data/files.py) or a hub id.

Field names are configurable; presets cover TRL's (`prompt`/`chosen`/`rejected`) and Lee et
al.'s released PPLM pairs (`prompt_text`, `unpert_gen_text` = chosen, `pert_gen_text` = rejected).
A bad row is an error naming the file and line, or, with `on_bad_row="skip"`, counted and skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_dpo.data.files import Row, hub_rows, read_rows, resolve_local
from lightning_dpo.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FIELD_PRESETS: dict[str, dict[str, str]] = {
    "trl": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    "lee": {"prompt": "prompt_text", "chosen": "unpert_gen_text", "rejected": "pert_gen_text"},
}
BAD_ROW_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class PreferenceRecord:
    prompt: str
    chosen: str
    rejected: str
    line: int  # 1-based line in the file (or row index + 1 for hub data), for error messages


@dataclass
class ReadReport:
    """What reading kept and dropped, reported to the user before training."""

    source: str
    rows_read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        text = f"{self.source}: {self.kept} of {self.rows_read} rows kept"
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            text += f" (skipped: {reasons})"
        return text


def resolve_fields(format: str | None, fields: Mapping[str, str] | None) -> dict[str, str]:
    """Field mapping from a preset name, optionally overridden key by key."""
    if format is None:
        format = "trl"
    if format not in FIELD_PRESETS:
        raise ConfigError("data.format", f"unknown format {format!r}; accepted: {sorted(FIELD_PRESETS)}")
    mapping = dict(FIELD_PRESETS[format])
    for key, value in (fields or {}).items():
        if key not in mapping:
            raise ConfigError(f"data.fields.{key}", "accepted keys are prompt, chosen, rejected")
        if value:
            mapping[key] = str(value)
    return mapping


class _RowError(Exception):
    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def _record_from_row(row: Any, fields: Mapping[str, str], line: int) -> PreferenceRecord:
    if not isinstance(row, Mapping):
        raise _RowError("not an object", f"expected a JSON object, got {type(row).__name__}")
    values = {}
    for role, name in fields.items():
        if name not in row:
            raise _RowError(f"missing field '{name}'", f"missing field '{name}' (the {role})")
        value = row[name]
        if not isinstance(value, str):
            raise _RowError(f"non-text field '{name}'", f"field '{name}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise _RowError(f"empty field '{name}'", f"field '{name}' (the {role}) is empty")
        values[role] = value
    return PreferenceRecord(values["prompt"], values["chosen"], values["rejected"], line)


def _handle(exc: _RowError, path: str, line: int, on_bad_row: str, report: ReadReport) -> None:
    if on_bad_row == "error":
        raise DataError(path, f"{exc} (set data.on_bad_row=skip to skip bad rows)", line=line) from None
    report.skipped[exc.reason] += 1


def _records(source: str, rows: Iterable[Row], fields: Mapping[str, str], on_bad_row: str) -> tuple[list[PreferenceRecord], ReadReport]:
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ConfigError("data.on_bad_row", f"got {on_bad_row!r}; accepted: {list(BAD_ROW_POLICIES)}")
    report = ReadReport(source=source)
    records: list[PreferenceRecord] = []
    for row in rows:
        report.rows_read += 1
        try:
            if row.error is not None:
                raise _RowError(row.reason or "unreadable", row.error)
            records.append(_record_from_row(row.value, fields, row.line))
        except _RowError as exc:
            _handle(exc, source, row.line, on_bad_row, report)
    report.kept = len(records)
    return records, report


def read_preference_rows(
    path: str | None = None,
    hub_id: str | None = None,
    split: str = "train",
    format: str | None = "trl",
    fields: Mapping[str, str] | None = None,
    on_bad_row: str = "error",
) -> tuple[list[PreferenceRecord], ReadReport]:
    """Read preference rows from exactly one of a JSONL `path` or a `hub_id`."""
    mapping = resolve_fields(format, fields)
    if bool(path) == bool(hub_id):
        raise ConfigError("data.path", "set exactly one of data.path (a JSONL file) or data.hub_id (a datasets id)")
    if path:
        local = resolve_local(path, "data.path")
        if local is None:
            raise DataError(str(path), "file not found (config key 'data.path'; a hub dataset goes in data.hub_id)")
        return _records(str(local), read_rows(local), mapping, on_bad_row)
    assert hub_id is not None  # one of path and hub_id is set (checked above)
    return _records(f"{hub_id}[{split}]", hub_rows(hub_id, split, "data.hub_id"), mapping, on_bad_row)
