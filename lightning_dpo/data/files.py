"""The one reader of rows: preference pairs, prompt sets, labelled texts and plain text come through here.

Local files, by suffix:
- `.jsonl` (and any other suffix): one JSON object per line; blank lines are skipped;
- `.json`: an array of objects;
- `.csv`: a header row, then one row per line (values are text);
- `.parquet`: a table (nested columns come back as dicts);
- `.txt`: one text per line (only where texts are read, never for pairs).
A UTF-8 byte-order mark is accepted. A key that appears twice in one JSON object is an error (JSON
parsers would silently keep the last value). Errors name `file:line` (`file: item N` for .json and
.parquet, which have no lines).

A source that is not an existing local file is a `datasets` hub id only when it looks like one
(`owner/name`, no file suffix, not a path): a missing local file says "file not found" at once and
is never tried on the hub, and a hub id fails at once, with what to do, when the hub is
unreachable (`load_hub_dataset`, the one place that calls `datasets.load_dataset`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_dpo.utils.errors import DataError
from lightning_dpo.utils.hub import hub_reachable

FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".txt", ".tsv")


@dataclass
class Row:
    line: int  # 1-based line of a .jsonl/.csv file, or item number of a .json/.parquet file or hub split
    value: Any = None  # the parsed row
    reason: str | None = None  # why the row cannot be read (a short label, counted when rows are skipped)
    error: str | None = None  # the same, in full


class _DuplicateKey(ValueError):
    pass


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(text: str) -> Any:
    """`json.loads`, but a key repeated in one object is an error (`_DuplicateKey`)."""
    return json.loads(text, object_pairs_hook=_strict_object)


def looks_like_hub_id(source: str) -> bool:
    """`owner/name` or `name`: no file suffix, not an absolute or relative path."""
    if source.startswith(("/", ".", "~")) or os.sep + os.sep in source or "\\" in source:
        return False
    return Path(source).suffix.lower() not in FILE_SUFFIXES and source.count("/") <= 1


def resolve_local(source: str | os.PathLike, key: str) -> Path | None:
    """The local file `source` names, or None if it is a hub id. A missing or unusable local path
    fails here, naming the config key."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_symlink() and not path.exists():
        try:
            os.path.realpath(path, strict=True)
        except OSError as exc:
            raise DataError(text, f"is a broken symbolic link or a symbolic-link loop ({exc.strerror}) (config key '{key}')") from None
    if path.is_dir():
        raise DataError(text, f"is a directory, not a file (config key '{key}')")
    if path.is_file():
        return path
    if looks_like_hub_id(text):
        return None
    raise DataError(text, f"file not found (config key '{key}')")


def read_rows(path: Path, texts: bool = False) -> Iterator[Row]:
    """The rows of a local file, by suffix (see the module docstring). `texts=True` also reads
    `.txt` (one text per line, as strings)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if not texts:
            raise DataError(str(path), "a .txt file holds plain text; pairs need JSONL (or .json, .csv, .parquet)")
        yield from _text_lines(path)
    elif suffix == ".json":
        yield from _json_array(path)
    elif suffix in (".csv", ".tsv"):
        yield from _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        yield from _parquet_rows(path)
    else:
        yield from _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    hint = "" if path.suffix.lower() in (".jsonl", ".ndjson") else "; JSONL expected (one JSON object per line)"
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Row(line_no, reason="not UTF-8", error=f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            try:
                yield Row(line_no, parse_json(text))
            except _DuplicateKey as exc:
                yield Row(line_no, reason="duplicate key", error=f"the key {exc.args[0]!r} appears twice in this row")
            except json.JSONDecodeError as exc:
                yield Row(line_no, reason="not JSON", error=f"not valid JSON ({exc.msg}, column {exc.colno}){hint}")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(str(path), f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def _text_lines(path: Path) -> Iterator[Row]:
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            yield Row(line_no, line)


def _json_array(path: Path) -> Iterator[Row]:
    try:
        items = parse_json(_read_text(path))
    except _DuplicateKey as exc:
        raise DataError(str(path), f"the key {exc.args[0]!r} appears twice in one object") from None
    except json.JSONDecodeError as exc:
        raise DataError(str(path), f"not valid JSON ({exc.msg})", line=exc.lineno) from None
    if not isinstance(items, list):
        raise DataError(str(path), f"a .json file must hold an array of objects, got {type(items).__name__} (or use JSONL)")
    for index, item in enumerate(items, start=1):
        yield Row(index, item)


def _csv_rows(path: Path, delimiter: str) -> Iterator[Row]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    if reader.fieldnames and len(set(reader.fieldnames)) != len(reader.fieldnames):
        raise DataError(str(path), f"the header names a column twice: {reader.fieldnames}", line=1)
    for row in reader:
        if None in row:  # more values than header columns
            yield Row(reader.line_num, reason="extra values", error=f"{len(row[None])} more values than the header has columns")
        else:
            yield Row(reader.line_num, dict(row))


def _parquet_rows(path: Path) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(str(path), f"cannot read it as Parquet ({type(exc).__name__}: {exc})") from None
    for index, item in enumerate(table.to_pylist(), start=1):
        yield Row(index, item)


def load_hub_dataset(dataset_id: str, split: str, key: str, name: str | None = None) -> Any:
    """`datasets.load_dataset(dataset_id, name, split=split)` (a hub id or a local dataset folder),
    failing at once when a hub id is asked for and the hub is unreachable."""
    if not Path(dataset_id).expanduser().is_dir() and not hub_reachable():  # a local dataset folder needs no network
        raise DataError(
            dataset_id,
            f"is not a local file and the Hugging Face hub is unreachable (or HF_HUB_OFFLINE=1) "
            f"(config key '{key}'): export it to a local .jsonl file on a machine with network access and pass its path",
        )
    import datasets

    try:
        return datasets.load_dataset(dataset_id, name, split=split)
    except Exception as exc:
        raise DataError(
            dataset_id, f"could not load the dataset ({type(exc).__name__}: {exc}) (config key '{key}'); pass a local .jsonl file instead"
        ) from exc


def hub_rows(dataset_id: str, split: str, key: str) -> Iterator[Row]:
    for index, item in enumerate(load_hub_dataset(dataset_id, split, key), start=1):
        yield Row(index, item)
