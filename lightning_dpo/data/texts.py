"""Text sets: prompt sets, labelled texts for a probe, and a text for perplexity.

All read through lightning_dpo/data/files.py (local .jsonl/.json/.csv/.parquet/.txt, or a hub id).
RealToxicityPrompts rows nest the text as `prompt.text`: `field="prompt.text"` reads it, and
`where={"challenging": True}` keeps the challenging subset (1,199 prompts) the papers used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lightning_dpo.data.files import (
    Row,
    hub_rows,
    load_hub_dataset,
    read_rows,
    resolve_local,
)
from lightning_dpo.utils.errors import ConfigError, DataError

WIKITEXT_2 = "wikitext-2"  # the name the papers' evaluation and pairs use for Wikitext-2 (raw)


def get_field(row: Any, field: str) -> Any:
    """`row[field]`, following dots into nested objects; None when absent."""
    value: Any = row
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _rows(source: str, key: str, split: str) -> tuple[str, Iterator[Row]]:
    local = resolve_local(source, key)
    if local is not None:
        return str(local), read_rows(local, texts=True)
    return f"{source}[{split}]", hub_rows(source, split, key)


def load_texts(
    source: str,
    field: str = "prompt",
    where: Mapping[str, Any] | None = None,
    limit: int | None = None,
    split: str = "train",
    key: str = "prompts",
) -> list[str]:
    """Texts from `source`: one per line of a .txt file, else the `field` of each row (rows not
    matching `where` skipped), cut to the first `limit`. `key` is the config key named in errors."""
    label, rows = _rows(str(source), key, split)
    texts: list[str] = []
    for row in rows:
        if row.error is not None:
            raise DataError(label, row.error, line=row.line)
        if isinstance(row.value, str):  # a .txt line
            texts.append(row.value)
        else:
            if where and any(get_field(row.value, k) != v for k, v in where.items()):
                continue
            value = get_field(row.value, field)
            if not isinstance(value, str):
                field_key = key[: -len(".source")] + ".field" if key.endswith(".source") else f"{key} field"
                keys = sorted(row.value) if isinstance(row.value, Mapping) else []
                raise DataError(label, f"has no text field {field!r} (config key '{field_key}'; the row's keys: {keys})", line=row.line)
            texts.append(value)
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise DataError(label, f"no texts left after filtering (config key '{key}')")
    return texts


def load_labelled_texts(
    source: str,
    text_field: str = "text",
    label_field: str = "label",
    limit: int | None = None,
    split: str = "train",
    key: str = "probe.data",
) -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels (a label > 0.5 counts as the concept, e.g. toxic)."""
    label, rows = _rows(str(source), key, split)
    texts, labels = [], []
    for row in rows:
        if row.error is not None:
            raise DataError(label, row.error, line=row.line)
        if not isinstance(row.value, Mapping) or text_field not in row.value or label_field not in row.value:
            raise DataError(label, f"needs fields {text_field!r} and {label_field!r} (config key '{key}')", line=row.line)
        try:
            labels.append(int(float(row.value[label_field]) > 0.5))
        except (TypeError, ValueError):
            raise DataError(label, f"label {row.value[label_field]!r} is not a number", line=row.line) from None
        texts.append(str(row.value[text_field]))
        if limit and len(texts) >= limit:
            break
    return texts, labels


def load_text(source: str, key: str, split: str = "test") -> str:
    """One text: a local file's content, or `wikitext-2` (the split's lines joined with blank lines, as the papers)."""
    if source == WIKITEXT_2:
        return "\n\n".join(load_hub_dataset("wikitext", split, key, name="wikitext-2-raw-v1")["text"])
    local = resolve_local(source, key)
    if local is None:
        raise DataError(source, f"file not found (config key '{key}'; or use {WIKITEXT_2})")
    try:
        return local.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(str(local), f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def wikitext_lines(key: str, split: str = "train") -> list[str]:
    """Wikitext-2 lines without headings (the published PPLM pairs' prompt source)."""
    rows = load_hub_dataset("wikitext", split, key, name="wikitext-2-raw-v1")
    return [t.strip() for t in rows["text"] if t.strip() and not t.strip().startswith("=")]


VALIDATION = "validation"  # a prompt set's source: the run's own validation pairs (training only)


def load_prompt_set(
    spec: Mapping[str, Any],
    key: str,
    max_prompts: int | None = None,
    validation: Sequence[str] | None = None,
) -> list[str]:
    """The texts of a prompt set (conf/prompts/: source, field, filter, limit), cut to `max_prompts`.

    `source: validation` takes the `validation` texts given (the training run's validation pairs);
    anything else is read by `load_texts`. `key` is the config key named in errors."""
    source = str(spec.get("source"))
    if source == VALIDATION:
        if validation is None:
            raise ConfigError(f"{key}.source", "'validation' (the validation pairs' prompts) exists only in a training run; give a file")
        texts = list(validation)[: spec.get("limit") or None]
    else:
        texts = load_texts(
            source, field=spec.get("field") or "prompt", where=spec.get("filter"), limit=spec.get("limit"), key=f"{key}.source"
        )
    texts = texts[:max_prompts] if max_prompts else texts
    if not texts:
        raise ConfigError(f"{key}.source", f"the prompt set {source} is empty")
    return texts


def describe_prompt_set(spec: Mapping[str, Any], count: int) -> str:
    """How a prompt set is named in outputs: its source, field and filter, and how many prompts."""
    source = "the validation pairs' prompts" if spec.get("source") == VALIDATION else str(spec.get("source"))
    extra = "".join(f", {k} {spec[k]}" for k in ("field", "filter") if spec.get(k) and not (k == "field" and spec[k] == "prompt"))
    return f"{source}{extra} ({count} prompts)"
