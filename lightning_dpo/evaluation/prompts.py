"""Loading prompt sets: a JSONL file, a text file (one prompt per line), or a `datasets` id.

RealToxicityPrompts rows nest the text as `prompt.text`; `field="prompt.text"` reads it, and
`where={"challenging": True}` keeps the challenging subset (1,199 prompts) the papers used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from lightning_dpo.utils.errors import DataError


def _get(row: Mapping[str, Any], field: str) -> Any:
    value: Any = row
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _rows_from_file(path: Path) -> list[tuple[int, Any]]:
    rows = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                rows.append((line_no, json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(str(path), f"not a JSON line ({exc})", line=line_no) from None
    return rows


def load_texts(
    source: str,
    field: str = "prompt",
    where: Mapping[str, Any] | None = None,
    limit: int | None = None,
    split: str = "train",
) -> list[str]:
    """Texts from `source` (.jsonl, .txt, or a datasets id), optionally filtered and cut to `limit`."""
    path = Path(source).expanduser()
    if path.suffix == ".txt" and path.exists():
        texts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return texts[:limit] if limit else texts
    if path.exists():
        rows = _rows_from_file(path)
        label = str(path)
    elif path.suffix in (".jsonl", ".json", ".txt") or "/" not in source:
        raise DataError(str(path), "file not found")
    else:
        try:
            import datasets

            dataset = datasets.load_dataset(source, split=split)
        except Exception as exc:
            raise DataError(source, f"could not load ({type(exc).__name__}: {exc}); pass a local .jsonl file instead") from exc
        rows = list(enumerate(dataset, start=1))
        label = source
    texts = []
    for line_no, row in rows:
        if where and any(_get(row, k) != v for k, v in where.items()):
            continue
        value = _get(row, field)
        if not isinstance(value, str):
            raise DataError(label, f"missing text field {field!r}", line=line_no)
        texts.append(value)
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise DataError(label, "no prompts left after filtering")
    return texts
