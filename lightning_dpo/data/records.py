"""Reading preference rows from a JSONL file or a `datasets` hub id.

Field names are configurable; presets cover TRL's (`prompt`/`chosen`/`rejected`) and Lee et
al.'s released PPLM pairs (`prompt_text`, `unpert_gen_text` = chosen, `pert_gen_text` = rejected).
A bad row is an error naming the file and line, or, with `on_bad_row="skip"`, counted and skipped.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

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


def read_jsonl_rows(
    path: str | Path, fields: Mapping[str, str], on_bad_row: str = "error"
) -> tuple[list[PreferenceRecord], ReadReport]:
    path = Path(path)
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ConfigError("data.on_bad_row", f"got {on_bad_row!r}; accepted: {list(BAD_ROW_POLICIES)}")
    if not path.is_file():
        raise DataError(str(path), "file not found (config key 'data.path')")
    report = ReadReport(source=str(path))
    records: list[PreferenceRecord] = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue  # blank lines are not rows
            report.rows_read += 1
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _RowError("not UTF-8", f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise _RowError("not JSON", f"not valid JSON ({exc.msg}, column {exc.colno})") from None
                records.append(_record_from_row(row, fields, line_no))
            except _RowError as exc:
                _handle(exc, str(path), line_no, on_bad_row, report)
    report.kept = len(records)
    return records, report


def read_hub_rows(
    dataset_id: str, split: str, fields: Mapping[str, str], on_bad_row: str = "error", **load_kwargs: Any
) -> tuple[list[PreferenceRecord], ReadReport]:
    """Rows of a `datasets` hub dataset (downloaded on first use, then cached by `datasets`)."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise ConfigError("data.hub_id", "the `datasets` package is needed for hub datasets") from exc
    try:
        dataset = datasets.load_dataset(dataset_id, split=split, **load_kwargs)
    except Exception as exc:
        raise DataError(
            dataset_id,
            f"could not load the dataset ({type(exc).__name__}: {exc}). Without network access, "
            "export it to JSONL and pass data.path=<file> instead",
        ) from exc
    source = f"{dataset_id}[{split}]"
    report = ReadReport(source=source)
    records = []
    for index, row in enumerate(_iter_rows(dataset)):
        report.rows_read += 1
        try:
            records.append(_record_from_row(row, fields, index + 1))
        except _RowError as exc:
            _handle(exc, source, index + 1, on_bad_row, report)
    report.kept = len(records)
    return records, report


def _iter_rows(dataset: Iterable[Any]) -> Iterable[Any]:
    yield from dataset


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
        return read_jsonl_rows(path, mapping, on_bad_row)
    return read_hub_rows(hub_id, split, mapping, on_bad_row)
