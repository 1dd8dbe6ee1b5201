"""Tokenizing preference pairs and collating them into one concatenated batch.

Truncation policy (documented in docs/data.md):
- the prompt and each completion are tokenized *separately* and their ids concatenated, so the
  completion tokens (and the completion mask) are exactly the completion's own tokens even
  where a byte-pair merge would have crossed the prompt/completion boundary;
- a prompt longer than `max_prompt_length` keeps its *last* tokens (the ones next to the
  completion; `prompt_truncation="keep_end"`), after a leading BOS token if the tokenizer adds
  one, or its first tokens (`"keep_start"`, Lee et al.'s);
- the EOS token is appended to every completion (`append_eos`; Lee et al.'s objective had none);
  a completion longer than `max_completion_length` (EOS included) keeps its *first* tokens, so
  its EOS is dropped;
- a pair whose chosen and rejected ids are then equal is dropped (counted): it teaches nothing.
Batches stack chosen rows first and rejected rows second (2B rows, one forward) and are
right-padded after concatenation, so GPT-2's absolute positions start at 0 on every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_dpo.data.records import PreferenceRecord
from lightning_dpo.utils.errors import ConfigError

PROMPT_TRUNCATION = ("keep_end", "keep_start")


@dataclass
class TokenizedPair:
    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    record: PreferenceRecord | None = None  # the texts it came from


@dataclass
class TruncationReport:
    prompts_truncated: int = 0
    completions_truncated: int = 0
    identical_dropped: int = 0  # pairs whose chosen and rejected ids are equal (after truncation)

    def summary(self) -> str:
        text = (
            f"{self.prompts_truncated} prompts cut to their last tokens, {self.completions_truncated} completions cut to their first tokens"
        )
        if self.identical_dropped:
            text += f", {self.identical_dropped} pairs dropped because chosen and rejected are identical"
        return text


def eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError("model.tokenizer", "the tokenizer has no EOS token; completions need one")
    return int(tokenizer.eos_token_id)


def pad_id(tokenizer: Any) -> int:
    """Pad id for input tensors only: padding is always masked by the attention mask, never by id."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer))


def truncate_prompt(ids: list[int], max_length: int, bos_token_id: int | None, keep: str = "keep_end") -> list[int]:
    if len(ids) <= max_length:
        return ids
    if keep == "keep_start":
        return ids[:max_length]
    if bos_token_id is not None and ids and ids[0] == bos_token_id and max_length > 1:
        return [ids[0]] + ids[len(ids) - (max_length - 1) :]
    return ids[len(ids) - max_length :]


def tokenize_pairs(
    tokenizer: Any,
    records: Sequence[PreferenceRecord],
    max_prompt_length: int,
    max_completion_length: int,
    prompt_truncation: str = "keep_end",
    append_eos: bool = True,
) -> tuple[list[TokenizedPair], TruncationReport]:
    """Tokenize all records in three batched tokenizer calls."""
    if prompt_truncation not in PROMPT_TRUNCATION:
        raise ConfigError("data.prompt_truncation", f"got {prompt_truncation!r}; accepted: {list(PROMPT_TRUNCATION)}")
    if max_prompt_length < 1:
        raise ConfigError("data.max_prompt_length", f"must be >= 1, got {max_prompt_length}")
    if max_completion_length < 1:
        raise ConfigError("data.max_completion_length", f"must be >= 1, got {max_completion_length}")
    eos = [eos_id(tokenizer)] if append_eos else []
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
    prompts = tokenizer([r.prompt for r in records], add_special_tokens=True, verbose=False)["input_ids"]
    chosen = tokenizer([r.chosen for r in records], add_special_tokens=False, verbose=False)["input_ids"]
    rejected = tokenizer([r.rejected for r in records], add_special_tokens=False, verbose=False)["input_ids"]
    report = TruncationReport()
    pairs: list[Any] = []
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        if len(p) > max_prompt_length:
            report.prompts_truncated += 1
            p = truncate_prompt(list(p), max_prompt_length, bos, prompt_truncation)
        completions = []
        for ids in (c, r):
            ids = list(ids) + eos
            if len(ids) > max_completion_length:
                report.completions_truncated += 1
                ids = ids[:max_completion_length]
            completions.append(ids)
        if completions[0] == completions[1]:
            report.identical_dropped += 1  # a zero margin forever: it only dilutes the loss (ln 2 per pair)
            continue
        if not completions[0] or not completions[1]:
            raise ConfigError(
                "data.append_eos", f"{records[i].line}: a completion has no tokens; with data.append_eos=false every completion needs text"
            )
        pairs.append(TokenizedPair(len(pairs), list(p), completions[0], completions[1], records[i]))
    return pairs, report


def collate_pairs(examples: Sequence[dict[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Stack `prompt+chosen` rows then `prompt+rejected` rows, right-padded.

    Returns input_ids, attention_mask, completion_mask (1 on completion tokens only), the
    dataset `index` of each pair, and precomputed reference log-probs when the examples carry them.
    """
    sequences, completion_starts = [], []
    for key in ("chosen_ids", "rejected_ids"):  # all chosen rows first, then all rejected rows: 2n rows
        for ex in examples:
            sequences.append(ex["prompt_ids"] + ex[key])  # ids concatenated: no BPE merge across the boundary
            completion_starts.append(len(ex["prompt_ids"]))
    length = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    n = len(sequences)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)  # (2n, T), right padding: positions start at 0
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    completion_mask = torch.zeros((n, length), dtype=torch.bool)
    for row, (seq, start) in enumerate(zip(sequences, completion_starts)):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
        completion_mask[row, start : len(seq)] = True
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "index": torch.tensor([ex["index"] for ex in examples], dtype=torch.long),
    }
    if "ref_chosen_logps" in examples[0]:
        batch["ref_chosen_logps"] = torch.tensor([ex["ref_chosen_logps"] for ex in examples], dtype=torch.float32)
        batch["ref_rejected_logps"] = torch.tensor([ex["ref_rejected_logps"] for ex in examples], dtype=torch.float32)
    return batch
